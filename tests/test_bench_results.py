"""The typed benchmark results read and write the cache file's JSON layout unchanged."""

import json

from latentsync_cli.benchmark_data.entries import BenchmarkEntry, CaseResult
from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.run_settings import RunSettings

H100 = DeviceRecord(
    backend="cuda",
    name="NVIDIA H100 80GB HBM3",
    index=0,
    total_memory_bytes=85_520_809_984,
    free_memory_bytes=84_000_000_000,
    compute_capability=(9, 0),
    driver_version="550.54",
    cuda_version="12.4",
    uuid="GPU-1",
    source="nvml",
)


def _measured(name: str, mode: str, **extra) -> dict:
    """A measured case in the layout (and key order) the runner has always written."""
    config = {
        "name": name,
        "mode": mode,
        "changes": {"deepcache": True},
        "settings": RunSettings(mode=mode, deepcache=True).to_dict(),
        "fidelity": {"mouth_psnr": 31.5, "mouth_ssim": 0.95, "temporal_consistency": 0.9, "identical": False},
        "label": "",
        "error": None,
        "output_s": 10.0,
        "frames": 250,
        "windows": 16,
        "wall_s": 9.1,
        "seconds_per_output_second": 0.91,
        "realtime_factor": 1.0989,
        "stages": {"landmarks": 1.0, "vae": 2.0, "denoise": 5.0, "restore": 0.5, "encode": 0.5, "other": 0.1},
        "stage_seconds": {"landmarks": 0.9, "align": 0.1, "denoise": 5.0},
        "bottleneck": "denoise (GPU)",
        "unet_steps": {"full": 7, "cached": 13, "skipped": 0, "uncond_reused": 0, "half_res": 0,
                       "frame_passes": {"full": 224, "cached": 416, "full_half_res": 0, "cached_half_res": 0},
                       "approximate": False},
        "peak_memory_gb": 20.5,
        "peak_rss_gb": 6.25,
        "optimizations": ["deepcache: every 3rd step"],
        "memory_downgrades": [],
    }
    config.update(extra)
    return config


NVENC_AGAINST_X264 = {
    "chosen": "h264_nvenc",
    "reason": "h264_nvenc opened",
    "frames": 125,
    "psnr_db": 43.18,
    "fps": {"libx264": 58.2, "h264_nvenc": 410.0},
}


def _entry(
    configs: list[dict], stress: dict | None = None, source: dict | None = None, encoders: dict | None = None
) -> dict:
    return {
        "key": {
            "device": H100.name,
            "memory_gb": 85.5,
            "driver": "550.54",
            "torch": "2.13.0",
            "latentsync": "0.1.0",
            "weights": "latentsync-1.6",
        },
        "date": "2026-11-22T04:00:00+00:00",
        "level": "stress" if stress else "quick",
        "device": {**H100.to_dict(), "tier": "large_gpu"},
        "weights": {"choice": "auto", "id": "latentsync-1.6", "description": "LatentSync 1.6", "is_random": False, "is_proxy": False},
        "label": "",
        "fidelity_note": None,
        "reference": "normal",
        "input": source or {"source": "synthetic", "duration_s": 10.0, "frames": 250, "seed": 1247},
        "configs": configs,
        "stress": stress,
        "encoders": encoders or NVENC_AGAINST_X264,
    }


def _same_json(data: dict) -> None:
    again = BenchmarkEntry.from_dict(data).to_dict()
    assert json.dumps(again) == json.dumps(data)  # same keys, values and order


def test_a_quick_entry_round_trips_to_the_same_json():
    failed = {
        "name": "normal+compile",
        "mode": "normal",
        "changes": {"compile": True},
        "settings": RunSettings(compile=True).to_dict(),
        "fidelity": None,
        "label": "",
        "error": "out of memory: CUDA out of memory",
        "first_run_s": None,
        "mode_steps": 20,
    }
    configs = [
        _measured("normal", "normal", first_run_s=30.0, mode_steps=20),
        _measured("turbo", "turbo", first_run_s=12.5, fidelity_error="no face in the reference output", mode_steps=8),
        failed,
    ]
    _same_json(_entry(configs))
    user = {"source": "user", "video": "me.mp4", "audio": "me.wav", "duration_s": 3.2, "frames": 80, "seed": 1}
    _same_json(_entry(configs, source=user))


def test_a_stress_entry_round_trips_to_the_same_json():
    stress = {
        "name": "normal",
        "output_s": 120.0,
        "wall_s": 98.0,
        "unet_calls": 4,
        "denoise_s_per_call": [1.0, 1.0, 1.1, 1.2],
        "throughput_drift": 0.2,
        "memory_samples": [[0.0, 1000], [0.25, 1200]],
        "memory_growth_gb": 0.0,
    }
    config = _measured("normal", "normal", stress=stress, first_run_s=None, mode_steps=20)
    _same_json(_entry([config], stress=stress))


def test_an_old_entry_without_the_newer_fields_still_loads():
    old = _measured("fast", "fast")
    for newer in ("memory_downgrades", "stage_seconds", "peak_rss_gb"):
        del old[newer]
    data = _entry([old])
    del data["device"], data["input"], data["encoders"]
    entry = BenchmarkEntry.from_dict(data)
    (config,) = entry.configs
    assert config.measured.seconds_per_output_second == 0.91 and config.measured.memory_downgrades == []
    assert config.mode_steps is None and entry.device is None and entry.has_fidelity
    assert entry.encoders is None


def test_an_entry_without_nvenc_records_why_and_no_psnr():
    encoders = {"chosen": "libx264", "reason": "h264_nvenc did not open: No NVENC capable devices found",
                "frames": 0, "psnr_db": None, "fps": {}}
    data = _entry([_measured("normal", "normal", first_run_s=None, mode_steps=20)], encoders=encoders)
    _same_json(data)
    assert BenchmarkEntry.from_dict(data).encoders.psnr_db is None


def test_a_failed_case_has_no_measurements():
    failed = CaseResult.from_dict({"name": "x", "mode": "normal", "error": "out of memory", "output_s": 1.0})
    assert failed.measured is None
    assert "output_s" not in failed.to_dict()

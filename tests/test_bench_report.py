import json

import pytest

from latentsync_cli.bench import report
from latentsync_cli.benchmark_data.entries import BenchmarkEntry, CaseResult


def _config(name, mode, speed, ssim=None, full=20, cached=0):
    fidelity = None if ssim is None else {"mouth_psnr": 30.0, "mouth_ssim": ssim, "temporal_consistency": 0.9}
    return {
        "name": name,
        "mode": mode,
        "changes": {},
        "settings": {"mode": mode},
        "output_s": 10.0,
        "wall_s": speed * 10.0,
        "seconds_per_output_second": speed,
        "realtime_factor": 1.0 / speed,
        "stages": {"landmarks": 0.1, "vae": 1.0, "denoise": speed * 8, "restore": 0.2, "encode": 0.1},
        "unet_steps": {"full": full, "cached": cached},
        "peak_memory_gb": 20.5,
        "optimizations": [],
        "fidelity": fidelity,
        "label": "",
        "error": None,
    }


def _entry(with_fidelity: bool, label: str = "") -> BenchmarkEntry:
    def ssim(value):
        return value if with_fidelity else None

    return BenchmarkEntry.from_dict(
        {
            "key": {
                "device": "NVIDIA H100 80GB HBM3",
                "memory_gb": 79.6,
                "driver": "550",
                "torch": "2.13.0",
                "latentsync": "0.1.0",
                "weights": "latentsync-1.6" if with_fidelity else "random",
            },
            "date": "2026-11-22T04:00:00+00:00",
            "level": "quick",
            "weights": {"id": "x", "description": "test weights", "is_random": not with_fidelity},
            "label": label,
            "fidelity_note": None if with_fidelity else "random weights: outputs are noise, similarity means nothing",
            "reference": "normal",
            "input": {"source": "synthetic", "duration_s": 10.0, "frames": 252, "seed": 1247},
            "configs": [
                _config("normal", "normal", 2.0, ssim(1.0)),
                _config("normal+deepcache", "normal", 0.9, ssim(0.97), full=7, cached=13),
                _config("turbo", "turbo", 0.8, ssim(0.9), full=8),
                _config("turbo+deepcache", "turbo", 0.4, ssim(0.85), full=3, cached=5),
            ],
            "stress": None,
        }
    )


def test_summary_lists_every_configuration_and_the_fastest_per_mode():
    text = report.summary_text(_entry(with_fidelity=True))
    for name in ("normal", "normal+deepcache", "turbo", "turbo+deepcache"):
        assert name in text
    assert "fastest: turbo+deepcache" in text
    assert "fastest: normal+deepcache" in text
    assert "SSIM 0.850" in text


def test_summary_carries_the_label_and_why_fidelity_is_missing():
    text = report.summary_text(_entry(with_fidelity=False, label="CPU, tiny model: not representative"))
    assert "CPU, tiny model: not representative" in text
    assert "random weights" in text
    assert "similarity unknown" in text


def test_cost_per_mode_uses_the_fastest_configuration():
    rows = {row["mode"]: row for row in report.cost_table(_entry(True), gpu_price=3.0, video_s=30.0)}
    # turbo+deepcache: 0.4 s/s -> 24 s per output minute at $3/h = $0.02; 100 x 30 s x 0.4 = 1200 s = $1.
    assert rows["turbo"]["configuration"] == "turbo+deepcache"
    assert rows["turbo"]["dollars_per_output_minute"] == pytest.approx(0.02)
    assert rows["turbo"]["dollars_per_100_videos"] == pytest.approx(1.0)
    assert "$1.00 per 100 videos of 30 s" in "\n".join(report.cost_lines(_entry(True), 3.0, 30.0))


@pytest.mark.parametrize("with_fidelity", [True, False])
def test_write_report_makes_summary_json_and_png(tmp_path, with_fidelity):
    entry = _entry(with_fidelity)
    paths = report.write_report(entry, tmp_path / "out", gpu_price=2.5, video_s=30.0)
    assert "cost at $2.50/h" in (tmp_path / "out" / "summary.txt").read_text()
    assert BenchmarkEntry.from_dict(json.loads((tmp_path / "out" / "benchmark.json").read_text())) == entry
    png = (tmp_path / "out" / "speed.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert set(paths) == {"summary", "json", "plot"}


def test_failed_configurations_are_listed_but_not_ranked():
    entry = _entry(True)
    entry.configs.append(CaseResult("turbo+compile", "turbo", {"compile": True}, {}, error="out of memory"))
    text = report.summary_text(entry)
    assert "turbo+compile" in text and "failed: out of memory" in text
    assert "fastest: turbo+deepcache" in text


def test_default_report_dir_names_date_and_device():
    folder = report.default_report_dir(_entry(True))
    assert folder.name == "2026-11-22-nvidia-h100-80gb-hbm3"
    assert folder.parent.name == "benchmarks"


@pytest.mark.parametrize(
    "encoders, expected",
    [
        ({"chosen": "h264_nvenc", "reason": "h264_nvenc opened", "frames": 125, "psnr_db": 43.18,
          "fps": {"libx264": 58.2, "h264_nvenc": 410.0}},
         "encoder: h264_nvenc; NVENC vs libx264 PSNR 43.18 dB over 125 frames (libx264 58 fps, h264_nvenc 410 fps)"),
        ({"chosen": "libx264", "reason": "h264_nvenc did not open: No NVENC capable devices found"},
         "encoder: libx264 (h264_nvenc did not open: No NVENC capable devices found); NVENC vs libx264 not compared"),
    ],
)
def test_summary_reports_the_encoder_comparison(encoders, expected):
    entry = BenchmarkEntry.from_dict({**_entry(True).to_dict(), "encoders": encoders})
    assert expected in report.summary_text(entry).splitlines()

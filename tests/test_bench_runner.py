"""The runner's pieces that need no pipeline run (the end-to-end run is in test_bench_cli.py)."""

import time
from dataclasses import replace

import pytest
import torch

from latentsync_cli.bench import runner
from latentsync_cli.bench.matrix import plan_cases
from latentsync_cli.bench.results import Measurements, UNetSteps
from latentsync_cli.device_record import DeviceRecord, capabilities_of
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.presets import load_presets
from latentsync_cli.settings import RunSettings
from latentsync_cli.timing import StageTimer

CPU = DeviceRecord(backend="cpu", name="Test CPU (2 cores)", total_memory_bytes=24_000_000_000)
GPU = DeviceRecord(
    backend="cuda", name="NVIDIA H100 80GB HBM3", index=0, total_memory_bytes=85_520_809_984, compute_capability=(9, 0)
)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))  # no user override file
        return load_presets(environ={})


def test_weights_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runner.choose_weights("auto", CPU, None) == "random-tiny"
    assert runner.choose_weights("auto", GPU, None) == "random"  # no checkpoint here
    assert runner.choose_weights("random-tiny", GPU, None) == "random-tiny"
    with pytest.raises(UsageError, match="hours"):
        runner.choose_weights("random", CPU, None)


def test_mode_settings_put_the_reference_first_and_cpu_steps_keep_the_order(table):
    cpu_bases = runner.mode_settings(table, CPU, seed=7, modes=("turbo",))
    assert list(cpu_bases) == ["normal", "turbo"]
    assert cpu_bases["turbo"].seed == 7 and cpu_bases["turbo"].precision == "fp32"
    scaled = [runner.cpu_steps(table.modes[mode].steps) for mode in ("normal", "fast", "turbo", "ultra")]
    assert scaled == sorted(scaled, reverse=True) and min(scaled) >= runner.CPU_MIN_STEPS
    assert scaled[0] < table.modes["normal"].steps

    gpu_bases = runner.mode_settings(table, GPU, seed=1247)
    assert next(iter(gpu_bases)) == "normal" and set(gpu_bases) == set(table.modes)
    assert gpu_bases["normal"].steps == table.modes["normal"].steps  # not scaled on a GPU
    assert gpu_bases["normal"].precision == "bf16" and gpu_bases["normal"].device == "cuda:0"


def test_full_gpu_matrix_keeps_the_reference_first_and_groups_precisions(table):
    bases = runner.mode_settings(table, GPU, seed=1247)
    cases = runner.order_by_precision(plan_cases("full", bases, capabilities_of(GPU)), bases)
    assert cases[0].mode == "normal" and cases[0].changes == {}
    precisions = [case.settings(bases[case.mode]).precision for case in cases]
    first_other = next(i for i, precision in enumerate(precisions) if precision != "bf16")
    assert all(precision != "bf16" for precision in precisions[first_other:])


def test_check_request(table):
    runner.check_request(runner.BenchmarkRequest(modes=("turbo",)), table)
    with pytest.raises(UsageError, match="--modes"):
        runner.check_request(runner.BenchmarkRequest(modes=("warp",)), table)
    with pytest.raises(UsageError, match="go together"):
        runner.check_request(runner.BenchmarkRequest(audio="a.wav"), table)
    with pytest.raises(InputError, match="--video"):
        runner.check_request(runner.BenchmarkRequest(video="missing.mp4", audio="missing.wav"), table)


def test_group_stages_sums_into_the_report_groups():
    grouped = runner.group_stages(
        {
            "VAE encode": 1.0,
            "VAE decode": 2.0,
            "landmarks": 0.5,
            "align": 0.25,
            "mux": 0.1,
            "encode": 0.4,
            "denoise": 3.0,
            "decode": 0.2,
            "something new": 1.0,
        }
    )
    assert grouped == {"landmarks": 0.75, "vae": 3.0, "denoise": 3.0, "restore": 0.0, "encode": 0.5, "other": 1.2}


def test_drift_and_memory_growth():
    assert runner.relative_drift([1.0, 1.0, 1.0]) is None
    assert runner.relative_drift([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert runner.relative_drift([1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.5, 1.5]) == pytest.approx(0.5)
    samples = [(t, 1_000_000_000 + t * 100_000_000) for t in range(8)]
    assert runner.memory_growth_gb(samples) == pytest.approx(0.6)
    assert runner.memory_growth_gb(samples[:3]) is None


def test_memory_watcher_and_stress_summary():
    watcher = runner.MemoryWatcher(torch.device("cpu"), interval_s=0.01)
    watcher.start()
    keep = [bytearray(2_000_000) for _ in range(5)]  # some allocation while it watches
    time.sleep(0.1)
    watcher.stop()
    assert len(watcher.samples) >= 3 and all(size > 0 for _, size in watcher.samples)
    assert keep

    timer = StageTimer("cpu")
    for _ in range(4):
        with timer.stage("denoise", "gpu"):
            time.sleep(0.001)
    measured = Measurements(4.0, 64, 4, 2.0, 0.5, 2.0, {}, {}, "denoise", UNetSteps(4, 0), None, 0.1)
    settings = RunSettings(window=16, windows_per_call=1)
    summary = runner.stress_summary("normal", measured, settings, timer, watcher)
    assert summary.unet_calls == 4 and summary.throughput_drift is not None
    # A ragged last window is left out of the drift (4 calls -> 3 compared: too few for quarters).
    ragged = runner.stress_summary("normal", replace(measured, frames=60), settings, timer, watcher)
    assert ragged.throughput_drift is None
    assert summary.memory_growth_gb is not None

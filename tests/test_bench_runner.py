"""The runner's pieces that need no pipeline run (the end-to-end run is in test_bench_cli.py)."""

import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from clitools import leftovers

from latentsync_cli.bench import runner
from latentsync_cli.bench.matrix import plan_cases
from latentsync_cli.benchmark_data.entries import Measurements, UNetSteps
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.run import prepare
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.encode import choose_encoder
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.models.frame_count import output_frame_count
from latentsync_cli.settings.device_record import DeviceRecord, capabilities_of
from latentsync_cli.settings.hardware import HardwareReport
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings
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
    with pytest.raises(UsageError, match="goes with --video"):
        runner.check_request(runner.BenchmarkRequest(audio="a.wav"), table)
    with pytest.raises(InputError, match="--video"):
        runner.check_request(runner.BenchmarkRequest(video="missing.mp4", audio="missing.wav"), table)


def test_a_video_alone_is_benchmarked_with_its_own_speech_and_scored_against_its_real_frames(
    tmp_path, table, monkeypatch
):
    video = tmp_path / "take.mp4"
    video.write_bytes(b"")  # only its path is used here
    request = runner.BenchmarkRequest(video=video, weights="proxy")
    runner.check_request(request, table)
    monkeypatch.setattr(runner, "audio_duration_s", lambda path: 2.0)  # no probe of the empty file
    used_video, speech, source = runner.prepare_inputs(tmp_path, request, 1.0)
    assert used_video == speech == video  # sync reads the speech from the video's own track
    assert source.describe() == f"{video} with its own speech"
    assert runner.real_frames(runner.BenchmarkRequest(video=video, weights="random-tiny"), None) is None
    assert runner.real_frames(runner.BenchmarkRequest(video=video, audio=video, weights="proxy"), None) is None


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


def wait_for_samples(watcher: runner.MemoryWatcher, count: int) -> None:
    """Until the watcher has taken `count` samples; the deadline only catches a watcher that never samples."""
    deadline = time.monotonic() + 120
    while len(watcher.samples) < count:
        assert time.monotonic() < deadline, f"the watcher took {len(watcher.samples)} samples in 120 s"
        time.sleep(0.01)


def test_memory_watcher_sees_memory_grow_and_stress_summary():
    watcher = runner.MemoryWatcher(torch.device("cpu"), interval_s=0.01)
    watcher.start()
    wait_for_samples(watcher, 2)
    before = len(watcher.samples)  # these samples were read before the allocation
    grown = np.ones(64_000_000, dtype=np.uint8)  # 64 MB written, so resident
    after = len(watcher.samples)  # samples from index after + 1 on are read after it
    wait_for_samples(watcher, after + 2)
    watcher.stop()
    baseline = min(size for _, size in watcher.samples[:before])
    assert max(size for _, size in watcher.samples[after + 1 :]) - baseline >= 48_000_000, watcher.samples
    assert [t for t, _ in watcher.samples] == sorted(t for t, _ in watcher.samples)
    del grown

    timer = StageTimer("cpu")
    for _ in range(4):
        with timer.stage("denoise", "gpu"):
            time.sleep(0.001)
    measured = Measurements(4.0, 64, 4, 2.0, 0.5, 2.0, {}, {}, "denoise", UNetSteps(4, 0), None, 0.1)
    settings = RunSettings(window=16, windows_per_call=1)
    run = SimpleNamespace(trace=timer.chrome_trace())  # a SyncResult's spans
    summary = runner.stress_summary("normal", measured, settings, run, watcher)
    assert summary.unet_calls == 4 and summary.throughput_drift is not None
    # A ragged last window is left out of the drift (4 calls -> 3 compared: too few for quarters).
    ragged = runner.stress_summary("normal", replace(measured, frames=60), settings, run, watcher)
    assert ragged.throughput_drift is None
    assert summary.memory_growth_gb is not None


def test_a_case_is_the_sync_job_of_its_flags_through_the_job_api(tmp_path, table, monkeypatch):
    """The benchmark times what `sync` runs: each case is prepared, claimed and executed by the job API,
    with the encoder and the speech a `sync` job with the same flags gets."""
    video = make_face_clip(tmp_path / "clip.mp4", 0.2, size=(320, 240), preset="ultrafast")
    audio = make_speech(tmp_path / "voice.wav", 0.2, use_espeak=False)
    prepared_jobs = []

    def recording_prepare(job, *args, **kwargs):
        prepared_jobs.append(prepare(job, *args, **kwargs))
        return prepared_jobs[-1]

    monkeypatch.setattr(runner, "prepare", recording_prepare)
    bases = {mode: replace(s, steps=runner.cpu_steps(s.steps)) for mode, s in runner.mode_settings(table, CPU, 7, ("turbo",)).items()}
    [case] = [c for c in plan_cases("quick", bases, capabilities_of(CPU)) if c.name == "turbo+deepcache"]
    case_runner = runner.CaseRunner(table, CPU, "random-tiny", None, 7, True, tmp_path)
    result = case_runner.run(case, bases["turbo"], video, audio, tmp_path / "case.mp4")

    [prepared] = prepared_jobs
    flags = SettingsRequest(mode="turbo", quality="balanced", seed=7, device="cpu", steps=bases["turbo"].steps)
    as_sync = prepare(Job(video, audio, tmp_path / "sync.mp4", flags, weights="random-tiny"), table,
                      HardwareReport((CPU,)))  # fmt: skip
    assert prepared.encoder == as_sync.encoder == choose_encoder("auto", device="cpu")
    assert np.array_equal(prepared.speech, load_audio(audio)) and np.array_equal(prepared.speech, as_sync.speech)
    assert prepared.resolved.settings == as_sync.resolved.settings
    assert result.error is None and result.settings == prepared.resolved.settings.to_dict()
    assert result.measured.frames == output_frame_count(prepared.speech.size)
    assert (tmp_path / "case.mp4").is_file() and leftovers(tmp_path) == []  # written through a claim, none left

"""The one model cache (jobs/models.py) hands every job its models in a known state, whatever the job before
did to them: a batch row gives the output and optimization table of its own single run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch

from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import run
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.pipeline.faces import FaceGenerator
from latentsync_cli.settings.request import SettingsRequest

pytestmark = pytest.mark.slow  # six short jobs on the tiny model


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clip")
    video = make_face_clip(folder / "clip.mp4", 0.3, size=(320, 240), preset="ultrafast")
    return video, make_speech(folder / "voice.wav", 0.3, use_espeak=False)


def job_at(clip, level: str, output: Path) -> Job:
    request = SettingsRequest(mode="turbo", steps=1, device="cpu", optimization_level=level)
    return Job(clip[0], clip[1], output, request, weights="random-tiny", overwrite=True)


def decoded_frames(path: Path) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def table(finished) -> list[dict]:
    return finished.result.optimizations


def vae_is_nchw(cache: ModelCache) -> bool:
    return all(p.is_contiguous() for p in cache.models.vae.parameters() if p.dim() == 4)


def test_rows_at_two_optimization_levels_each_give_their_single_run(clip, tmp_path):
    alone = {level: run(job_at(clip, level, tmp_path / f"alone-{level}.mp4"), ModelCache())
             for level in ("aggressive", "conservative")}  # fmt: skip
    shared = ModelCache()
    aggressive = run(job_at(clip, "aggressive", tmp_path / "row1.mp4"), shared)
    assert not vae_is_nchw(shared)  # row 1 really changed the shared VAE: channels_last on the CPU
    conservative = run(job_at(clip, "conservative", tmp_path / "row2.mp4"), shared)

    assert vae_is_nchw(shared)  # handed to row 2 as a fresh load leaves it
    assert [row["name"] for row in table(aggressive) if row["status"] == "applied"].count("channels_last") == 1
    for row, single in ((aggressive, alone["aggressive"]), (conservative, alone["conservative"])):
        assert table(row) == table(single)
        assert decoded_frames(row.prepared.output) == decoded_frames(single.prepared.output)


def test_after_a_job_ran_out_of_memory_down_to_offload_the_next_one_starts_clean(clip, tmp_path, monkeypatch):
    """On a CPU-only machine the offload's device move is a no-op; what this checks everywhere is that the
    ladder's rungs (VAE slicing, tiling, offload) stay with the job that took them."""
    alone = run(job_at(clip, "aggressive", tmp_path / "alone.mp4"), ModelCache())

    real_denoise = FaceGenerator.denoise
    failures = {"left": 3}  # aggressive starts at one window per call: slicing, tiling, then offload

    def running_out_of_memory(self, *args, **kwargs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return real_denoise(self, *args, **kwargs)

    shared = ModelCache()
    monkeypatch.setattr(FaceGenerator, "denoise", running_out_of_memory)
    first = run(job_at(clip, "aggressive", tmp_path / "row1.mp4"), shared)
    monkeypatch.setattr(FaceGenerator, "denoise", real_denoise)
    assert first.result.memory_downgrades[-1].startswith("model offload on")

    second = run(job_at(clip, "aggressive", tmp_path / "row2.mp4"), shared)
    device = torch.device(second.prepared.resolved.settings.device)
    assert all(p.device == device for p in shared.models.unet.parameters())
    assert second.result.memory_downgrades == [] and table(second) == table(alone)
    assert not shared.models.vae.use_slicing and not shared.models.vae.use_tiling
    assert decoded_frames(second.prepared.output) == decoded_frames(alone.prepared.output)


def test_the_cache_loads_again_only_for_other_weights_or_precision():
    cache = ModelCache()
    first = cache.load("random-tiny", None, "cpu", "fp32")
    assert cache.load("random-tiny", None, "cpu", "fp32") is first
    assert cache.load("random-tiny", None, "cpu", "bf16") is not first

"""--fps and --length at the job layer: which rate a plate is read at, how many frames it gives, and that
the pipeline computes each frame's audio rows at that rate (no model runs here)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FrameList

from latentsync_cli.errors import UsageError
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.run import prepare
from latentsync_cli.media.synthetic import make_face_clip, make_speech, make_still_image, make_vfr_clip
from latentsync_cli.models.frame_count import output_frame_count
from latentsync_cli.settings.request import SettingsRequest

NTSC_VIDEO = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rates")
    return {
        "clip24": make_face_clip(folder / "c24.mp4", 1.0, fps=24, size=(96, 64), preset="ultrafast"),
        "clip2997": make_face_clip(folder / "c2997.mp4", 1.0, fps=NTSC_VIDEO, size=(96, 64), preset="ultrafast"),
        "vfr": make_vfr_clip(folder / "vfr.mp4", 1.0, size=(96, 64)),
        "still": make_still_image(folder / "still.png", size=(96, 64)),
        "short": make_speech(folder / "short.wav", 0.6, use_espeak=False),
        "long": make_speech(folder / "long.wav", 1.7, use_espeak=False),
        "folder": folder,
    }


def prepared(media, video, speech="long", **options):
    job = Job(video=media[video], audio=media[speech], output=media["folder"] / f"out-{video}.mp4",
              settings=SettingsRequest(device="cpu"), weights="random-tiny", overwrite=True, **options)  # fmt: skip
    return prepare(job)


@pytest.mark.parametrize(("video", "rate"), [("clip24", Fraction(24)), ("clip2997", NTSC_VIDEO)])
def test_a_constant_rate_plate_keeps_its_rate_and_the_speech_sets_the_length(media, video, rate):
    job = prepared(media, video)
    assert job.video_info.rate == rate and job.warnings == ()
    assert job.num_frames == output_frame_count(job.speech.size, rate) > job.video_info.frame_count


@pytest.mark.parametrize(("video", "speech", "frames"), [("clip24", "long", 24), ("clip2997", "short", 30),
                                                          ("clip2997", "long", 30)])  # fmt: skip
def test_length_video_gives_exactly_the_videos_frames(media, video, speech, frames):
    job = prepared(media, video, speech, length="video")
    assert job.num_frames == job.video_info.frame_count == frames
    # the speech is cut, or padded with silence, to the fewest samples that make those frames
    assert output_frame_count(job.speech.size, job.video_info.rate) >= frames
    assert output_frame_count(job.speech.size - 320, job.video_info.rate) < frames
    if speech == "short":
        assert not job.speech[-320:].any()


def test_fps_25_conforms_and_a_variable_rate_is_conformed_with_a_warning(media):
    assert prepared(media, "clip24", fps="25").video_info.rate == 25
    job = prepared(media, "vfr")
    assert job.video_info.rate == 25 and "frame rate varies" in job.warnings[0]
    assert prepared(media, "clip24", fps="25", length="video").num_frames == 25  # 24 frames over 1 s at 25 fps


def test_a_still_image_has_no_video_length(media):
    with pytest.raises(UsageError, match="still image"):
        prepared(media, "still", length="video")
    assert prepared(media, "still").video_info.rate == 25


def test_the_pipeline_takes_audio_rows_at_the_videos_rate(media, monkeypatch):
    """What the extractor is asked for: rows at 29.97 fps, the first num_frames of them."""
    from latentsync_cli.pipeline import lipsync
    from latentsync_cli.pipeline.windows import WindowPlan, window_ranges
    from latentsync_cli.settings.run_settings import RunSettings
    from latentsync_cli.timing import StageTimer
    from latentsync_cli.weights.load import load_models

    asked = []

    class Recording:
        def __init__(self, encoder, device, fps=25):
            asked.append(fps)

        def __call__(self, speech):
            return torch.zeros(output_frame_count(speech.size, asked[-1]), 50, 384)

    monkeypatch.setattr(lipsync, "AudioFeatureExtractor", Recording)
    job = prepared(media, "clip2997", length="video")
    models = load_models("random-tiny", None, "cpu", torch.float32, seed=0)
    plan = WindowPlan(window_ranges(job.num_frames, 8), frozenset(), make_frames=False)  # decode nothing, make nothing
    pipeline = lipsync.LipsyncPipeline(models, RunSettings(steps=1, window=8), StageTimer("cpu"))
    result = pipeline.run(lipsync.SyncJob(video=job.video_info, speech=job.speech, plan=plan, fps=job.video_info.rate,
                                          sink=FrameList()))  # fmt: skip
    assert asked == [NTSC_VIDEO] and result.frames == 30
    assert result.output_seconds == pytest.approx(30 / float(NTSC_VIDEO))
    assert np.isclose(result.output_seconds, 1.001)

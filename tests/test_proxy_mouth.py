"""A test that sees the mouth: `sync --weights proxy` on a real clip, through the job API, end to end.

It fails if the mouth region does not change, if the mouth does not follow the
speech (two speeches must differ in the mouth more than two seeds do), or if the
face is pasted in the wrong place (the clear changes must lie in the mouth
region, mapped into the frame through the face track the pipeline uses).
"""

from __future__ import annotations

import subprocess

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from latentsync_cli.face.align import crop_size
from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.face.track import track_faces
from latentsync_cli.jobs.run import Job, run
from latentsync_cli.media.audio import SAMPLE_RATE, load_audio, write_wav
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.weights.proxy import PROXY_RESOLUTION

pytestmark = pytest.mark.slow

FRAMES = 16  # one `normal` window: speech of 0.56 s gives floor(28 / 2) + 2 = 16 frames
SPEECH_SAMPLES = int(0.56 * SAMPLE_RATE)
STEPS = 10  # `normal` at its fewest steps (min_steps): DDIM, guidance 1.5
CLEAR_CHANGE = 24  # a pixel changed by more than this (0-255, any channel) is not resampling or encoding noise


@pytest.fixture(scope="module")
def outputs(media_dir, tmp_path_factory):
    """The clip, and the outputs of speech A (seeds 1 and 2) and speech B (seed 1)."""
    folder = tmp_path_factory.mktemp("proxy-mouth")
    video = media_dir / "demo1_video.mp4"
    speeches = {
        "a": load_audio(video)[SAMPLE_RATE : SAMPLE_RATE + SPEECH_SAMPLES],  # its own speech, 1 s in
        "b": load_audio(media_dir / "demo2_audio.wav")[2 * SAMPLE_RATE : 2 * SAMPLE_RATE + SPEECH_SAMPLES],
    }
    for name, samples in speeches.items():
        write_wav(folder / f"{name}.wav", samples)
    made = {}
    for name, speech, seed in (("a", "a", 1), ("a, seed 2", "a", 2), ("b", "b", 1)):
        output = folder / f"{name.replace(', ', '-').replace(' ', '')}.mp4"
        settings = SettingsRequest(mode="normal", steps=STEPS, device="cpu", seed=seed)
        finished = run(Job(video=video, audio=folder / f"{speech}.wav", output=output, settings=settings,
                           weights="proxy"))
        assert finished.weights.is_proxy and "trained on three clips" in finished.weights.description
        assert "trained on three clips" in file_comment(output)  # the file itself says what made it
        made[name] = np.stack(list(read_frames(output, FRAMES)))
    made["input"] = np.stack(list(read_frames(video, FRAMES)))
    track = track_faces(probe_video(video), FRAMES, "pingpong", LandmarkSource("mediapipe"), PROXY_RESOLUTION)
    return made, track


def file_comment(path) -> str:
    """The `comment` metadata tag of a media file, as ffmpeg prints it."""
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    lines = probe.stderr.decode("utf-8", "replace").splitlines()
    return " ".join(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("comment"))


def mouth_region_in_frames(track, frame_shape) -> np.ndarray:
    """float (F, H, W): the mask's generated region of each aligned face, mapped into its frame."""
    width, height = crop_size(PROXY_RESOLUTION)
    generated = cv2.resize(1.0 - mouth_mask(PROXY_RESOLUTION), (width, height), interpolation=cv2.INTER_LINEAR)
    regions = []
    for number in range(track.num_frames):
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # the affine maps frame -> crop
        regions.append(cv2.warpAffine(generated, track.affines[number], frame_shape[1::-1], flags=flags))
    return np.stack(regions)


def change(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(F, H, W): the largest change over the colour channels, 0-255."""
    return np.abs(first.astype(np.int16) - second.astype(np.int16)).max(axis=-1)


def test_the_mouth_region_changes_and_only_there(outputs):
    made, track = outputs
    region = mouth_region_in_frames(track, made["input"].shape[1:3]) > 0.5
    changed = change(made["a"], made["input"])
    assert changed[region].mean() > 8, "the proxy left the mouth region (almost) as it was"
    grown = np.stack([cv2.dilate(r.astype(np.uint8), np.ones((15, 15), np.uint8)) for r in region]) > 0
    clear = changed > CLEAR_CHANGE
    inside = clear[grown].sum() / max(1, clear.sum())
    assert inside > 0.9, f"only {inside:.0%} of the clear changes are in the mouth region: pasted in the wrong place"


@pytest.mark.xfail(
    strict=True,
    reason="the shipped proxy does not follow the speech yet: on the held-out frames another speech changes "
    "the mouth by 2.3 grey levels, another seed by 7.4 (docs/PERFORMANCE.md, 'The proxy model'); "
    "a proxy that does makes this test pass, and strict=True then fails the suite until the mark goes",
)
def test_the_mouth_follows_the_speech_more_than_the_seed(outputs):
    made, track = outputs
    region = mouth_region_in_frames(track, made["input"].shape[1:3]) > 0.5
    by_speech = change(made["a"], made["b"])[region].mean()
    by_seed = change(made["a"], made["a, seed 2"])[region].mean()
    assert by_speech > 1.5 * by_seed, f"another speech changes the mouth by {by_speech:.2f}, another seed by {by_seed:.2f}"

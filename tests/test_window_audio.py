"""Each UNet call gets the audio rows of its own window's face frames: output frame n takes speech row n.

Jobs run through the job API with the tiny models; a forward pre-hook on the
UNet records the audio embeddings of every call, and each recorded row is
matched to the one row of the speech's features it equals. The clip is shorter
than the speech (it ping-pongs) and has three frames without a face, and the
last window is short, so a window's face frames are not simply its frame
numbers, nor the video's. A shard and the resumed job after it make only some
windows: theirs must still get their own rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import run
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.settings.request import SettingsRequest

pytestmark = pytest.mark.slow  # three tiny-model jobs of 37 frames

VIDEO_SECONDS, FACELESS = 0.6, (0.2, 0.32)  # 15 video frames; frames 5, 6 and 7 show no face
SPEECH_SECONDS = 1.4  # 22400 samples: 70 encoder positions, 70 // 2 + 2 = 37 output frames
WINDOW = 8  # windows 0-7, 8-15, 16-23, 24-31 and the short 32-36
# Worked out by hand. Ping-pong shows output frame n as video frame n for n < 15, 29 - n up to 29, then
# n - 30: the faceless video frames 5-7 are output frames 5-7, 22-24 and 35-36 (37 is past the end).
FACE_FRAMES = {
    0: [0, 1, 2, 3, 4],
    1: [8, 9, 10, 11, 12, 13, 14, 15],
    2: [16, 17, 18, 19, 20, 21],
    3: [25, 26, 27, 28, 29, 30, 31],
    4: [32, 33, 34],
}
SHARD = Shard(2, 3)  # windows 5 * 1 // 3 = 1 to 5 * 2 // 3 = 2
SETTINGS = SettingsRequest(mode="normal", steps=1, window=WINDOW, device="cpu")  # guidance 1.5: CFG on


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("window-audio")
    return {
        "clip": make_face_clip(folder / "clip.mp4", VIDEO_SECONDS, size=(320, 240), faceless=FACELESS),
        "voice": make_speech(folder / "voice.wav", SPEECH_SECONDS, use_espeak=False),
    }


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    """The jobs' model cache, holding the models whose UNet calls are recorded."""
    cache = ModelCache()
    cache.load("random-tiny", None, "cpu", "fp32")  # the key a CPU job with random-tiny weights asks for
    return cache


@pytest.fixture(scope="module")
def features(cache, media) -> torch.Tensor:
    """(37, 50, 384): the speech's rows, one per output frame, from the same audio encoder."""
    return AudioFeatureExtractor(cache.models.audio_encoder, "cpu")(load_audio(media["voice"]))


def run_recording_audio(job: Job, cache: ModelCache):
    """Run `job`; the audio embeddings of every UNet call, in order, and the finished job."""
    calls = []

    def record(module, args, kwargs):
        audio = args[2] if len(args) > 2 else kwargs["audio_embeds"]
        calls.append(audio.detach().clone())

    hook = cache.models.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        finished = run(job, cache)
    finally:
        hook.remove()
    assert cache.models.unet is not None and cache.key == ("random-tiny", None, "cpu", "fp32")  # the hooked models
    return calls, finished


def speech_rows(audio: torch.Tensor, features: torch.Tensor) -> list[int]:
    """The row of `features` that each row of `audio` equals (failing when a row equals none)."""
    distances = (audio[:, None] - features[None]).abs().amax(dim=(2, 3))  # (rows, frames)
    nearest = distances.min(dim=1)
    assert nearest.values.max() <= 1e-5, f"audio rows found in no frame's features: {nearest.values.tolist()}"
    return nearest.indices.tolist()


def rows_per_call(calls: list[torch.Tensor], features: torch.Tensor) -> list[list[int]]:
    """Each call's speech rows; with CFG the first half of a call is the unconditional pass (zero audio)."""
    rows = []
    for audio in calls:
        unconditional, conditional = audio.chunk(2)
        assert torch.count_nonzero(unconditional) == 0
        rows.append(speech_rows(conditional, features))
    return rows


def test_the_speech_rows_are_distinct(features):
    """The matching below means something only if no two frames' rows are alike."""
    assert features.shape == (37, 50, 384)
    distances = (features[:, None] - features[None]).abs().amax(dim=(2, 3))
    assert distances[~torch.eye(37, dtype=torch.bool)].min() > 1e-3


def test_every_window_gets_the_rows_of_its_face_frames(media, tmp_path, cache, features):
    job = Job(media["clip"], media["voice"], tmp_path / "out.mp4", SETTINGS, weights="random-tiny")
    calls, finished = run_recording_audio(job, cache)
    assert finished.result.frames == 37 and finished.result.windows == 5
    assert finished.result.frames_without_face == 8  # output frames 5-7, 22-24, 35 and 36
    assert rows_per_call(calls, features) == [FACE_FRAMES[index] for index in range(5)]


def test_a_shard_and_the_resumed_job_after_it_give_each_window_its_own_rows(media, tmp_path, cache, features):
    work_dir, output = tmp_path / "work", tmp_path / "out.mp4"
    shard_job = Job(media["clip"], media["voice"], output, SETTINGS, weights="random-tiny", work_dir=work_dir,
                    shard=SHARD)  # fmt: skip
    calls, _ = run_recording_audio(shard_job, cache)
    assert list(SHARD.windows(5)) == [1, 2]
    assert rows_per_call(calls, features) == [FACE_FRAMES[1], FACE_FRAMES[2]]
    assert not output.exists()

    # The same job without --shard: windows 1 and 2 are taken from the work dir, 0, 3 and 4 made now.
    resumed_job = Job(media["clip"], media["voice"], output, SETTINGS, weights="random-tiny", work_dir=work_dir)
    calls, finished = run_recording_audio(resumed_job, cache)
    assert finished.result.resumed_windows == 2
    assert rows_per_call(calls, features) == [FACE_FRAMES[0], FACE_FRAMES[3], FACE_FRAMES[4]]
    assert output.is_file()

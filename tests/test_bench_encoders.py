"""The benchmark's NVENC-vs-libx264 comparison: what it records where NVENC is missing, and how it measures."""

from __future__ import annotations

import numpy as np
import pytest

from latentsync_cli.bench.encoders import encode_and_read_back, first_frames, measure_encoder_parity
from latentsync_cli.bench.metrics import clip_psnr
from latentsync_cli.benchmark_data.entries import EncoderParity
from latentsync_cli.media.encode import choose_encoder
from latentsync_cli.media.synthetic import face_frames, make_face_clip


def test_without_nvenc_auto_takes_libx264_and_nothing_is_compared(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", 0.2, size=(160, 120), preset="ultrafast")
    choice = choose_encoder("auto", nvenc_error=lambda: "no NVENC on this GPU")
    parity = measure_encoder_parity(clip, tmp_path, choice)
    assert parity.chosen == "libx264" and "no NVENC on this GPU" in parity.reason
    assert parity.psnr_db is None and parity.frames == 0 and parity.fps == {}
    assert "not compared" in parity.describe()
    assert list(tmp_path.iterdir()) == [clip]  # it encoded nothing


def test_encoding_at_the_job_defaults_reads_back_close_to_the_source(tmp_path):
    frames = [frame.copy() for frame in face_frames(0.4, 25, (160, 128))]
    decoded, fps = encode_and_read_back(frames, tmp_path / "x264.mp4", "libx264")
    assert len(decoded) == len(frames) and fps > 0
    assert 30.0 < clip_psnr(frames, decoded) < 80.0  # crf 18: close, not lossless
    assert not (tmp_path / "x264.mp4").exists()
    # A worse copy of the same frames measures lower: the PSNR follows the encoder's quality.
    blurred = [
        np.clip(frame.astype(int) + np.random.default_rng(0).integers(-20, 20, frame.shape), 0, 255) for frame in frames
    ]
    assert clip_psnr(frames, blurred) < clip_psnr(frames, decoded)


def test_first_frames_stops_at_the_count_and_copies_a_stills_frame(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", 0.4, size=(160, 120), preset="ultrafast")
    frames = first_frames(clip, 4)
    assert len(frames) == 4 and all(frame.flags.writeable for frame in frames)


@pytest.mark.parametrize("psnr_db", [None, 41.5])
def test_parity_round_trips_through_json(psnr_db):
    fps = {} if psnr_db is None else {"libx264": 61.0, "h264_nvenc": 420.0}
    parity = EncoderParity("h264_nvenc", "h264_nvenc opened", 125 if psnr_db else 0, psnr_db, fps)
    assert EncoderParity.from_dict(parity.to_dict()) == parity

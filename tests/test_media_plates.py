"""Plates in: a constant rate read as it is stored, 10- to 16-bit and float sources at their own precision,
image sequences, what the stream says (colour, aspect, timecode), stdin; and which audio rows each
frame of a 24 or 29.97 fps plate takes."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from latentsync_cli.errors import InputError
from latentsync_cli.media import video
from latentsync_cli.media.pipes import moov_first, spool_stdin
from latentsync_cli.media.sequences import find_sequence, parse_rate
from latentsync_cli.media.stream_details import parse_stream_details, pixel_bits
from latentsync_cli.media.synthetic import make_face_clip, make_plate, make_vfr_clip
from latentsync_cli.models.audio_features import feature_chunks
from latentsync_cli.models.frame_count import (
    FEATURE_RATE,
    frame_position,
    output_frame_count,
    speech_samples_for,
)

NTSC_FILM, NTSC_VIDEO = Fraction(24000, 1001), Fraction(30000, 1001)


def ffmpeg(*args) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True).stdout


def stored_frames(path: Path, width: int, height: int, pix_fmt="rgb24", dtype=np.uint8, *before) -> list[np.ndarray]:
    """Every frame as stored, without any rate conversion (`before`: input options)."""
    raw = ffmpeg(*before, "-i", path, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-")
    return list(np.frombuffer(raw, dtype=dtype).reshape(-1, height, width, 3))


# --- constant rates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rate", "arguments"),
    [
        ("h264.mp4", NTSC_FILM, ["-c:v", "libx264", "-preset", "ultrafast"]),
        ("h264.mp4", NTSC_VIDEO, ["-c:v", "libx264", "-preset", "ultrafast"]),
        ("ffv1.mkv", NTSC_FILM, ["-c:v", "ffv1"]),  # Matroska: 1 ms ticks, rounded every frame
        ("h264.ts", Fraction(50), ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"]),
        ("prores.mov", Fraction(24), ["-c:v", "prores_ks", "-pix_fmt", "yuv422p10le"]),
        ("hevc10.mkv", Fraction(25), ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                      "-x265-params", "log-level=error"]),  # fmt: skip
        ("dnxhr.mov", NTSC_VIDEO, ["-c:v", "dnxhd", "-profile:v", "dnxhr_hq", "-pix_fmt", "yuv422p"]),
    ],
)
def test_a_constant_rate_is_found_and_every_stored_frame_read_in_order(tmp_path, name, rate, arguments):
    width, height = (256, 128) if "dnxhr" in name else (96, 64)  # DNxHR's smallest frame is 256x120
    path = make_plate(tmp_path / name, 0.6, arguments, fps=rate, size=(width, height))
    info = video.probe_video(path)
    timing = video.frame_timing(info)
    assert timing.rate == rate and timing.count == round(0.6 * rate)
    frames = list(video.decode_frames(info.at_rate(timing.rate, timing.count)))
    deep = info.samples == "uint16"
    assert deep == ("10" in info.details.pix_fmt)
    stored = stored_frames(path, width, height, "rgb48le" if deep else "rgb24", np.uint16 if deep else np.uint8)
    assert len(frames) == len(stored) == timing.count
    assert all(np.array_equal(a, b) for a, b in zip(frames, stored))


def test_a_variable_rate_has_no_constant_rate(tmp_path):
    timing = video.frame_timing(video.probe_video(make_vfr_clip(tmp_path / "vfr.mp4", 1.0, size=(96, 64))))
    assert timing.rate is None and timing.count == 30


def test_a_rate_kept_is_read_through_seeks_as_a_full_decode(tmp_path, monkeypatch):
    """The backward passes of a ping-pong seek by time: at 29.97 fps they must land on the same frames."""
    path = make_face_clip(tmp_path / "clip.mp4", 1.2, fps=NTSC_VIDEO, size=(96, 64), preset="ultrafast")
    info = video.probe_video(path)
    timing = video.frame_timing(info)
    info = info.at_rate(timing.rate, timing.count)
    forward = [frame.copy() for frame in video.decode_frames(info)]
    monkeypatch.setattr(video, "SEGMENT_BUDGET_BYTES", 5 * info.frame_bytes)  # decode the way back in segments
    frames = list(video.read_frames(info, 2 * len(forward)))
    assert all(np.array_equal(a, b) for a, b in zip(frames[len(forward) :], forward[::-1]))


# --- precision ------------------------------------------------------------------------------------


def test_a_10bit_prores_plate_is_read_at_16_bits(tmp_path):
    path = make_plate(tmp_path / "p.mov", 0.2, ["-c:v", "prores_ks", "-pix_fmt", "yuv422p10le"], samples="uint16",
                      size=(96, 64))  # fmt: skip
    info = video.probe_video(path)
    assert (info.samples, info.details.pix_fmt, info.details.bits, info.details.profile) == (
        "uint16", "yuv422p10le", 10, "HQ")  # fmt: skip
    frame = next(video.read_frames(info, 1))
    assert frame.dtype == np.uint16 and len(np.unique(frame)) > 256


def test_a_16bit_png_sequence_is_read_exactly(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    make_plate(folder / "f_%04d.png", 0.2, ["-pix_fmt", "rgb48be", "-start_number", "1001"], samples="uint16",
               size=(96, 64))  # fmt: skip
    stored = stored_frames(folder / "f_%04d.png", 96, 64, "rgb48le", np.uint16, "-start_number", "1001")
    for name in (folder, folder / "f_%04d.png"):  # the folder, or its pattern
        info = video.probe_video(name, input_fps="23.976")
        assert info.sequence.start == 1001 and info.sequence.count == 5 and info.sequence.rate == NTSC_FILM
        frames = list(video.decode_frames(info.at_rate(NTSC_FILM, 5)))
        assert all(a.dtype == np.uint16 and np.array_equal(a, b) for a, b in zip(frames, stored))


def test_an_exr_sequence_is_read_as_its_own_floats(tmp_path):
    folder = tmp_path / "exr"
    folder.mkdir()
    make_plate(folder / "plate.%04d.exr", 0.12, ["-c:v", "exr", "-format", "half"], samples="float32", size=(96, 64))
    halves = ffmpeg("-f", "image2", "-i", folder / "plate.%04d.exr", "-f", "rawvideo", "-pix_fmt", "gbrpf16le", "-")
    green, blue, red = np.frombuffer(halves, dtype="<f2").reshape(-1, 3, 64, 96)[0]
    info = video.probe_video(folder)
    assert info.samples == "float32" and info.details.colour.transfer == "linear"
    frame = next(video.read_frames(info, 1))
    assert frame.dtype == np.float32 and np.array_equal(frame, np.stack([red, green, blue], axis=-1).astype(np.float32))


def test_sequences_with_gaps_or_mixed_names_are_refused(tmp_path):
    for number in (1, 2, 4):
        (tmp_path / f"f_{number:03d}.png").write_bytes(b"")
    with pytest.raises(InputError, match="f_003.png is missing"):
        find_sequence(tmp_path)
    (tmp_path / "g_001.png").write_bytes(b"")
    with pytest.raises(InputError, match="more than one image sequence"):
        find_sequence(tmp_path)
    with pytest.raises(InputError, match="no file of the image sequence"):
        find_sequence(tmp_path / "h_%03d.png")


def test_rates_are_read_as_plates_name_them():
    assert parse_rate("23.976") == NTSC_FILM and parse_rate("29.97") == NTSC_VIDEO
    assert parse_rate("30000/1001") == NTSC_VIDEO and parse_rate("25") == 25 and parse_rate("12.5") == Fraction(25, 2)


def test_what_the_stream_says_is_read():
    header = ("Stream #0:0[0x1]: Video: prores (HQ) (apch / 0x68637061), yuv422p10le(tv, bt709, progressive), "
              "1920x1080, SAR 4:3 DAR 16:9, 23.98 fps")  # fmt: skip
    details = parse_stream_details(header, "      timecode        : 01:00:10:05\n")
    assert (details.colour.range, details.colour.matrix, details.colour.transfer) == ("tv", "bt709", "bt709")
    assert (details.sample_aspect, details.timecode, details.profile, details.bits) == ((4, 3), "01:00:10:05", "HQ", 10)
    mixed = parse_stream_details("Stream #0:0: Video: h264, yuv420p(tv, bt709/bt709/iec61966-2-1), 64x48", "")
    assert (mixed.colour.matrix, mixed.colour.transfer, mixed.sample_aspect) == ("bt709", "iec61966-2-1", None)
    assert [pixel_bits(name) for name in ("yuv420p", "nv12", "gbrp12le", "rgb48be", "gbrpf16le")] == [8, 8, 12, 16, 16]


# --- stdin ------------------------------------------------------------------------------------------


def test_stdin_is_spooled_and_an_mp4_with_its_index_last_refused(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", 0.4, size=(96, 64), preset="ultrafast")  # +faststart
    nut = tmp_path / "clip.nut"
    ffmpeg("-i", clip, "-c", "copy", "-f", "nut", nut)
    late = tmp_path / "late.mp4"
    ffmpeg("-i", clip, "-c", "copy", late)  # without +faststart: moov after mdat
    assert (moov_first(clip.read_bytes()), moov_first(late.read_bytes()), moov_first(nut.read_bytes())) == (
        True, False, None)  # fmt: skip
    for source, good in ((nut, True), (clip, True), (late, False)):
        folder = tmp_path / f"spool-{source.name}"
        folder.mkdir()
        with open(source, "rb") as stream:
            if good:
                spooled = spool_stdin(folder, stream.fileno())
                assert spooled.read_bytes() == source.read_bytes()
            else:
                with pytest.raises(InputError, match="moov.*-f nut"):
                    spool_stdin(folder, stream.fileno())
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb") as stream, pytest.raises(InputError, match="no data"):
        spool_stdin(tmp_path, stream.fileno())


# --- which audio each frame takes -----------------------------------------------------------------


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(24), NTSC_FILM, NTSC_VIDEO, Fraction(50), Fraction(60000, 1001)])
def test_each_frame_takes_the_audio_at_its_own_time(fps):
    """Frame i is shown at i / fps s; its rows are centred on the encoder position (20 ms each) that
    starts at or just before that time, so no frame hears speech more than 20 ms late or any early."""
    num_positions = 500  # 10 s of speech
    features = torch.arange(num_positions, dtype=torch.float32)[:, None, None].expand(num_positions, 1, 1)
    chunks = feature_chunks(features.contiguous(), fps)  # (N, 10, 1): positions centre-4 .. centre+5
    centres = chunks[:, 4, 0].long().tolist()
    for frame, centre in enumerate(centres):
        if centre < num_positions - 1:  # not clamped at the end
            time_s = Fraction(frame) / fps
            assert Fraction(centre, FEATURE_RATE) <= time_s < Fraction(centre + 1, FEATURE_RATE)
            assert centre == frame_position(frame, fps)
    assert len(centres) == output_frame_count(num_positions * 320, fps)


@pytest.mark.parametrize("fps", [Fraction(25), NTSC_FILM, NTSC_VIDEO, Fraction(60000, 1001)])
def test_the_speech_for_a_video_length_is_the_shortest_that_makes_it(fps):
    for frames in (1, 2, 17, 240):
        samples = speech_samples_for(frames, fps)
        assert output_frame_count(samples, fps) >= frames > output_frame_count(samples - 320, fps) or samples == 320


def test_25fps_keeps_upstreams_rows():
    assert [frame_position(frame, 25) for frame in range(6)] == [0, 2, 4, 6, 8, 10]

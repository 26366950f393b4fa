"""media/outputs.py: which container and codec an output name gives, and OutputWriter writing each of
them with the speech, the source's rate, colour, aspect, rotation and timecode; lossless outputs give
the frames back bit for bit; nothing appears at the target until it is complete."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from latentsync_cli.errors import OutputError, UsageError
from latentsync_cli.media.audio import speech_stream
from latentsync_cli.media.outputs import (
    STDOUT,
    OutputWriter,
    Speech,
    check_codec,
    choose_output,
    replace_folder,
    wav_name,
)
from latentsync_cli.media.stream_details import Colour, StreamDetails
from latentsync_cli.media.video import VideoInfo, probe_video, read_frames

RATE = Fraction(24000, 1001)


def ffmpeg(*args) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True).stdout


def description(path) -> str:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False).stderr


def source_info(width=64, height=48, pix_fmt="yuv420p", codec="h264", **details) -> VideoInfo:
    """What a probe of a plate would say, without a file."""
    return VideoInfo(Path("plate.mov"), width, height, float(RATE), 1.0, 24, 0, False, True, codec,
                     rate=RATE, details=StreamDetails(pix_fmt, **details))  # fmt: skip


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    """A 48 kHz stereo 24-bit take, 0.5 s long: shorter than the frames below, so it is padded."""
    path = tmp_path_factory.mktemp("speech") / "take.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.5", "-ac", "2", "-c:a", "pcm_s24le",
           path)  # fmt: skip
    return Speech(path, speech_stream(path))


def random_frames(count, dtype, width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:  # half-precision values, some above 1.0 (a highlight), as an EXR holds them
        return [rng.uniform(0, 4, (height, width, 3)).astype(np.float16).astype(np.float32) for _ in range(count)]
    top = np.iinfo(dtype).max
    return [rng.integers(0, top + 1, (height, width, 3)).astype(dtype) for _ in range(count)]


def write_all(spec, source, speech, frames, scratch, **kwargs) -> OutputWriter:
    writer = OutputWriter(spec, source, speech, Fraction(len(frames)) / source.rate, scratch, **kwargs)
    for frame in frames:
        writer.write(frame)
    writer.end_of_frames()
    writer.finish()
    return writer


def decoded(path, info_rate=RATE, count=None) -> list[np.ndarray]:
    info = probe_video(path)
    info = info.at_rate(info_rate, count or info.frame_count)
    return list(read_frames(info, info.frame_count))


# --- choosing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "source_codec", "profile", "expected"),
    [
        ("out.mp4", "auto", "prores", "HQ", ("mp4", "h264", "aac")),  # MP4 stays H.264 whatever the source
        ("out.mov", "auto", "prores", "HQ", ("mov", "prores", "pcm")),
        ("out.mov", "auto", "prores", "4444", ("mov", "prores4444", "pcm")),
        ("out.mov", "auto", "dnxhd", "DNXHR HQX", ("mov", "dnxhr", "pcm")),
        ("out.mov", "auto", "vp9", None, ("mov", "h264", "pcm")),
        ("out.mxf", "auto", "h264", None, ("mxf", "dnxhr", "pcm48")),
        ("out.mkv", "auto", "h264", None, ("matroska", "ffv1", "flac")),
        ("out.mp4", "hevc", "h264", None, ("mp4", "hevc", "aac")),
        ("f/x_%05d.exr", "auto", "h264", None, ("image2", "exr", "wav")),
        ("f/x_%05d.tif", "tiff", "h264", None, ("image2", "tiff", "wav")),
    ],
)
def test_the_output_name_and_codec_choose_container_codec_and_audio(name, codec, source_codec, profile, expected):
    source = dataclasses.replace(source_info(320, 240, codec=source_codec), details=StreamDetails(profile=profile))
    spec = choose_output(Path(name), codec, None, source)
    assert (spec.muxer, spec.codec, spec.audio) == expected


def test_stdout_streams_are_nut_by_default_or_matroska():
    source = source_info()
    assert choose_output(STDOUT, "auto", None, source).codec == "raw"
    spec = choose_output(STDOUT, "auto", "matroska", source)
    assert (spec.kind, spec.muxer, spec.codec, spec.path) == ("stream", "matroska", "ffv1", None)


@pytest.mark.parametrize(
    ("name", "codec", "stream_format", "error", "words"),
    [
        ("out.avi", "auto", None, OutputError, "must be one of"),
        ("out.png", "auto", None, OutputError, "out/frame_%05d.png"),
        ("out.mp4", "prores", None, UsageError, "h264, hevc"),
        ("out.mkv", "raw", None, UsageError, "does not go in"),
        ("out.mov", "auto", "nut", UsageError, "--format nut is for -o -"),
        ("f/x_%05d.exr", "png", None, UsageError, "leave --codec out or use exr"),
        ("f_%05d/x.png", "auto", None, UsageError, "goes in the file name"),
        ("f/x_%d_%d.png", "auto", None, UsageError, "only one %d"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_before_any_work(name, codec, stream_format, error, words):
    with pytest.raises(error, match=re.escape(words)):
        check_codec(Path(name), codec, stream_format)


def test_dnxhr_refuses_frames_smaller_than_its_minimum():
    with pytest.raises(UsageError, match="at least 256x120"):
        choose_output(Path("out.mxf"), "auto", None, source_info(128, 96))


def test_the_wav_beside_a_sequence_is_named_after_its_frames():
    assert wav_name(Path("shot/frame_%05d.exr")) == "frame.wav"
    assert wav_name(Path("shot/%04d.png")) == "shot.wav"


# --- writing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype", "stored"),
    [
        ("out.mkv", np.uint8, "bgr0"),  # FFV1
        ("out.mkv", np.uint16, "gbrp16le"),
        ("seq/f_%04d.png", np.uint8, "rgb24"),
        ("seq/f_%04d.png", np.uint16, "rgb48be"),
        ("seq/f_%04d.tif", np.uint16, "rgb48le"),
        ("seq/f_%04d.dpx", np.uint16, "rgb48le"),
        ("seq/f_%04d.exr", np.float32, "gbrpf16le"),  # a half-float source stays half
    ],
)
def test_lossless_outputs_give_the_frames_back_bit_for_bit(tmp_path, speech, name, dtype, stored):
    pix_fmt = {np.uint8: "yuv420p", np.uint16: "yuv422p10le", np.float32: "gbrpf16le"}[dtype]
    source = source_info(pix_fmt=pix_fmt)
    frames = random_frames(5, dtype)
    spec = choose_output(tmp_path / name, "auto", None, source)
    write_all(spec, source, speech, frames, tmp_path)
    target = tmp_path / name
    back = decoded(target if spec.kind == "file" else target.parent, count=5)
    assert f", {stored}" in description(target if spec.kind == "file" else target.parent / (target.name % 1))
    assert len(back) == 5 and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(frames, back))


def test_a_10bit_rgb_source_is_written_at_10_bits_and_comes_back_exactly(tmp_path, speech):
    """A DPX plate of 10-bit RGB decodes to 16 bits by bit replication; its own depth holds it exactly."""
    values = np.random.default_rng(1).integers(0, 1024, (5, 48, 64, 3))
    frames = [(v << 6 | v >> 4).astype(np.uint16) for v in values]  # as ffmpeg scales 10 bits to 16
    source = source_info(pix_fmt="gbrp10le", codec="dpx")
    for name in ("seq/f_%04d.dpx", "out.mkv"):
        spec = choose_output(tmp_path / name, "auto", None, source)
        write_all(spec, source, speech, frames, tmp_path)
        first = tmp_path / name if spec.kind == "file" else tmp_path / "seq" / "f_0001.dpx"
        assert "gbrp10le" in description(first)
        back = decoded(tmp_path / name if spec.kind == "file" else tmp_path / "seq", count=5)
        assert all(np.array_equal(a, b) for a, b in zip(frames, back))


@pytest.mark.parametrize(
    ("name", "codec", "dtype", "video", "audio"),
    [
        ("out.mp4", "auto", np.uint8, "h264 (High) (avc1 / 0x31637661), yuv420p", "aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo"),
        ("out.mp4", "hevc", np.uint16, "hevc (Main 10)", "48000 Hz, stereo"),
        ("out.mov", "prores", np.uint16, "prores (HQ) (apch / 0x68637061), yuv422p10le", "pcm_s24le"),
        ("out.mov", "prores4444", np.uint8, "prores (4444) (ap4h / 0x68347061), yuv444p12le", "pcm_s24le"),
        ("out.mxf", "dnxhr", np.uint16, "dnxhd (DNXHR HQX), yuv422p10le", "pcm_s24le, 48000 Hz, stereo"),
        ("out.mov", "dnxhr", np.uint8, "yuv422p(tv, bt709", "pcm_s24le"),
        ("out.mkv", "auto", np.uint16, "ffv1", "flac, 48000 Hz, stereo"),
    ],
)
def test_each_codec_writes_the_frames_with_the_speech_at_its_own_rate(tmp_path, speech, name, codec, dtype,
                                                                     video, audio):  # fmt: skip
    source = source_info(320, 240, pix_fmt="yuv422p10le" if dtype == np.uint16 else "yuv420p")
    frames = random_frames(12, dtype, 320, 240)
    spec = choose_output(tmp_path / name, codec, None, source)
    write_all(spec, source, speech, frames, tmp_path)
    text = description(tmp_path / name)
    assert video in text and audio in text, text
    assert "23.98 fps" in text and text.count("Stream #") == 2
    assert [path.name for path in tmp_path.iterdir() if ".partial-" in path.name] == []
    # 12 frames at 23.976 fps: the 0.5 s take is padded with silence to 0.5005 s
    seconds = len(ffmpeg("-i", tmp_path / name, "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", "48000", "-")) / 2 / 48000
    assert seconds == pytest.approx(12 / float(RATE), abs=1024 / 48000)


def test_a_longer_speech_is_cut_to_the_frames(tmp_path, speech):
    source = source_info()
    write_all(choose_output(tmp_path / "out.mov", "prores", None, source), source, speech, random_frames(6, np.uint8),
              tmp_path)  # fmt: skip
    samples = len(ffmpeg("-i", tmp_path / "out.mov", "-map", "0:a", "-f", "s24le", "-")) // 6  # 24-bit stereo
    assert samples == round(6 / RATE * 48000)


def test_colour_aspect_rotation_and_timecode_are_carried_over(tmp_path, speech):
    colour = Colour("tv", "bt709", "bt709", "bt709")
    source = dataclasses.replace(
        source_info(pix_fmt="yuv422p10le"), rotation=90, width=48, height=64,
        details=StreamDetails("yuv422p10le", colour, (4, 3), "01:00:10:05"),
    )  # fmt: skip
    frames = random_frames(5, np.uint16, width=48, height=64)  # upright, as the decoder turned them
    for name in ("out.mkv", "out.mov"):
        write_all(choose_output(tmp_path / name, "auto" if name == "out.mkv" else "prores", None, source), source,
                  speech, frames, tmp_path)  # fmt: skip
        text = description(tmp_path / name)
        assert "rotation of 90.00 degrees" in text and "SAR 4:3" in text and "01:00:10:05" in text, text
        assert ", 64x48" in text  # stored as the source stores it, turned back on display
    assert "gbr/bt709/bt709" in description(tmp_path / "out.mkv")
    assert "yuv422p10le(tv, bt709, progressive)" in description(tmp_path / "out.mov")
    back = decoded(tmp_path / "out.mkv", count=5)  # read upright again, bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_h264_keeps_its_bt601_pixels_and_now_says_so(tmp_path, speech):
    """A tagged source's H.264 output decodes to the same pixels as an untagged one: the tags describe what
    the encoder always did (BT.601 matrix, limited range), with the source's primaries and transfer."""
    frames = random_frames(4, np.uint8, 320, 240)
    plain = source_info(320, 240)
    tagged = dataclasses.replace(plain, details=StreamDetails("yuv420p", Colour("tv", "bt709", "bt709", "bt709")))
    for name, source in (("plain.mp4", plain), ("tagged.mp4", tagged)):
        write_all(choose_output(tmp_path / name, "auto", None, source), source, speech, frames, tmp_path)
    assert "yuv420p(progressive)" in description(tmp_path / "plain.mp4")
    assert "yuv420p(tv, smpte170m/bt709/bt709, progressive)" in description(tmp_path / "tagged.mp4")
    pixels = [ffmpeg("-i", tmp_path / name, "-f", "rawvideo", "-pix_fmt", "rgb24", "-") for name in ("plain.mp4",
                                                                                                    "tagged.mp4")]  # fmt: skip
    assert pixels[0] == pixels[1]


def test_a_sequence_appears_with_its_wav_only_when_finished(tmp_path, speech):
    source = source_info()
    spec = choose_output(tmp_path / "shot" / "frame_%05d.png", "auto", None, source)
    writer = OutputWriter(spec, source, speech, Fraction(5) / RATE, tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    for frame in random_frames(5, np.uint8):
        writer.write(frame)
    writer.end_of_frames()
    assert not (tmp_path / "shot").exists()  # written in the scratch folder so far
    writer.finish()
    names = sorted(os.listdir(tmp_path / "shot"))
    assert names == ["frame.wav", *(f"frame_{n:05d}.png" for n in range(1, 6))]
    wav = description(tmp_path / "shot" / "frame.wav")
    assert "pcm_s24le" in wav and "48000 Hz, stereo" in wav
    assert os.listdir(tmp_path / "scratch") == []


def test_an_aborted_output_leaves_nothing(tmp_path, speech):
    source = source_info()
    for name in ("out.mov", "seq/f_%04d.png"):
        spec = choose_output(tmp_path / name, "auto", None, source)
        (tmp_path / "scratch").mkdir(exist_ok=True)
        writer = OutputWriter(spec, source, speech, Fraction(1), tmp_path / "scratch")
        for frame in random_frames(3, np.uint8):
            writer.write(frame)
        writer.abort()
        writer.abort()  # twice is fine
    assert sorted(os.listdir(tmp_path)) == ["scratch"] and os.listdir(tmp_path / "scratch") == []


def test_a_bad_speech_file_fails_the_write_without_output(tmp_path, speech):
    (tmp_path / "bad.wav").write_text("not audio\n" * 20)
    source = source_info()
    broken = Speech(tmp_path / "bad.wav", speech.stream)
    with pytest.raises(OutputError, match="out.mov"):
        write_all(choose_output(tmp_path / "out.mov", "auto", None, source), source, broken,
                  random_frames(3, np.uint8), tmp_path)  # fmt: skip
    assert not (tmp_path / "out.mov").exists()
    assert [name for name in os.listdir(tmp_path) if ".partial-" in name] == []


def test_a_stream_goes_to_the_given_file_descriptor(tmp_path, speech):
    source = source_info(pix_fmt="yuv422p10le")
    frames = random_frames(4, np.uint16)
    with open(tmp_path / "stream.nut", "wb") as stream:
        write_all(choose_output(STDOUT, "auto", None, source), source, speech, frames, tmp_path,
                  stream_fd=stream.fileno())  # fmt: skip
    assert "rawvideo" in description(tmp_path / "stream.nut") and "pcm_s24le" in description(tmp_path / "stream.nut")
    back = decoded(tmp_path / "stream.nut", count=4)
    assert all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_an_older_sequence_folder_is_replaced_as_a_whole(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f_0001.png").write_text("new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "f_0001.png").write_text("old")
    (tmp_path / "old" / "f_0002.png").write_text("old")
    replace_folder(tmp_path / "new", tmp_path / "old")
    assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(tmp_path / "old") == ["f_0001.png"]

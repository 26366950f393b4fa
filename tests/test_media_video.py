"""media/video.py: 25 fps conforming, rotation, still images, the output-length rule, errors."""

from __future__ import annotations

import os
import subprocess
import tracemalloc
from fractions import Fraction

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.media import video
from latentsync_cli.media.encode import VideoEncoder
from latentsync_cli.media.synthetic import make_face_clip, make_still_image, make_vfr_clip

LEVEL_STEP = 4  # frame i of an index clip is flat grey at i * LEVEL_STEP


def run_ffmpeg(*args) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(command, check=True, capture_output=True)


def make_index_clip(path, count, fps=25, size=(64, 48)):
    """Frames you can identify after lossy coding: flat grey levels 0, 4, 8, ..."""
    width, height = size
    with VideoEncoder(path, width, height, fps=fps, crf=0, preset="ultrafast") as encoder:
        for index in range(count):
            encoder.write(np.full((height, width, 3), index * LEVEL_STEP, dtype=np.uint8))
    return path


def frame_index(frame) -> int:
    return int(round(float(frame.mean()) / LEVEL_STEP))


@pytest.mark.parametrize("fps", [30, 24, Fraction(30000, 1001), 50])
def test_constant_rates_are_conformed_to_25fps(tmp_path, fps):
    path = make_face_clip(tmp_path / "clip.mp4", 2.0, fps=fps, size=(96, 64), preset="ultrafast")
    info = video.probe_video(path)
    assert info.fps == pytest.approx(float(fps), abs=0.01)
    frames = list(video.decode_frames(info))
    assert abs(len(frames) - info.duration_s * 25) <= 1
    assert abs(info.frame_count - len(frames)) <= 1
    assert frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8


def test_frames_are_picked_by_timestamp(tmp_path):
    path = make_index_clip(tmp_path / "index30.mp4", 60, fps=30)
    indices = [frame_index(frame) for frame in video.read_frames(path, 50)]
    # 25 fps slot j shows the 30 fps frame nearest j * 30/25: 0 1 2 4 5 6 7 8 10 ...
    assert all(abs(index - j * 30 / 25) <= 1 for j, index in enumerate(indices))
    assert len(set(indices)) == 50 and indices == sorted(indices)


def test_variable_frame_rate_is_conformed_to_25fps(tmp_path):
    path = make_vfr_clip(tmp_path / "vfr.mp4", 2.0, size=(96, 64))
    gaps = np.diff(video.source_timestamps(path))
    assert gaps.std() / gaps.mean() > 0.3  # really irregular
    info = video.probe_video(path)
    frames = list(video.decode_frames(info))
    assert abs(len(frames) - info.duration_s * 25) <= 1


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    plain = make_face_clip(tmp_path / "plain.mp4", 0.4, size=(96, 64), preset="ultrafast")
    turned = tmp_path / "turned.mp4"
    run_ffmpeg("-display_rotation", rotation, "-i", plain, "-c", "copy", turned)  # metadata only, same pixels
    info = video.probe_video(turned)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((64, 96) if rotation in (90, 270) else (96, 64))
    upright = next(video.read_frames(plain, 1))
    frame = next(video.read_frames(turned, 1))
    assert frame.shape == (info.height, info.width, 3)
    # display rotation is counter-clockwise, as np.rot90 is
    difference = np.abs(frame.astype(int) - np.rot90(upright, rotation // 90).astype(int))
    assert difference.mean() < 1.0


def test_still_png_with_alpha_repeats_one_composited_frame(tmp_path):
    path = make_still_image(tmp_path / "portrait.png", size=(120, 160), alpha=True)
    info = video.probe_video(path)
    assert (info.is_image, info.width, info.height, info.frame_count) == (True, 120, 160, 1)
    frames = list(video.read_frames(path, 7, loop="pingpong"))
    assert len(frames) == 7
    assert all(np.array_equal(frame, frames[0]) for frame in frames)
    assert frames[0].shape == (160, 120, 3)
    assert frames[0][0, 0].tolist() == [0, 0, 0]  # transparent white corner composited over black
    # One read-only array for every frame (a 4K still would cost 25 MB a frame in flight): a caller
    # that wants to change a frame copies it.
    assert all(frame is frames[0] for frame in frames) and not frames[0].flags.writeable
    with pytest.raises(ValueError):
        frames[0][:] = 1


def test_grey_and_16bit_images_become_rgb_uint8(tmp_path):
    grey16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    frame = next(video.read_frames(tmp_path / "grey16.png", 1))
    assert frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
    assert np.array_equal(frame[:, :, 0], frame[:, :, 2])
    assert np.abs(frame[:, :, 0].astype(int) - grey16 / 257).max() <= 1


@pytest.mark.parametrize(("pixel_format", "dtype"), [("gray", np.uint8), ("yuv420p10le", np.uint16)])
def test_grey_video_decodes_to_rgb24_and_10bit_to_rgb48(tmp_path, pixel_format, dtype):
    path = tmp_path / f"{pixel_format}.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "0.4", "-pix_fmt", pixel_format,
               "-c:v", "libx264", "-preset", "ultrafast", path)  # fmt: skip
    frames = list(video.read_frames(path, 10))
    assert len(frames) == 10 and frames[0].shape == (64, 96, 3) and frames[0].dtype == dtype
    if pixel_format == "gray":
        assert np.array_equal(frames[3][:, :, 0], frames[3][:, :, 1])
    assert frames[3].std() > 10 * (257 if dtype == np.uint16 else 1)  # a real picture, not a blank
    if dtype == np.uint16:  # ten bits in sixteen: more than 256 distinct levels
        assert len(np.unique(frames[3])) > 256


def test_a_longer_video_is_cut_to_n_frames(tmp_path):
    path = make_index_clip(tmp_path / "index.mp4", 20)
    assert [frame_index(frame) for frame in video.read_frames(path, 8)] == list(range(8))


EXPECTED_SEQUENCES = {
    "pingpong": [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 4, 3],
    "loop": [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1],
    "freeze": [0, 1, 2, 3, 4] + [4] * 12,
}


@pytest.mark.parametrize("held_in_memory", [True, False])
@pytest.mark.parametrize("loop", list(EXPECTED_SEQUENCES))
def test_short_video_is_continued(tmp_path, monkeypatch, loop, held_in_memory):
    path = make_index_clip(tmp_path / "five.mp4", 5)
    if not held_in_memory:  # force re-decoding, backward in segments of 2 frames
        monkeypatch.setattr(video, "SEGMENT_BUDGET_BYTES", 2 * 64 * 48 * 3)
    frames = list(video.read_frames(path, 17, loop=loop))
    assert [frame_index(frame) for frame in frames] == EXPECTED_SEQUENCES[loop]


@pytest.mark.parametrize("kind", ["gop", "vfr"])
def test_seeked_segments_equal_a_full_forward_decode(tmp_path, kind):
    if kind == "gop":  # B-frames and a keyframe every 20 frames, so seeks land mid-GOP
        path = tmp_path / "clip.mp4"
        run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30", "-t", "4", "-c:v", "libx264",
                   "-preset", "ultrafast", "-g", "20", "-bf", "3", path)  # fmt: skip
    else:
        path = make_vfr_clip(tmp_path / "vfr.mp4", 4.0, size=(96, 64))
    info = video.probe_video(path)
    full = list(video.decode_frames(info))
    for start, end in [(30, 31), (41, 60), (60, 70), (len(full) - 9, len(full))]:
        segment = video._seek_segment(info, start, end)  # the seek path itself, without the fallback
        assert len(segment) == end - start
        assert all(np.array_equal(a, b) for a, b in zip(segment, full[start:end])), (start, end)


def test_pingpong_through_segments_equals_reversed_forward_decode(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30", "-t", "3", "-c:v", "libx264",
               "-preset", "ultrafast", "-g", "15", path)  # fmt: skip
    monkeypatch.setattr(video, "SEGMENT_BUDGET_BYTES", 16 * 96 * 64 * 3)
    forward = list(video.decode_frames(video.probe_video(path)))
    count = len(forward)
    frames = list(video.read_frames(path, 2 * count + 3))
    expected = forward + forward[::-1] + forward[:3]
    assert len(frames) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected))


def test_streaming_keeps_memory_flat(tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4", "-c:v", "libx264",
               "-preset", "ultrafast", path)  # fmt: skip
    monkeypatch.setattr(video, "SEGMENT_BUDGET_BYTES", 8 * 320 * 240 * 3)
    tracemalloc.start()
    try:
        count = 0
        for _ in video.read_frames(path, 250, loop="pingpong"):  # 100 frames forward, backward, forward
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frame_bytes = 320 * 240 * 3
    assert count == 250
    assert peak < 20 * frame_bytes  # all 100 frames would be 23 MB; one segment of 8 is 1.8 MB


def make_bad_input(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nothing here.mp4"
    if kind == "folder":
        (tmp_path / "folder.mp4").mkdir()
        return tmp_path / "folder.mp4"
    if kind == "empty":
        (tmp_path / "empty.mp4").write_bytes(b"")
        return tmp_path / "empty.mp4"
    if kind == "text":
        (tmp_path / "notes.mp4").write_text("these are not frames\n" * 20)
        return tmp_path / "notes.mp4"
    if kind == "truncated":
        whole = make_face_clip(tmp_path / "whole.mp4", 1.0, size=(96, 64), preset="ultrafast")
        data = whole.read_bytes()  # the index is at the front (faststart): cut inside the first frame
        (tmp_path / "cut.mp4").write_bytes(data[: data.index(b"mdat") + 64])
        return tmp_path / "cut.mp4"
    if kind == "audio only":
        run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", tmp_path / "speech.m4a")
        return tmp_path / "speech.m4a"
    if kind == "bad image":
        (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        return tmp_path / "photo.png"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "text", "truncated", "audio only", "bad image"])
def test_unusable_inputs_raise_one_line_input_errors(tmp_path, kind):
    path = make_bad_input(tmp_path, kind)
    with pytest.raises(InputError) as raised:
        list(video.read_frames(path, 3))
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert raised.value.exit_code == 4
    if kind == "audio only":
        assert "has no video stream" in message


def test_a_named_pipe_is_refused_saying_why(tmp_path):
    pipe = tmp_path / "clip.mp4"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match="is a named pipe \\(FIFO\\), not a file: the video is read several times"):
        video.probe_video(pipe)  # at once: the pipe is never opened


def test_the_default_video_stream_is_decoded_not_a_still_before_it(tmp_path):
    still = tmp_path / "still.jpg"
    run_ffmpeg("-f", "lavfi", "-i", "color=c=red:size=64x48", "-frames:v", "1", "-c:v", "mjpeg", still)
    moving = make_index_clip(tmp_path / "index.mp4", 10)
    both = tmp_path / "both.mkv"  # stream 0: a one-frame MJPEG picture; stream 1, the default: the video
    run_ffmpeg("-i", still, "-i", moving, "-map", "0:v", "-map", "1:v", "-c", "copy",
               "-disposition:v:0", "0", "-disposition:v:1", "default", both)  # fmt: skip
    info = video.probe_video(both)
    assert (info.video_stream, info.video_streams, info.codec) == (1, 2, "h264")
    assert info.stream_label == "stream #0:1 (h264, 64x48, default)"
    assert [frame_index(frame) for frame in video.read_frames(both, 10)] == list(range(10))


def test_unknown_loop_mode_is_a_usage_error(tmp_path):
    path = make_index_clip(tmp_path / "clip.mp4", 3)
    with pytest.raises(UsageError, match="bounce"):
        video.read_frames(path, 3, loop="bounce")


def test_probe_reports_audio_and_codec(tmp_path):
    path = tmp_path / "with audio.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=16000",
               "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", path)  # fmt: skip
    info = video.probe_video(path)
    assert (info.has_audio, info.codec, info.width, info.height, info.rotation) == (True, "h264", 96, 64, 0)
    assert info.duration_s == pytest.approx(1.0, abs=0.05)
    assert info.frame_count == 25


def test_the_first_ffmpeg_error_line_loses_its_component_prefixes():
    stderr = (
        "[h264_nvenc @ 0x55f7dd1af780] Cannot load libcuda.so.1\n"
        "[vost#0:0/h264_nvenc @ 0x55f7dd1aecc0] [enc:h264_nvenc @ 0x55f7dd1af680] Error while opening encoder\n"
    )
    assert video.first_ffmpeg_error(stderr) == "Cannot load libcuda.so.1"
    assert video.first_ffmpeg_error("\n  \n") == "ffmpeg gave no reason"

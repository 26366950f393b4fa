"""media/encode.py: H.264 encoding, the encoder choice, atomic rename, cleanup on failure (a job's output with
its speech: test_media_outputs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from latentsync_cli.errors import ExitCode, OutputError, UsageError
from latentsync_cli.media import encode
from latentsync_cli.media.encode import VideoEncoder, choose_encoder
from latentsync_cli.media.video import probe_video, read_frames


def ffmpeg_description(path) -> str:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False).stderr


def leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if ".partial-" in name]


def moving_frames(count, width=64, height=48):
    for index in range(count):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[:, :, 0] = index * 10 % 256
        frame[:, : width // 2, 1] = 200
        yield frame


def test_odd_size_round_trip_pads_one_edge_pixel(tmp_path):
    frames = list(moving_frames(6, width=721, height=405))
    for frame in frames:
        frame[:, -1] = (0, 0, 255)  # the last column and row, to see them copied into the padding
        frame[-1, :] = (255, 255, 0)
    with VideoEncoder(tmp_path / "odd.mp4", 721, 405, crf=10) as encoder:
        assert encoder.encoded_size == (722, 406)
        for frame in frames:
            encoder.write(frame)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.frame_count) == (722, 406, 6)
    back = list(read_frames(tmp_path / "odd.mp4", 6))
    assert np.abs(back[3][:405, :721].astype(int) - frames[3]).mean() < 3
    # the padding copies the last column and row (which 4:2:0 chroma blurs, so compare decoded with decoded)
    assert np.abs(back[3][:, 721].astype(int) - back[3][:, 720]).max() <= 4
    assert np.abs(back[3][405].astype(int) - back[3][404]).max() <= 4
    assert back[3][200, 721, 2] > 100 and back[3][405, 300, 0] > 200


def test_paths_with_spaces_quotes_and_non_ascii_work(tmp_path):
    folder = tmp_path / "out put ü"
    folder.mkdir()
    video_path = folder / "my clip 'ü'.mp4"
    with VideoEncoder(video_path, 64, 48) as encoder:
        for frame in moving_frames(5):
            encoder.write(frame)
    assert len(list(read_frames(video_path, 5))) == 5
    assert leftovers(folder) == []


def test_killing_ffmpeg_midway_leaves_nothing_at_the_target(tmp_path):
    target = tmp_path / "out.mp4"
    encoder = VideoEncoder(target, 64, 48, preset="ultrafast")
    frames = moving_frames(100000)
    for _ in range(10):
        encoder.write(next(frames))
    assert encoder.temp_paths == [encoder.temp_path] and encoder.temp_path.parent == tmp_path
    os.kill(encoder.process.pid, signal.SIGKILL)
    with pytest.raises(OutputError, match="SIGKILL"):
        for frame in frames:  # the pipe breaks on some write, or finish() sees the signal
            encoder.write(frame)
        encoder.finish()
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_an_exception_inside_the_block_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"an older result")
    with pytest.raises(KeyboardInterrupt):
        with VideoEncoder(target, 64, 48) as encoder:
            for frame in moving_frames(10):
                encoder.write(frame)
            raise KeyboardInterrupt
    assert encoder.process.poll() is not None
    assert target.read_bytes() == b"an older result"  # untouched: never half-replaced
    assert leftovers(tmp_path) == []


def test_a_missing_output_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        VideoEncoder(tmp_path / "no such folder" / "out.mp4", 64, 48)


def test_wrong_frame_shape_is_refused(tmp_path):
    with VideoEncoder(tmp_path / "out.mp4", 64, 48) as encoder:
        with pytest.raises(ValueError, match="uint8"):
            encoder.write(np.zeros((48, 64, 3), dtype=np.float32))
        encoder.write(np.zeros((48, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="finished"):
        encoder.write(np.zeros((48, 64, 3), dtype=np.uint8))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is Linux only")
def test_a_full_disk_is_reported_as_disk_full(tmp_path):
    # A real full-disk write: ffmpeg writing to /dev/full fails with ENOSPC.
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "lavfi", "-i", "testsrc2=size=64x48", "-t", "1", "-c:v", "libx264", "-f", "matroska", "/dev/full"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    error = encode.ffmpeg_output_error(result.stderr, result.returncode, tmp_path / "out.mp4")
    assert "disk full" in str(error) and "out.mp4" in str(error)
    assert error.exit_code == 6


def test_partial_path_is_hidden_beside_the_target(tmp_path):
    first = encode.partial_path(tmp_path / "result.mp4")
    second = encode.partial_path(tmp_path / "result.mp4")
    assert first.parent == tmp_path and first != second
    assert first.name.startswith(f".result.partial-{os.getpid()}-") and first.suffix == ".mp4"


NO_NVENC = "Cannot load libcuda.so.1"  # what the bundled ffmpeg says on a machine without the NVIDIA driver


def test_auto_falls_back_to_libx264_with_the_reason():
    choice = choose_encoder("auto", nvenc_error=lambda: NO_NVENC)
    assert choice.name == "libx264"
    assert choice.reason == f"h264_nvenc did not open: {NO_NVENC}"


def test_auto_takes_nvenc_where_it_opens():
    assert choose_encoder("auto", nvenc_error=lambda: None).name == "h264_nvenc"
    assert choose_encoder("h264_nvenc", nvenc_error=lambda: None).name == "h264_nvenc"


def test_requested_nvenc_without_it_is_a_usage_error():
    with pytest.raises(UsageError) as caught:
        choose_encoder("h264_nvenc", nvenc_error=lambda: NO_NVENC)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE == 2
    assert "--encoder h264_nvenc" in message and NO_NVENC in message and "\n" not in message


def test_libx264_needs_no_probe_and_unknown_names_are_refused():
    def no_probe():
        raise AssertionError("libx264 must not start an NVENC probe")

    assert choose_encoder("libx264", nvenc_error=no_probe).name == "libx264"
    with pytest.raises(UsageError, match="auto, libx264, h264_nvenc"):
        choose_encoder("x265")


def test_the_real_probe_agrees_with_an_nvenc_encode(tmp_path):
    """On a machine without NVENC (this CPU box, an H100) auto says why; where it opens, it encodes."""
    error = encode.nvenc_open_error()
    choice = choose_encoder("auto")
    if error is None:
        assert choice.name == "h264_nvenc"
        with VideoEncoder(tmp_path / "nvenc.mp4", 256, 144, codec="h264_nvenc") as encoder:
            for frame in moving_frames(10, width=256, height=144):
                encoder.write(frame)
        assert len(list(read_frames(tmp_path / "nvenc.mp4", 10))) == 10
    else:
        assert choice.name == "libx264" and choice.reason == f"h264_nvenc did not open: {error}"
        assert error.strip() and "\n" not in error and not error.startswith("[")
        with pytest.raises(UsageError, match="h264_nvenc"):
            choose_encoder("h264_nvenc")
        with pytest.raises(OutputError):
            with VideoEncoder(tmp_path / "nvenc.mp4", 256, 144, codec="h264_nvenc") as encoder:
                for frame in moving_frames(10, width=256, height=144):
                    encoder.write(frame)
        assert leftovers(tmp_path) == [] and not (tmp_path / "nvenc.mp4").exists()


def test_an_unknown_codec_is_refused_before_ffmpeg_starts(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder"):
        VideoEncoder(tmp_path / "out.mp4", 64, 48, codec="h265_magic")
    assert os.listdir(tmp_path) == []


def test_nvenc_quality_follows_the_crf():
    options = encode.codec_arguments("h264_nvenc", crf=23, preset="veryfast")
    assert options[options.index("-cq") + 1] == "23"
    assert options[options.index("-preset") + 1] == encode.NVENC_PRESET
    lossless = encode.codec_arguments("h264_nvenc", crf=0, preset="veryfast")
    assert lossless[lossless.index("-cq") + 1] == "1"  # 0 would turn constant quality off

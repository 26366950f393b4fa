"""H.264 encoding: the encoder choice (libx264 or NVENC), its arguments, and VideoEncoder, which writes
RGB frames to a silent H.264 MP4 (test clips, the benchmark's encoder comparison). A job's output,
with its speech and every other format, is media/outputs.py's.

Nothing appears at a target path until it is complete: it is written to a
temporary file beside the target (same folder, so the final `os.replace` is an
atomic rename) named `.<name>.partial-<pid>-<random><suffix>`, and removed on
any failure, exception or interrupt.

H.264 with yuv420p needs even sizes: an odd width or height is padded by one
pixel on the right/bottom edge, copying the last column/row, so the output is
then 1 px larger than the frames (see `VideoEncoder.encoded_size`).

The encoder is libx264 (on all the CPU's cores) or NVIDIA's h264_nvenc where it
opens: `choose_encoder` tries it once per process, since a GPU without NVENC
(A100, H100) or a missing driver only shows when ffmpeg opens the encoder.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from latentsync_cli.errors import OutputError, UsageError
from latentsync_cli.media.video import first_ffmpeg_error

ENCODERS = ("libx264", "h264_nvenc")
ENCODER_CHOICES = ("auto", *ENCODERS)
DEFAULT_CRF = 18  # x264 quality of every output unless --crf says otherwise (NVENC's -cq takes the same number)
# x264 "medium" (upstream's) encodes 1080p at a few frames per second on a small CPU and
# becomes the bottleneck of the CPU lanes; "veryfast" is 2.3x faster at the same CRF.
DEFAULT_X264_PRESET = "veryfast"
NVENC_PRESET = "p4"  # NVENC's middle preset (p1 fastest .. p7 best): faster than real time at 1080p
NVENC_PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class EncoderChoice:
    name: str  # the ffmpeg encoder: "libx264" or "h264_nvenc"
    reason: str  # one line for the run report: why this one


def choose_encoder(
    requested: str = "auto", nvenc_error: Callable[[], str | None] | None = None, device: str | None = None
) -> EncoderChoice:
    """The H.264 encoder to use: `requested` ("auto", "libx264" or "h264_nvenc") checked against this machine.

    `nvenc_error` says why h264_nvenc does not open here (None: it does);
    by default ffmpeg is asked, once per process. "auto" takes NVENC where it
    opens and libx264 otherwise; "h264_nvenc" where it does not is a UsageError.
    With the job's torch `device`, "auto" asks only on a CUDA one (NVENC is an
    NVIDIA GPU's).
    """
    if requested not in ENCODER_CHOICES:
        raise UsageError(f"unknown encoder {requested!r} for --encoder: use one of {', '.join(ENCODER_CHOICES)}")
    if requested == "libx264":
        return EncoderChoice("libx264", "libx264 requested")
    if requested == "auto" and device is not None and not device.startswith("cuda"):
        return EncoderChoice("libx264", f"NVENC needs an NVIDIA GPU, this job runs on {device}")
    error = (nvenc_error or nvenc_open_error)()
    if error is None:
        return EncoderChoice("h264_nvenc", "h264_nvenc requested" if requested == "h264_nvenc" else "h264_nvenc opened")
    if requested == "h264_nvenc":
        raise UsageError(f"--encoder h264_nvenc does not work on this machine ({error}): use --encoder auto or libx264")
    return EncoderChoice("libx264", f"h264_nvenc did not open: {error}")


@functools.lru_cache(maxsize=1)
def nvenc_open_error() -> str | None:
    """None if the bundled ffmpeg encodes a few tiny frames with h264_nvenc, else its first error line.

    Cached: the answer holds for the whole process, and each probe starts ffmpeg.
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    command += ["-f", "lavfi", "-i", "color=c=gray:size=256x256:rate=25", "-frames:v", "5"]
    command += codec_arguments("h264_nvenc", crf=18, preset="medium") + ["-f", "null", "-"]
    try:
        result = subprocess.run(command, capture_output=True, check=False, timeout=NVENC_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"ffmpeg could not run: {error}"
    if result.returncode == 0:
        return None
    return first_ffmpeg_error(result.stderr.decode("utf-8", "replace"))


def codec_arguments(codec: str, crf: int, preset: str) -> list[str]:
    """ffmpeg's output options for `codec` at x264 quality `crf` (`preset` is x264's; NVENC uses its own)."""
    if codec == "libx264":
        # -threads 0 is ffmpeg's default (x264 picks its threads from the core count); said here so it stays.
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-threads", "0", "-pix_fmt", "yuv420p"]
    if codec == "h264_nvenc":
        # Constant quality: -cq plays -crf's part (0 would mean "unset" to NVENC, hence at least 1).
        return ["-c:v", "h264_nvenc", "-preset", NVENC_PRESET, "-tune", "hq", "-rc", "vbr",
                "-cq", str(max(crf, 1)), "-b:v", "0", "-pix_fmt", "yuv420p"]  # fmt: skip
    raise ValueError(f"unknown encoder {codec!r}: use one of {', '.join(ENCODERS)}")


def partial_path(target: str | os.PathLike, suffix: str | None = None) -> Path:
    """A fresh temporary path beside `target`: `.<name>.partial-<pid>-<random><suffix>`."""
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    return target.with_name(f".{target.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


class VideoEncoder:
    """Pipe RGB uint8 frames (H, W, 3) into H.264; the file appears at `path` on `finish()`.

    `codec` is "libx264" or "h264_nvenc" (see `choose_encoder`); `preset` is
    libx264's and is ignored by NVENC.

    Use it as a context manager: leaving the block normally finishes the file,
    leaving it with an exception (KeyboardInterrupt included) aborts it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float | Fraction | str = 25,
        crf: int = 18,
        preset: str = "medium",
        codec: str = "libx264",
    ):
        codec_options = codec_arguments(codec, crf, preset)
        self.path = Path(path)
        self.width = width
        self.height = height
        self.encoded_size = (width + width % 2, height + height % 2)
        self.frames_written = 0
        _check_output_folder(self.path)
        self.temp_path = partial_path(self.path)
        self._errors = tempfile.TemporaryFile()
        self._done = False
        self.process = subprocess.Popen(
            self._command(fps, codec_options),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._errors,
            start_new_session=True,  # Ctrl-C reaches us only; we stop ffmpeg ourselves (abort)
        )

    @property
    def temp_paths(self) -> list[Path]:
        """Files this encoder may have created and has not yet moved into place."""
        return [] if self._done else [self.temp_path]

    def write(self, frame: np.ndarray) -> None:
        if self._done:
            raise ValueError(f"the encoder of {self.path} is already finished or aborted")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}"
            )
        try:
            self.process.stdin.write(np.ascontiguousarray(frame).data)
        except OSError:  # BrokenPipeError and friends: ffmpeg has exited
            self.process.wait()
            error = self._failure()
            self.abort()
            raise error from None
        self.frames_written += 1

    def finish(self) -> Path:
        """Wait for ffmpeg to complete the file and move it to `path`."""
        if self._done:
            return self.path
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg is gone; its exit status says why
        try:
            returncode = self.process.wait()
            if returncode != 0 or not self.temp_path.exists():
                raise self._failure()
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._errors.close()
        return self.path

    close = finish

    def abort(self) -> None:
        """Stop ffmpeg and delete the temporary file; safe to call more than once."""
        stop_ffmpeg(self.process)
        self.temp_path.unlink(missing_ok=True)
        self._done = True
        self._errors.close()

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def _command(self, fps: float | Fraction | str, codec_options: list[str]) -> list[str]:
        rate = str(fps if isinstance(fps, (str, Fraction)) else Fraction(fps).limit_denominator(1001))
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-r", rate]
        command += ["-i", "pipe:0"]
        if self.encoded_size != (self.width, self.height):
            pad_width, pad_height = self.encoded_size
            command += ["-vf", f"pad={pad_width}:{pad_height},fillborders=right={pad_width - self.width}"
                        f":bottom={pad_height - self.height}:mode=smear"]  # fmt: skip
        command += codec_options
        command += ["-movflags", "+faststart", os.path.abspath(self.temp_path)]
        return command

    def _failure(self) -> OutputError:
        self._errors.seek(0)
        stderr = self._errors.read().decode("utf-8", "replace")
        return ffmpeg_output_error(stderr, self.process.returncode, self.path)


def stop_ffmpeg(process: subprocess.Popen) -> None:
    """Kill an ffmpeg that is still writing, reap it and close its stdin (safe to call more than once)."""
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdin and not process.stdin.closed:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass


def ffmpeg_output_error(stderr: str, returncode: int | None, path: Path) -> OutputError:
    """Turn a failed ffmpeg write into a one-line OutputError that says what to do."""
    if "No space left on device" in stderr:
        return OutputError(f"disk full while writing {path}: free some space or write elsewhere")
    if "File too large" in stderr or returncode == -signal.SIGXFSZ:  # EFBIG, or killed by the size limit
        return OutputError(f"disk full or file size limit reached while writing {path}: free space or write elsewhere")
    if "Permission denied" in stderr:
        return OutputError(f"cannot write {path}: permission denied; choose a folder you can write to")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return OutputError(f"ffmpeg was stopped by {name} while writing {path}; nothing was written")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit status {returncode}"
    return OutputError(f"ffmpeg could not write {path}: {reason}")


def _check_output_folder(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist: create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write to {folder}: permission denied; choose a folder you can write to")

"""Where a job's frames and speech go: a video file, an image sequence, or a stream on stdout.

    spec = choose_output(target, codec, stream_format, source)      # what is written; checked before any work
    sink = OutputWriter(spec, source, speech, duration, scratch)     # a FrameSink (pipeline/windows.py)

| output (-o)                         | container  | --codec (auto first)                       | speech       |
|-------------------------------------|------------|--------------------------------------------|--------------|
| out.mp4                             | MP4        | h264, hevc                                 | AAC          |
| out.mov                             | QuickTime  | the source's (h264, hevc, prores, dnxhr), else h264; prores4444 | PCM |
| out.mxf                             | MXF OP1a   | dnxhr, prores, prores4444                  | PCM, 48 kHz  |
| out.mkv                             | Matroska   | ffv1, h264, hevc, prores, prores4444       | FLAC         |
| out/frame_%05d.png, .tif, .exr, .dpx| image2     | the suffix's                               | a WAV inside |
| - (stdout)                          | --format nut (raw video) or matroska (ffv1) | as the container takes | PCM / FLAC |

One ffmpeg process takes the frames on its stdin and the speech file as a second
input, so the speech keeps its own rate and channels (cut, or padded with silence,
to the video's length). The frames arrive as RGB at their own precision
(media/pixels.py): H.264 stays 8-bit 4:2:0 as it always was; HEVC is 10-bit for
deeper sources; ProRes 10-bit; DNxHR HQ (8-bit) or HQX (10-bit); the lossless
outputs (FFV1, PNG, TIFF, DPX, EXR, raw) store the frames' RGB values as they are,
so every pixel the paste did not touch is the decoded source's, bit for bit.

Carried over from the source: the frame rate (the frames' own), the colour primaries
and transfer (and, for YUV codecs, the matrix the frames are encoded with: the
source's, or BT.709 for RGB sources; H.264 keeps the BT.601 matrix its frames were
always encoded with, now said in the stream), the sample aspect ratio, the rotation
(frames are turned back and the display matrix kept; an image sequence is written
upright) and the timecode (not in image sequences).

Nothing appears at the target until it is complete: a file is written under a
hidden `.<name>.partial-...` name beside it and renamed; a sequence is written
into a folder in the job's scratch folder and renamed onto its own folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from latentsync_cli.errors import OutputError, UsageError
from latentsync_cli.media.audio import SpeechStream
from latentsync_cli.media.encode import (
    DEFAULT_CRF,
    DEFAULT_X264_PRESET,
    codec_arguments,
    ffmpeg_output_error,
    stop_ffmpeg,
)
from latentsync_cli.media.pixels import DTYPE_WHITE
from latentsync_cli.media.sequences import SEQUENCE_SUFFIXES, check_output_pattern
from latentsync_cli.media.video import VideoInfo

STDOUT = Path("-")
CODEC_CHOICES = ("auto", "h264", "hevc", "prores", "prores4444", "dnxhr", "ffv1", "raw", "png", "tiff", "exr", "dpx")
STREAM_FORMATS = ("nut", "matroska")
DNXHR_MIN_SIZE = (256, 120)  # the dnxhd encoder refuses smaller frames
YUV_CODECS = ("h264", "hevc", "prores", "prores4444", "dnxhr")
SUBSAMPLED_CODECS = ("h264", "hevc", "prores", "dnxhr")  # 4:2:0 or 4:2:2: odd sizes are padded by one pixel
# ffmpeg's -colorspace names that are YUV matrices (a source in RGB, "gbr", is encoded with BT.709 instead).
YUV_MATRICES = ("bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "ycgco", "bt2020nc", "bt2020c")
# Codecs a source may be in that a MOV output writes again by default: ffmpeg's codec name -> ours.
SOURCE_CODECS = {"h264": "h264", "hevc": "hevc", "prores": "prores", "dnxhd": "dnxhr"}


@dataclass(frozen=True)
class Container:
    muxer: str  # ffmpeg's muxer
    codecs: tuple[str, ...]  # what --codec may be; the first is auto's
    audio: str  # how the speech goes in: aac, pcm, pcm48 (48 kHz), flac, wav (a file beside the frames)


CONTAINERS = {
    ".mp4": Container("mp4", ("h264", "hevc"), "aac"),
    ".mov": Container("mov", ("h264", "hevc", "prores", "prores4444", "dnxhr"), "pcm"),
    ".mxf": Container("mxf", ("dnxhr", "prores", "prores4444"), "pcm48"),
    ".mkv": Container("matroska", ("ffv1", "h264", "hevc", "prores", "prores4444"), "flac"),
}
STREAMS = {
    "nut": Container("nut", ("raw", "ffv1", "h264", "hevc", "prores", "prores4444"), "pcm"),
    "matroska": Container("matroska", ("ffv1", "h264", "hevc", "prores", "prores4444"), "flac"),
}
SEQUENCE_CODECS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".exr": "exr", ".dpx": "dpx"}
# The ffmpeg encoder of each codec (H.264's is libx264 or h264_nvenc: media/encode.choose_encoder).
FFMPEG_ENCODERS = {"hevc": "libx265", "prores": "prores_ks", "prores4444": "prores_ks", "dnxhr": "dnxhd",
                   "ffv1": "ffv1", "raw": "rawvideo", "png": "png", "tiff": "tiff", "exr": "exr", "dpx": "dpx"}
OUTPUT_NAMES = ", ".join([*CONTAINERS, "an image sequence (out/frame_%05d.exr)", "- (stdout)"])


@dataclass(frozen=True)
class OutputSpec:
    """What a job writes, and where."""

    kind: str  # "file", "sequence" or "stream" (stdout)
    path: Path | None  # the file, or the sequence's pattern; None for stdout
    muxer: str
    codec: str
    audio: str


@dataclass(frozen=True)
class EncodeSettings:
    """The lossy encoders' knobs (the job's --crf and H.264 encoder)."""

    crf: int = DEFAULT_CRF
    x264_preset: str = DEFAULT_X264_PRESET
    h264_encoder: str = "libx264"  # or "h264_nvenc" (media/encode.choose_encoder)


@dataclass(frozen=True)
class Speech:
    """The speech file whose audio stream the output carries, and what that stream is."""

    path: Path
    stream: SpeechStream


# --- choosing the output ----------------------------------------------------------------------


def output_container(target: Path, stream_format: str | None = None) -> Container | None:
    """The container `target` is written in (None: an image sequence); UsageError/OutputError when unknown."""
    if target == STDOUT:
        return STREAMS[stream_format or "nut"]
    if stream_format is not None:
        raise UsageError(f"--format {stream_format} is for -o - (stdout); {target} is written as its name says")
    if "%" in str(target):
        check_output_pattern(target)
        return None
    container = CONTAINERS.get(target.suffix.lower())
    if container is None:
        if target.suffix.lower() in SEQUENCE_SUFFIXES:
            raise OutputError(f"{target}: a single picture is not an output; write a sequence: out/frame_%05d{target.suffix}")
        raise OutputError(f"{target}: the output must be one of {OUTPUT_NAMES}; choose another name with -o")
    return container


def check_codec(target: Path, codec: str, stream_format: str | None = None) -> None:
    """UsageError when --codec does not go with the output (or --format with a file); nothing is probed."""
    container = output_container(target, stream_format)
    if codec == "auto":
        return
    if container is None:
        own = SEQUENCE_CODECS[target.suffix.lower()]
        if codec != own:
            raise UsageError(f"--codec {codec}: {target} is a {target.suffix} sequence; leave --codec out or use {own}")
    elif codec not in container.codecs:
        where = f"--format {container.muxer}" if target == STDOUT else f"a {target.suffix} file"
        raise UsageError(f"--codec {codec} does not go in {where}: use one of {', '.join(container.codecs)}")


def choose_output(target: Path, codec: str, stream_format: str | None, source: VideoInfo) -> OutputSpec:
    """The output's container and codec (auto: see the table above), checked against the source's frames."""
    check_codec(target, codec, stream_format)
    container = output_container(target, stream_format)
    if container is None:
        return OutputSpec("sequence", target, "image2", SEQUENCE_CODECS[target.suffix.lower()], "wav")
    if codec == "auto":
        codec = container.codecs[0]
        if container.muxer == "mov" and SOURCE_CODECS.get(source.codec) in container.codecs:
            codec = SOURCE_CODECS[source.codec]
            if codec == "prores" and "4444" in (source.details.profile or ""):
                codec = "prores4444"
    if codec == "dnxhr" and (source.width < DNXHR_MIN_SIZE[0] or source.height < DNXHR_MIN_SIZE[1]):
        raise UsageError(f"DNxHR needs frames of at least {DNXHR_MIN_SIZE[0]}x{DNXHR_MIN_SIZE[1]}; "
                         f"{source.path} is {source.width}x{source.height}: use --codec prores")  # fmt: skip
    kind = "stream" if target == STDOUT else "file"
    return OutputSpec(kind, None if kind == "stream" else target, container.muxer, codec, container.audio)


# --- the ffmpeg command -------------------------------------------------------------------------


def raw_input_format(spec: OutputSpec, samples: str) -> str:
    """The pixel format the frames are piped to ffmpeg in (float frames: planar floats for EXR, else 16-bit)."""
    if spec.codec == "exr":
        return "gbrpf32le"
    return "rgb24" if samples == "uint8" else "rgb48le"


def lossless_bits(source: VideoInfo, samples: str) -> int:
    """Bits a lossless output keeps: the source's own when its decoded frames are RGB of that depth (a d-bit
    sample comes back from 16 bits exactly), else all 16 (a 10-bit YUV source's RGB has 16 significant bits)."""
    if samples == "uint8":
        return 8
    details = source.details
    return details.bits if samples == "uint16" and details.is_rgb and details.bits in (10, 12) else 16


def video_arguments(spec: OutputSpec, source: VideoInfo, samples: str, settings: EncodeSettings) -> list[str]:
    """ffmpeg's output options for the video stream: codec, profile and pixel format."""
    deep = samples != "uint8"
    bits = lossless_bits(source, samples)
    codec = spec.codec
    if codec == "h264":
        return codec_arguments(settings.h264_encoder, settings.crf, settings.x264_preset)
    if codec == "hevc":
        tag = ["-tag:v", "hvc1"] if spec.muxer in ("mp4", "mov") else []  # what Apple's players look for
        return ["-c:v", "libx265", "-preset", settings.x264_preset, "-crf", str(settings.crf),
                "-x265-params", "log-level=error", "-pix_fmt", "yuv420p10le" if deep else "yuv420p", *tag]  # fmt: skip
    if codec in ("prores", "prores4444"):
        profile, pix_fmt = ("3", "yuv422p10le") if codec == "prores" else ("4", "yuv444p10le")  # 422 HQ, 4444
        return ["-c:v", "prores_ks", "-profile:v", profile, "-vendor", "apl0", "-pix_fmt", pix_fmt]
    if codec == "dnxhr":
        if deep and (source.details.is_rgb or source.details.pix_fmt.startswith("yuv444")):
            return ["-c:v", "dnxhd", "-profile:v", "dnxhr_444", "-pix_fmt", "yuv444p10le"]
        profile, pix_fmt = ("dnxhr_hqx", "yuv422p10le") if deep else ("dnxhr_hq", "yuv422p")
        return ["-c:v", "dnxhd", "-profile:v", profile, "-pix_fmt", pix_fmt]
    if codec == "ffv1":
        pix_fmt = "bgr0" if bits == 8 else f"gbrp{bits}le"
        return ["-c:v", "ffv1", "-level", "3", "-g", "1", "-slicecrc", "1", "-pix_fmt", pix_fmt]
    if codec == "exr":  # half-float sources stay half; integer and float ones are written as 32-bit floats
        precision = "half" if source.details.is_float and source.details.bits == 16 else "float"
        return ["-c:v", "exr", "-compression", "zip1", "-format", precision]
    if codec == "png":  # zlib level 1: 6.6x less CPU than the default level, files 20 % larger (1080p, measured)
        return ["-c:v", "png", "-compression_level", "1", "-pix_fmt", "rgb24" if bits == 8 else "rgb48be"]
    if codec == "dpx":  # 10 and 12 bits stay packed at their depth
        return ["-c:v", "dpx", "-pix_fmt", {8: "rgb24", 10: "gbrp10le", 12: "gbrp12le", 16: "rgb48le"}[bits]]
    return ["-c:v", "tiff" if codec == "tiff" else "rawvideo", "-pix_fmt", "rgb24" if bits == 8 else "rgb48le"]


def picture_arguments(spec: OutputSpec, source: VideoInfo) -> tuple[list[str], list[str]]:
    """What the source says about its pictures, as ffmpeg input options (of the piped frames) and output options."""
    details, colour = source.details, source.details.colour
    inputs = []
    if colour.primaries:
        inputs += ["-color_primaries", colour.primaries]
    if colour.transfer:
        inputs += ["-color_trc", colour.transfer]
    outputs = []
    if spec.codec == "h264" and colour.is_known:  # the BT.601 matrix H.264 output always had, now said
        outputs += ["-colorspace", "smpte170m", "-color_range", "tv"]
    elif spec.codec in YUV_CODECS and spec.codec != "h264":
        outputs += ["-colorspace", colour.matrix if colour.matrix in YUV_MATRICES else "bt709", "-color_range", "tv"]
    if source.rotation and spec.kind != "sequence":
        inputs += ["-noautorotate", "-display_rotation", str(source.rotation)]
    if details.timecode and spec.kind != "sequence":
        outputs += ["-timecode", details.timecode]
    return inputs, outputs


def video_filters(spec: OutputSpec, source: VideoInfo, width: int, height: int) -> list[str]:
    filters = []
    if spec.codec in SUBSAMPLED_CODECS and (width % 2 or height % 2):  # chroma needs even sizes: pad one pixel
        pad_width, pad_height = width + width % 2, height + height % 2
        filters.append(f"pad={pad_width}:{pad_height},fillborders=right={pad_width - width}"
                       f":bottom={pad_height - height}:mode=smear")  # fmt: skip
    if source.details.sample_aspect:
        filters.append("setsar={}/{}".format(*source.details.sample_aspect))
    return ["-vf", ",".join(filters)] if filters else []


def audio_arguments(how: str, speech: Speech, duration: Fraction, input_index: int = 1) -> list[str]:
    """The speech's stream `duration` long (cut, or padded with silence), coded as `how` says."""
    stream = speech.stream
    rate = 48000 if how == "pcm48" else stream.sample_rate
    samples = round(duration * rate)
    resample = "aresample=48000," if rate != stream.sample_rate else ""
    filters = f"asetpts=PTS-STARTPTS,{resample}atrim=end_sample={samples},apad=whole_len={samples}"
    arguments = ["-map", f"{input_index}:a:0", "-af", filters]
    if how == "aac":
        bitrate = {"mono": 128, "stereo": 192}.get(stream.channels, 320)
        return arguments + ["-c:a", "aac", "-b:a", f"{bitrate}k"]
    if how == "flac":
        return arguments + ["-c:a", "flac", "-sample_fmt", "s32" if stream.bits == 24 else "s16"]
    return arguments + ["-c:a", "pcm_s24le" if stream.bits == 24 else "pcm_s16le"]


def wav_name(pattern: Path) -> str:
    """The speech's file beside a sequence: frame_%05d.exr -> frame.wav (the folder's name when nothing is left)."""
    stem = pattern.stem.replace("%%", "%")
    for field in ("%0", "%d"):
        stem = stem.split(field)[0] if field in stem else stem
    stem = stem.rstrip("._- ") or pattern.parent.name
    return f"{stem}.wav"


# --- the sink -----------------------------------------------------------------------------------


class OutputWriter:
    """A job's output as a frame sink (pipeline/windows.FrameSink): frames go to ffmpeg as they come,
    with the speech; `finish` moves the result into place in one rename.

    ffmpeg starts on the first frame. A file is written into `scratch` (the job's
    claim on the output); a sequence into `scratch`/sequence, with the speech as a
    WAV beside the frames; `publish(made, target)` then puts either at the target
    (the job's check that it still holds the output, and the rename). A stream goes
    to `stream_fd` (stdout) as it is made. `abort` removes whatever was written.
    """

    def __init__(
        self, spec: OutputSpec, source: VideoInfo, speech: Speech, duration: Fraction, scratch: Path,
        settings: EncodeSettings = EncodeSettings(), stream_fd: int = 1,
        publish: Callable[[Path, Path], None] | None = None, comment: str | None = None,
    ):  # fmt: skip
        self.spec, self.source, self.speech, self.duration = spec, source, speech, Fraction(duration)
        self.settings, self.stream_fd, self.publish = settings, stream_fd, publish or move_into_place
        self.comment = comment  # the container's `comment` tag: what made it, when not LatentSync 1.6's weights
        self.turns = (-source.rotation // 90) % 4 if spec.kind != "sequence" else 0  # back to stored orientation
        self.sequence_folder = Path(scratch) / "sequence" if spec.kind == "sequence" else None
        self.temp_path = Path(scratch) / f"finished-{spec.path.name}" if spec.kind == "file" else None
        self.process: subprocess.Popen | None = None
        self._errors = None  # ffmpeg's stderr, once it runs
        self._input_format = ""

    def write(self, frame: np.ndarray) -> None:
        if self.process is None:
            self.process = self._start(frame)
        try:
            self.process.stdin.write(self._raw(frame))
        except OSError:  # BrokenPipeError and friends: ffmpeg has exited
            self.process.wait()
            error = self._failure()
            self.abort()
            raise error from None

    def end_of_frames(self) -> None:
        if self.process is None:
            return
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg is gone; its exit status says why
        if self.process.wait() != 0:
            error = self._failure()
            self.abort()
            raise error

    def finish(self) -> None:
        """Move the finished output into place (a stream is already out)."""
        if self.spec.kind == "file":
            self.publish(self.temp_path, self.spec.path)
        elif self.spec.kind == "sequence":
            self._write_wav(self.sequence_folder / wav_name(self.spec.path))
            self.publish(self.sequence_folder, self.spec.path.parent)
        self._close_errors()

    def abort(self) -> None:
        """Stop ffmpeg and remove what it wrote; safe to call more than once."""
        if self.process is not None:
            stop_ffmpeg(self.process)
        if self.temp_path is not None:
            self.temp_path.unlink(missing_ok=True)
        if self.sequence_folder is not None:
            shutil.rmtree(self.sequence_folder, ignore_errors=True)
        self._close_errors()

    def _close_errors(self) -> None:
        if self._errors is not None:
            self._errors.close()
            self._errors = None

    def _start(self, frame: np.ndarray) -> subprocess.Popen:
        self._input_format = raw_input_format(self.spec, str(frame.dtype))
        height, width = np.rot90(frame, self.turns).shape[:2]
        if self.sequence_folder is not None:
            self.sequence_folder.mkdir()
        stdout = self.stream_fd if self.spec.kind == "stream" else subprocess.DEVNULL
        self._errors = tempfile.TemporaryFile()
        return subprocess.Popen(
            self._command(str(frame.dtype), width, height), stdin=subprocess.PIPE, stdout=stdout,
            stderr=self._errors, start_new_session=True,  # Ctrl-C reaches us only; we stop ffmpeg ourselves
        )  # fmt: skip

    def _command(self, samples: str, width: int, height: int) -> list[str]:
        spec, source = self.spec, self.source
        picture_inputs, picture_outputs = picture_arguments(spec, source)
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        command += ["-f", "rawvideo", "-pix_fmt", self._input_format, "-s", f"{width}x{height}"]
        command += ["-r", str(source.rate), *picture_inputs, "-i", "pipe:0"]
        with_audio = spec.kind != "sequence"
        if with_audio:
            command += ["-i", os.path.abspath(self.speech.path)]
        command += ["-map", "0:v:0", *video_filters(spec, source, width, height)]
        command += video_arguments(spec, source, samples, self.settings) + picture_outputs
        if with_audio:
            command += audio_arguments(spec.audio, self.speech, self.duration)
        if self.comment and spec.kind != "sequence":
            command += ["-metadata", f"comment={self.comment}"]
        if spec.kind == "sequence":
            start = source.sequence.start if source.sequence is not None else 1
            return command + ["-start_number", str(start), "-f", "image2", str(self.sequence_folder / spec.path.name)]
        command += ["-f", spec.muxer]
        if spec.muxer in ("mp4", "mov"):
            command += ["-movflags", "+faststart"]
        return command + (["pipe:1"] if spec.kind == "stream" else [os.path.abspath(self.temp_path)])

    def _raw(self, frame: np.ndarray) -> memoryview:
        """The frame's bytes in the piped pixel format, turned back to the source's stored orientation."""
        if self.turns:
            frame = np.rot90(frame, self.turns)
        if self._input_format == "gbrpf32le":
            planes = frame.astype(np.float32) / np.float32(DTYPE_WHITE[frame.dtype])
            return np.ascontiguousarray(planes.transpose(2, 0, 1)[[1, 2, 0]], dtype="<f4").data
        if frame.dtype == np.float32:  # a float frame into an integer format: [0, 1] as 16 bits
            frame = (np.clip(frame, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        return np.ascontiguousarray(frame).data

    def _write_wav(self, path: Path) -> None:
        """The speech beside a sequence, as long as the frames (the frames' start is the speech's start)."""
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        command += ["-i", os.path.abspath(self.speech.path)]
        command += audio_arguments("wav", self.speech, self.duration, input_index=0) + [str(path)]
        result = subprocess.run(command, capture_output=True, check=False, start_new_session=True)
        if result.returncode != 0:
            raise ffmpeg_output_error(result.stderr.decode("utf-8", "replace"), result.returncode, path)

    def _failure(self) -> OutputError:
        self._errors.seek(0)
        stderr = self._errors.read().decode("utf-8", "replace")
        target = self.spec.path if self.spec.path is not None else "stdout"
        return ffmpeg_output_error(stderr, self.process.returncode, target)


def move_into_place(made: Path, target: Path) -> None:
    """Put a finished file or sequence folder at `target` in one rename (see replace_folder)."""
    if made.is_dir():
        replace_folder(made, target)
    else:
        os.replace(made, target)


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target` by renaming: onto an empty or missing folder at once; onto a full one
    (the job checked it holds only an older output) by moving that aside first and removing it after."""
    try:
        os.replace(new, target)
        return
    except OSError:
        if not target.is_dir():
            raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)

"""Read a face video, an image sequence or a still image as RGB frames at a constant rate.

Frames are streamed from the ffmpeg binary that ships with imageio-ffmpeg:
ffmpeg decodes, applies the rotation metadata, picks one frame per 1/rate s by
timestamp with its `fps` filter, converts to RGB at the source's precision
(rgb24 for 8-bit sources, rgb48le above, the stored floats of an OpenEXR; see
media/pixels.py), and writes raw frames to a pipe that we read one frame at a
time. No function here keeps the whole video in memory.

The rate is `VideoInfo.rate`: 25 fps as `probe_video` returns it (any source,
variable frame rates included, conformed by timestamp), or the source's own
constant rate once the job has checked it (`frame_timing`, `VideoInfo.at_rate`):
for a stream whose frames sit on that rate's grid the filter picks every stored
frame, in order, and nothing else.

The output length is set by the audio (`n_frames`). When the video is shorter,
`read_frames` continues it: "pingpong" plays it forward, backward, forward...
(the turn-around frame repeats, as upstream does), "loop" restarts it and
"freeze" holds the last frame. The backward passes decode the video again in
segments from the end (a fast seek, checked against a frame we already know,
with an exact decode from the start as the fallback), so memory stays bounded
by one segment instead of the whole clip.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

from latentsync_cli.constants import LOOP_MODES
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.media.audio import is_stream
from latentsync_cli.media.sequences import ImageSequence, find_sequence, is_sequence_pattern, parse_rate
from latentsync_cli.media.stream_details import StreamDetails, parse_stream_details

OUTPUT_FPS = 25
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Frames held at once by the backward passes (and by the in-memory copy of a
# short clip): about 40 frames at 1080p, 64 at 720p and below.
SEGMENT_BUDGET_BYTES = 256 * 2**20
MAX_SEGMENT_FRAMES = 64
# A segment decode seeks to the keyframe before this many seconds ahead of its
# first frame (any margin works in theory; this one absorbs imprecise seeks).
SEEK_MARGIN_S = 0.2
# Standard rates a constant-rate stream is checked against first (then its measured mean rate).
STANDARD_RATES = tuple(Fraction(n, d) for n, d in ((24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1),
                                                   (48, 1), (50, 1), (60000, 1001), (60, 1), (100, 1), (120, 1)))
# How frames come out of ffmpeg, by what they are held as (media/pixels.py): its pixel format and sample type.
RAW_FORMATS = {"uint8": ("rgb24", "u1"), "uint16": ("rgb48le", "<u2")}
FLOAT_FORMATS = {16: ("gbrpf16le", "<f2"), 32: ("gbrpf32le", "<f4")}  # planar G, B, R; half or single


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # as displayed, after rotation
    height: int
    fps: float  # the source's average frame rate (25.0 for a still image)
    duration_s: float  # 0.0 for a still image or when the container does not say
    frame_count: int  # frames at 25 fps, estimated from the duration (1 for a still image)
    rotation: int  # counter-clockwise degrees the picture is turned for display: 0, 90, 180 or 270
    is_image: bool
    has_audio: bool
    codec: str  # e.g. "h264", "hevc", "png"
    video_stream: int = 0  # which of the file's video streams is decoded (cover art is skipped)
    video_streams: int = 1  # how many it has that are not attached pictures
    stream_label: str = ""  # the decoded one as ffmpeg numbers it, e.g. "stream #0:1 (h264, 1280x720, default)"
    rate: Fraction = Fraction(OUTPUT_FPS)  # frames a second the readers deliver (frame_count counts them)
    details: StreamDetails = field(default_factory=StreamDetails)  # pixel format, colour, aspect, timecode
    sequence: ImageSequence | None = None  # an image sequence's files (path is then its pattern)

    @property
    def samples(self) -> str:
        """What a decoded frame's samples are held as: "uint8", "uint16" or "float32" (media/pixels.py)."""
        if self.is_image:
            return "uint8"
        if self.details.is_float:
            return "float32"
        return "uint16" if self.details.bits > 8 else "uint8"

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3 * np.dtype(self.samples).itemsize

    def at_rate(self, rate: Fraction, frame_count: int) -> VideoInfo:
        """The same video read at `rate` frames a second, `frame_count` of them."""
        return dataclasses.replace(self, rate=Fraction(rate), frame_count=frame_count)


@dataclass(frozen=True)
class FrameTiming:
    """How a video's frames are spaced, read from their timestamps (no decoding)."""

    count: int  # frames stored in the stream
    rate: Fraction | None  # their constant rate; None: variable (or a single frame)


def probe_video(path: str | os.PathLike, input_fps: Fraction | str | float = OUTPUT_FPS) -> VideoInfo:
    """Describe a video, an image sequence (a pattern such as frames/%05d.exr, or its folder; read at
    `input_fps`) or a still image; InputError if it cannot be used."""
    path = Path(path)
    if is_sequence_pattern(path) or path.is_dir():
        return _probe_sequence(find_sequence(path), parse_rate(input_fps))
    _check_input_file(path)
    if is_image_path(path):
        image = _read_image(path)
        height, width = image.shape[:2]
        codec = path.suffix.lower().lstrip(".").replace("jpg", "jpeg")
        return VideoInfo(path, width, height, float(OUTPUT_FPS), 0.0, 1, 0, True, False, codec)
    return _parse_ffmpeg_probe(_ffmpeg_probe_text(path), path)


def read_frames(video: VideoInfo | str | os.PathLike, n_frames: int, loop: str = "pingpong") -> Iterator[np.ndarray]:
    """Yield exactly `n_frames` RGB frames (H, W, 3) of `video` at its `rate` (a path, read at 25 fps, or
    what `probe_video` found, which is then not probed again), held as `VideoInfo.samples` says.

    A longer video is cut to its first `n_frames`; a shorter one is continued
    as `loop` says; a still image is repeated. Every video frame is a new writable
    array that the caller owns; a still's frames are one read-only array, the same
    each time (copy it to change it). Bad input raises here, before the first frame.
    """
    if loop not in LOOP_MODES:
        raise UsageError(f"unknown loop mode {loop!r}: use one of {', '.join(LOOP_MODES)}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    info = video if isinstance(video, VideoInfo) else probe_video(video)
    if info.is_image:
        return _repeated_image(_read_image(info.path), n_frames)
    return _continued_video(info, n_frames, loop)


def decode_frames(info: VideoInfo, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames [start, stop) of a video at `info.rate`, decoding from the start.

    This is the reference decode: the forward pass of `read_frames` and the
    exact fallback of its backward segments are both this function.
    """
    filters = f"fps={info.rate}:start_time=0"
    if start > 0 or stop is not None:
        end = "" if stop is None else f":end_frame={stop}"
        filters += f",trim=start_frame={start}{end}"
    frame_limit = None if stop is None else stop - start
    yield from _pipe_frames(_decode_command(info, filters, frame_limit=frame_limit), info)


def source_timestamps(path: str | os.PathLike | VideoInfo) -> list[float]:
    """Presentation times (s) of the video stream's frames as stored, sorted (no decoding)."""
    ticks, time_base = _stored_ticks(path if isinstance(path, VideoInfo) else probe_video(path))
    return [float(tick * time_base) for tick in ticks]


def frame_timing(info: VideoInfo) -> FrameTiming:
    """How many frames the stream stores and, when they are evenly spaced, at which exact rate.

    A stream is taken as constant-rate when every frame lies within one tick of its
    time base of first + n / rate, for one of the standard rates (23.976 = 24000/1001,
    ...) or the stream's mean rate: so a 23.976 fps Matroska, whose 1 ms ticks round
    each time, is constant, and a phone's variable-rate clip is not.
    """
    if info.is_image:
        return FrameTiming(1, None)
    if info.sequence is not None:
        return FrameTiming(info.sequence.count, info.sequence.rate)
    ticks, time_base = _stored_ticks(info)
    if len(ticks) < 2:
        return FrameTiming(len(ticks), None)
    span = (ticks[-1] - ticks[0]) * time_base
    candidates = list(STANDARD_RATES)
    if span > 0:
        candidates.append(Fraction(len(ticks) - 1) / span)
        candidates.append(candidates[-1].limit_denominator(1001))
    for rate in candidates:
        frame_ticks = 1 / (rate * time_base)  # one frame, in ticks
        if all(abs(tick - ticks[0] - number * frame_ticks) <= 1 for number, tick in enumerate(ticks)):
            return FrameTiming(len(ticks), rate)
    return FrameTiming(len(ticks), None)


def _stored_ticks(info: VideoInfo) -> tuple[list[int], Fraction]:
    """The video frames' presentation times as stored, sorted, in ticks of the stream's time base."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
               *_input_arguments(info), "-map", f"0:v:{info.video_stream}", "-c:v", "copy", "-f", "framecrc",
               "pipe:1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InputError(f"cannot read timestamps of {info.path}: {_ffmpeg_reason(result.stderr)}")
    time_base = Fraction(1)
    ticks = []
    for line in result.stdout.splitlines():
        if line.startswith("#tb 0:"):
            time_base = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            stream, _dts, pts = (part.strip() for part in line.split(",")[:3])
            if stream == "0" and pts.lstrip("-").isdigit():
                ticks.append(int(pts))
    return sorted(ticks), time_base


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# --- continuing a short video ------------------------------------------------


def _repeated_image(image: np.ndarray, n_frames: int) -> Iterator[np.ndarray]:
    # One read-only array for every frame: a 4K still would otherwise cost 25 MB per frame in flight.
    image.setflags(write=False)
    for _ in range(n_frames):
        yield image


def _continued_video(info: VideoInfo, n_frames: int, loop: str) -> Iterator[np.ndarray]:
    if n_frames == 0:
        return
    frame_bytes = info.frame_bytes
    # A short clip that will need continuing is cheaper to hold than to decode
    # again, as long as it fits in the budget (the length is only an estimate).
    kept: list[np.ndarray] | None = [] if info.frame_count < n_frames else None
    count = 0
    pending = None  # held back one step so that we can keep our own copy of the last frame
    for frame in decode_frames(info, 0, n_frames):
        if pending is not None:
            yield pending
        if kept is not None and (len(kept) + 1) * frame_bytes <= SEGMENT_BUDGET_BYTES:
            kept.append(frame.copy())
        else:
            kept = None
        pending = frame
        count += 1
    if pending is None:
        raise InputError(f"no frames could be decoded from {info.path}: the video is empty or damaged")
    last = pending.copy() if count < n_frames else pending
    yield pending
    if count == n_frames:
        return

    later = _kept_passes(kept, loop) if kept is not None else _decoded_passes(info, count, last, loop)
    for _ in range(n_frames - count):
        yield next(later)
    later.close()


def _kept_passes(frames: list[np.ndarray], loop: str) -> Iterator[np.ndarray]:
    """The frames after the first forward pass, from an in-memory copy of the clip."""
    backward = True
    while True:
        if loop == "freeze":
            order = [frames[-1]]
        elif loop == "loop" or not backward:
            order = frames
        else:
            order = frames[::-1]
        for frame in order:
            yield frame.copy()
        backward = not backward


def _decoded_passes(info: VideoInfo, count: int, last: np.ndarray, loop: str) -> Iterator[np.ndarray]:
    """The frames after the first forward pass, decoding the video again each pass."""
    backward = True
    while True:
        if loop == "freeze":
            yield last.copy()
        elif loop == "loop" or not backward:
            yield from decode_frames(info, 0, count)
        else:
            yield from _backward_frames(info, count, last)
        backward = not backward


def _backward_frames(info: VideoInfo, count: int, last: np.ndarray) -> Iterator[np.ndarray]:
    """Frames count-1 ... 0, decoded a segment at a time from the end.

    Each segment is decoded one frame past its end, and that frame must equal
    one we already have (the last frame, then the first frame of the segment
    after it); the seek is also checked to deliver every frame. If either check
    fails, that segment is decoded exactly from the start instead.
    """
    segment = _segment_length(info)
    known = last
    stop = count
    while stop > 0:
        start = max(0, stop - segment)
        end = min(stop + 1, count)  # frame end-1 is `known`
        frames = _seek_segment(info, start, end)
        if len(frames) != end - start or not np.array_equal(frames[-1], known):
            frames = list(decode_frames(info, start, end))
        known = frames[0].copy()  # the caller may change the frames we yield
        for frame in reversed(frames[: stop - start]):
            yield frame
        del frames  # let this segment go before the next one is decoded
        stop = start


def _seek_segment(info: VideoInfo, start: int, end: int) -> list[np.ndarray]:
    """Frames [start, end) by seeking near `start` with timestamps kept absolute."""
    seek_s = float(start / info.rate) - SEEK_MARGIN_S
    if seek_s <= 0:
        return list(decode_frames(info, start, end))
    # Without start_time the fps filter begins at the first decoded frame, so a
    # seek that lands too late yields fewer frames (caught by the caller).
    filters = f"fps={info.rate},trim=start_pts={start}:end_pts={end}"
    command = _decode_command(info, filters, frame_limit=end - start, seek_s=seek_s)
    return list(_pipe_frames(command, info))


def _segment_length(info: VideoInfo) -> int:
    return max(1, min(MAX_SEGMENT_FRAMES, SEGMENT_BUDGET_BYTES // info.frame_bytes))


# --- running ffmpeg ----------------------------------------------------------


def _decode_command(info: VideoInfo, filters: str, frame_limit: int | None = None, seek_s: float = 0.0) -> list[str]:
    # -copyts -start_at_zero keeps timestamps relative to the file's start even
    # after a seek, so the fps filter picks the same source frame for each
    # 25 fps slot in a full decode and in a segment decode.
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    command += ["-copyts", "-start_at_zero"]
    if seek_s > 0:
        command += ["-noaccurate_seek", "-ss", f"{seek_s:.6f}"]
    command += [*_input_arguments(info), "-map", f"0:v:{info.video_stream}"]
    command += ["-an", "-sn", "-dn", "-vf", filters, "-fps_mode", "passthrough"]
    if frame_limit is not None:
        command += ["-frames:v", str(frame_limit)]
    command += ["-pix_fmt", _raw_format(info)[0], "-f", "rawvideo", "pipe:1"]
    return command


def _input_arguments(info: VideoInfo) -> list[str]:
    """ffmpeg's arguments that open the video: a file, or an image sequence at its rate."""
    if info.sequence is None:
        return ["-i", os.path.abspath(info.path)]
    sequence = info.sequence
    return ["-f", "image2", "-framerate", str(sequence.rate), "-start_number", str(sequence.start),
            "-i", str(sequence.pattern)]  # fmt: skip


def _raw_format(info: VideoInfo) -> tuple[str, str]:
    """The pixel format ffmpeg writes the frames in, and its numpy sample type."""
    if info.samples == "float32":
        return FLOAT_FORMATS[16 if info.details.bits == 16 else 32]
    return RAW_FORMATS[info.samples]


def _frame_of(buffer: bytearray, info: VideoInfo) -> np.ndarray:
    """One raw frame as an (H, W, 3) RGB array that the caller owns (float planes G, B, R reordered)."""
    pix_fmt, sample = _raw_format(info)
    samples = np.frombuffer(buffer, dtype=sample)
    if info.samples != "float32":
        return samples.reshape(info.height, info.width, 3).view(info.samples)
    green, blue, red = samples.reshape(3, info.height, info.width)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def _pipe_frames(command: list[str], info: VideoInfo) -> Iterator[np.ndarray]:
    """Run an ffmpeg decode and yield its raw frames; kill it if the caller stops early."""
    pix_fmt, sample = _raw_format(info)
    frame_bytes = info.width * info.height * 3 * np.dtype(sample).itemsize
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,  # Ctrl-C reaches us only; closing the generator stops ffmpeg
        )
        count = 0
        try:
            while True:
                buffer = bytearray(frame_bytes)
                if _read_exactly(process.stdout, buffer) < frame_bytes:
                    break  # end of stream (a partial frame at the end is dropped)
                count += 1
                yield _frame_of(buffer, info)
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
            process.wait()
        if process.returncode != 0:
            errors.seek(0)
            reason = first_ffmpeg_error(errors.read().decode("utf-8", "replace"))
            raise InputError(
                f"cannot decode {info.path} after {count} frames: the file is damaged or truncated ({reason})"
            )


def _read_exactly(stream, buffer: bytearray) -> int:
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return filled


def _ffmpeg_probe_text(path: Path) -> str:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.path.abspath(path)]
    # ffmpeg exits 1 here ("At least one output file must be specified"): the description is on stderr.
    result = subprocess.run(command, capture_output=True, check=False)
    return result.stderr.decode("utf-8", "replace")


# --- parsing ffmpeg's description of the input --------------------------------

_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_STREAM = re.compile(r"Stream #0:\d+\S*: Video: (\w+)")
_SIZE = re.compile(r", (\d+)x(\d+)(?=[ ,\[]|$)")
_FPS = re.compile(r", (\d+(?:\.\d+)?)(k?) (?:fps|tbr)")
_ROTATION = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)


def _parse_ffmpeg_probe(text: str, path: Path) -> VideoInfo:
    if "Input #0" not in text:
        raise InputError(
            f"cannot read {path} as a video ({_ffmpeg_reason(text)}): "
            "use a video ffmpeg can open (MP4, MOV, MKV, WebM) or a PNG/JPEG/WebP image"
        )
    streams = _stream_sections(text)
    video = [section for section in streams if _VIDEO_STREAM.search(section[0])]
    moving = [number for number, section in enumerate(video) if "attached pic" not in section[0]]
    if not moving:
        raise InputError(f"{path} has no video stream: pass a video or an image of the face")
    # The stream the file marks as its default, as players take it (a first stream may be a still, say).
    chosen = next((number for number in moving if "(default)" in video[number][0]), moving[0])
    header, *details = video[chosen]
    codec = _VIDEO_STREAM.search(header).group(1)
    size = _SIZE.search(header)
    if size is None:
        raise InputError(f"cannot read the frame size of {path}: the video stream looks damaged")
    width, height = int(size.group(1)), int(size.group(2))
    fps = 0.0
    for match in _FPS.finditer(header):  # "fps" comes before "tbr"; the first one found wins
        fps = float(match.group(1)) * (1000 if match.group(2) else 1)
        break
    rotation = 0
    for line in details:
        if match := _ROTATION.search(line):
            rotation = int(round(float(match.group(1)) / 90.0)) * 90 % 360
    if rotation in (90, 270):  # ffmpeg turns the picture upright while decoding
        width, height = height, width
    duration_s = 0.0
    if match := _DURATION.search(text):
        hours, minutes, seconds = match.groups()
        duration_s = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    has_audio = any(": Audio: " in section[0] for section in streams)
    frame_count = int(round(duration_s * OUTPUT_FPS))
    number = re.match(r"Stream #0:(\d+)", header).group(1)
    label = f"stream #0:{number} ({codec}, {width}x{height}{', default' if '(default)' in header else ''})"
    details = parse_stream_details(header, text)
    return VideoInfo(path, width, height, fps, duration_s, frame_count, rotation, False, has_audio, codec, chosen,
                     len(moving), label, details=details)  # fmt: skip


def _probe_sequence(sequence: ImageSequence, rate: Fraction) -> VideoInfo:
    """An image sequence as a video at `rate`: ffmpeg describes its first picture."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-f", "image2",
               "-framerate", str(rate), "-start_number", str(sequence.start), "-i", str(sequence.pattern)]  # fmt: skip
    text = subprocess.run(command, capture_output=True, check=False).stderr.decode("utf-8", "replace")
    info = _parse_ffmpeg_probe(text, sequence.pattern)
    duration_s = float(sequence.count / rate)
    return dataclasses.replace(info, fps=float(rate), duration_s=duration_s, frame_count=round(duration_s * OUTPUT_FPS),
                               sequence=dataclasses.replace(sequence, rate=rate))  # fmt: skip


def _stream_sections(text: str) -> list[list[str]]:
    """Each `Stream #0:...` line with the indented lines under it."""
    sections: list[list[str]] = []
    indent = 0
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("Stream #0:"):
            sections.append([stripped])
            indent = len(line) - len(stripped)
        elif sections and len(line) - len(stripped) > indent and stripped:
            sections[-1].append(stripped)
        elif sections:
            indent = -1  # the stream's block is over; nothing more attaches to it
    return sections


def _ffmpeg_reason(stderr: str) -> str:
    """Why ffmpeg could not open a file: its last specific line, without the `[component @ 0x..]` prefix."""
    component_lines, other_lines = [], []
    for line in stderr.splitlines():
        match = re.match(r"\s*\[[^\]]*\]\s*(.+)", line)
        if match and not match.group(1).startswith("Error opening input"):
            component_lines.append(match.group(1).strip())
        elif line.strip() and not line.startswith("At least one output file"):
            other_lines.append(line.strip())
    lines = component_lines or other_lines  # the generic summary lines come last
    return lines[-1] if lines else "ffmpeg gave no reason"


def first_ffmpeg_error(stderr: str) -> str:
    """Why a decode failed: the first error line (later ones are consequences), without prefixes."""
    for line in stderr.splitlines():
        message = re.sub(r"^(\s*\[[^\]]*\])+\s*", "", line).strip()
        if message:
            return message
    return "ffmpeg gave no reason"


# --- files and images ----------------------------------------------------------


def _check_input_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"input not found: {path} (check the path)")
    if path.is_dir():
        raise InputError(f"{path} is a folder: pass a video or image file")
    if is_stream(path):
        raise InputError(
            f"{path} is a {file_kind(path)}, not a file: the video is read several times (probed, searched for "
            "a face, decoded again for each loop pass); save it to a file first"
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): export or download it again")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")


def file_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words (a named pipe, a device, ...)."""
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return kind
    return "stream of this process (a /dev or /proc path)" if stat.S_ISREG(mode) else "special file"


def _read_image(path: Path) -> np.ndarray:
    """A still image as RGB uint8: alpha composited over black, grey to RGB, 16-bit to 8-bit."""
    data = np.fromfile(path, dtype=np.uint8)  # cv2.imread cannot open some non-ASCII paths on Windows
    # IMREAD_UNCHANGED keeps alpha and 16-bit samples but ignores the EXIF
    # orientation; JPEG has no alpha, so it is read the way that applies it.
    is_jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(data, flags)
    if image is None or image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"cannot read image {path}: the file is damaged or not an 8/16-bit PNG/JPEG/WebP image")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:  # grey + alpha is read as BGRA too
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

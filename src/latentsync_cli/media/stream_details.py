"""What a plate's video stream says about its pictures, read from ffmpeg's description of the input.

    Video: prores (HQ) (apch / 0x68637061), yuv422p10le(tv, bt709, progressive), 1920x1080, SAR 1:1 DAR 16:9, ...
        timecode        : 01:00:10:05

From such lines: the pixel format (and from it the bit depth, RGB or YUV, float or
integer), the colour range, matrix, primaries and transfer, the sample aspect ratio
and the timecode. The outputs carry them over (media/outputs.py); the decoder picks
the precision frames are held at from the pixel format (media/pixels.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ffmpeg prints "pix_fmt(details)": the range (tv/pc), then "matrix/primaries/transfer" (one name when the
# three are equal), then the field order; "10 bpc" when the coded depth differs from the format's.
_PIXEL_FORMAT = re.compile(r"Video: [^,]*?, ([a-z0-9_]+)(?:\(([^)]*)\))?")
_PROFILE = re.compile(r"Video: \w+ \(([^)/]+)\)")  # "prores (HQ)", "dnxhd (DNXHR HQX)", "h264 (High)"
_SAMPLE_ASPECT = re.compile(r"SAR (\d+):(\d+)")
_TIMECODE = re.compile(r"^\s*timecode\s*:\s*(\d\d:\d\d:\d\d[:;.]\d\d)\s*$", re.MULTILINE)
_FIELD_ORDERS = ("progressive", "top first", "bottom first", "top coded first (swapped)",
                 "bottom coded first (swapped)")  # fmt: skip
_UNKNOWN = ("unknown", "reserved", "unspecified")
_FLOAT_DEPTHS = {"f16": 16, "f32": 32}


@dataclass(frozen=True)
class Colour:
    """ffmpeg's names, as its -color_range, -colorspace, -color_primaries and -color_trc take them (None: not said)."""

    range: str | None = None  # "tv" (limited) or "pc" (full)
    matrix: str | None = None  # e.g. "bt709", "bt470bg", "bt2020nc", "gbr"
    primaries: str | None = None  # e.g. "bt709", "bt2020"
    transfer: str | None = None  # e.g. "bt709", "iec61966-2-1", "smpte2084", "linear"

    @property
    def is_known(self) -> bool:
        return any(value is not None for value in (self.range, self.matrix, self.primaries, self.transfer))


@dataclass(frozen=True)
class StreamDetails:
    pix_fmt: str = "yuv420p"  # as ffmpeg decodes the stream
    colour: Colour = field(default_factory=Colour)
    sample_aspect: tuple[int, int] | None = None  # (num, den) when not square; None: square or not said
    timecode: str | None = None  # "HH:MM:SS:FF" (";" for drop frame)
    profile: str | None = None  # the codec's profile as ffmpeg names it: "HQ", "4444", "DNXHR HQX", "Main 10"

    @property
    def bits(self) -> int:
        return pixel_bits(self.pix_fmt)

    @property
    def is_float(self) -> bool:
        return is_float_format(self.pix_fmt)

    @property
    def is_rgb(self) -> bool:
        return self.pix_fmt.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr"))


def pixel_bits(pix_fmt: str) -> int:
    """Bits per sample of an ffmpeg pixel format: yuv420p 8, yuv422p10le 10, rgb48le 16, rgba64be 16, gbrpf16le 16."""
    for marker, bits in _FLOAT_DEPTHS.items():
        if marker in pix_fmt:
            return bits
    if pix_fmt.startswith(("rgb48", "bgr48", "rgba64", "bgra64")):
        return 16
    match = re.search(r"(\d+)(?:le|be|msble|msbbe)$", pix_fmt)  # yuv422p10le, gbrp12le, gray16le, p010le
    if match and 9 <= int(match.group(1)) <= 16:
        return int(match.group(1))
    return 8


def is_float_format(pix_fmt: str) -> bool:
    return any(marker in pix_fmt for marker in _FLOAT_DEPTHS)


def parse_stream_details(header: str, report: str) -> StreamDetails:
    """The details of the video stream whose `Stream #0:N: Video: ...` line is `header`; the timecode may be
    in the stream's metadata or the file's (`report` is ffmpeg's whole description)."""
    match = _PIXEL_FORMAT.search(header)
    pix_fmt = match.group(1) if match else "yuv420p"
    colour = _colour(match.group(2) or "") if match else Colour()
    sample_aspect = None
    if aspect := _SAMPLE_ASPECT.search(header):
        numerator, denominator = int(aspect.group(1)), int(aspect.group(2))
        if numerator > 0 and denominator > 0 and numerator != denominator:
            sample_aspect = (numerator, denominator)
    timecode = _TIMECODE.search(report)
    profile = _PROFILE.search(header)
    return StreamDetails(pix_fmt, colour, sample_aspect, timecode.group(1) if timecode else None,
                         profile.group(1).strip() if profile else None)  # fmt: skip


def _colour(details: str) -> Colour:
    range_, names = None, (None, None, None)
    for token in (part.strip() for part in details.split(",")):
        if token in ("tv", "pc"):
            range_ = token
        elif "/" in token:
            names = tuple(token.split("/", 2)) + (None,) * (2 - token.count("/"))
        elif token and token not in _FIELD_ORDERS and not token.endswith("bpc"):
            names = (token, token, token)
    matrix, primaries, transfer = (None if name in _UNKNOWN else name for name in names)
    return Colour(range_, matrix, primaries, transfer)

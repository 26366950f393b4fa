"""Image sequences: numbered pictures in one folder, read as a video and written as one.

A sequence is named by a printf-style pattern, as ffmpeg and compositing tools name
it: `shot/frame_%05d.exr` is frame_01001.exr, frame_01002.exr, ... An input may also
be the folder itself, when every picture in it belongs to one sequence. The numbers
must follow one another without a gap (ffmpeg's image2 reader stops at the first
missing file; a gap is refused here instead of cutting the plate short).

An output sequence is the folder that holds it: it is written into a temporary
folder and renamed into place when complete (media/outputs.py), so it appears whole
or not at all.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from latentsync_cli.errors import InputError, UsageError

SEQUENCE_SUFFIXES = (".png", ".tif", ".tiff", ".exr", ".dpx")
_NUMBER_FIELD = re.compile(r"%(0?)(\d*)d")
_NUMBERED_NAME = re.compile(r"^(.*?)(\d+)(\.[A-Za-z0-9]+)$")  # the last digits before the suffix
# Rates that a plate's "23.976" or "29.97" means exactly.
NTSC_RATES = tuple(Fraction(rate * 1000, 1001) for rate in (24, 30, 48, 60, 120))


@dataclass(frozen=True)
class ImageSequence:
    pattern: Path  # absolute, printf-style: /shots/a/frame_%05d.exr
    start: int  # the first frame's number
    count: int  # frames numbered start, start + 1, ... without a gap
    rate: Fraction = Fraction(25)  # frames a second it is read at (--input-fps)

    @property
    def folder(self) -> Path:
        return self.pattern.parent

    @property
    def suffix(self) -> str:
        return self.pattern.suffix.lower()

    def frame_path(self, number: int) -> Path:
        return self.pattern.parent / (self.pattern.name % number)


def is_sequence_pattern(path: str | os.PathLike) -> bool:
    """Whether `path` names a sequence by its numbered files (one %d or %0Nd field in the file name)."""
    return len(_NUMBER_FIELD.findall(Path(path).name)) == 1


def check_output_pattern(pattern: Path) -> None:
    """UsageError unless `pattern` is a sequence pattern this tool writes: one %0Nd in the name, a known suffix."""
    if "%" in str(pattern.parent):
        raise UsageError(f"{pattern}: the frame number goes in the file name, not the folder (out/frame_%05d.exr)")
    if pattern.suffix.lower() not in SEQUENCE_SUFFIXES:
        raise UsageError(
            f"{pattern}: an image sequence is written as {', '.join(SEQUENCE_SUFFIXES)}; e.g. out/frame_%05d.exr"
        )
    if len(_NUMBER_FIELD.findall(pattern.name)) != 1 or _NUMBER_FIELD.sub("", pattern.name).replace("%%", "").count("%"):
        raise UsageError(f"{pattern}: only one %d field may be in the name, e.g. frame_%05d (%% for a percent sign)")


def find_sequence(path: Path) -> ImageSequence:
    """The sequence a pattern or a folder names; InputError when there is none, or a frame is missing."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        return _sequence_in_folder(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{path}: the folder of the image sequence does not exist; check the path")
    numbers = _numbers_matching(path, os.listdir(folder))
    if not numbers:
        raise InputError(f"{path}: no file of the image sequence is there; check the pattern (e.g. frame_%05d.png)")
    return _contiguous(path, numbers)


def parse_rate(text: str | float | int, flag: str = "--input-fps") -> Fraction:
    """A frame rate from "25", "23.976", "29.97" or "30000/1001"; the NTSC decimals mean their exact fractions."""
    try:
        rate = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{flag} {text!r}: give frames a second, e.g. 24, 23.976 or 30000/1001") from None
    if rate <= 0 or rate > 1000:
        raise UsageError(f"{flag} {text!r}: give frames a second between 0 and 1000")
    for ntsc in NTSC_RATES:
        if abs(rate - ntsc) < Fraction(1, 100) and rate != round(rate):
            return ntsc
    return rate


def _sequence_in_folder(folder: Path) -> ImageSequence:
    groups: dict[tuple[str, str], list[str]] = {}  # (prefix, suffix) -> the numbers as written
    for name in sorted(os.listdir(folder)):
        match = _NUMBERED_NAME.match(name)
        if match and match.group(3).lower() in SEQUENCE_SUFFIXES and not name.startswith("."):
            prefix, digits, suffix = match.groups()
            groups.setdefault((prefix, suffix), []).append(digits)
    if not groups:
        raise InputError(
            f"{folder}: is a folder without numbered {'/'.join(SEQUENCE_SUFFIXES)} pictures; "
            "pass a video, an image, or an image sequence (frames/%05d.png)"
        )
    if len(groups) > 1:
        found = ", ".join(f"{prefix}#{suffix}" for prefix, suffix in sorted(groups))
        raise InputError(f"{folder}: holds more than one image sequence ({found}); pass the one to use as a pattern")
    [((prefix, suffix), numbers)] = groups.items()
    widths = {len(digits) for digits in numbers}
    if len(widths) == 1:
        field = f"%0{widths.pop()}d"
    elif not any(digits.startswith("0") and len(digits) > 1 for digits in numbers):
        field = "%d"
    else:
        raise InputError(f"{folder}: the frame numbers are padded to different widths; pass the sequence's pattern")
    return _contiguous(folder / f"{prefix.replace('%', '%%')}{field}{suffix}", sorted(int(n) for n in numbers))


def _numbers_matching(pattern: Path, names: list[str]) -> list[int]:
    field = _NUMBER_FIELD.search(pattern.name)
    width = int(field.group(2) or 0)
    digits = rf"(\d{{{width},}})" if field.group(1) else r"([1-9]\d*|0)"
    before = re.escape(pattern.name[: field.start()].replace("%%", "%"))
    after = re.escape(pattern.name[field.end() :].replace("%%", "%"))
    expression = re.compile(f"^{before}{digits}{after}$")
    return sorted(int(match.group(1)) for name in names if (match := expression.match(name)))


def _contiguous(pattern: Path, numbers: list[int]) -> ImageSequence:
    start = numbers[0]
    present = set(numbers)
    count = 0
    while start + count in present:
        count += 1
    sequence = ImageSequence(pattern, start, count)
    if count < len(present):
        missing = sequence.frame_path(start + count).name
        raise InputError(
            f"{pattern}: frame {missing} is missing (the sequence has frames after it); render it or rename the files"
        )
    return sequence

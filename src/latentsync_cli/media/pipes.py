"""A video read from stdin (`latentsync sync - voice.wav`): copied to a file first.

A job reads its video more than once (the probe, the first frame, the face check,
the face track, the decode), and a pipe can be read only once, so the stream is
spooled into the job's scratch folder as it arrives: it costs as much disk there
as the stream is long, and is removed with the folder when the job ends.

Streamable containers work (NUT, Matroska, MPEG-TS, a fragmented or "faststart"
MP4). An MP4/MOV whose index (the moov box) comes after its data is refused as
soon as its first boxes are read: such a file is made by seeking back at the end,
which no writer into a pipe can do, so it only reaches stdin from a file that
should be passed by name, or converted to a streamable container.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from latentsync_cli.errors import InputError

STDIN = Path("-")
SPOOL_NAME = "stdin-video"
CHUNK_BYTES = 1 << 20
HEAD_BYTES = 4 << 20  # the first boxes of an MP4 are looked at within this much of the stream
QUICKTIME_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
NOT_STREAMABLE = (
    "stdin: this MP4/MOV has its index (moov) after its data, so it cannot be read from a pipe; "
    "stream a container that can, e.g. `ffmpeg -i plate.mov -f nut - | latentsync sync - ...`, "
    "or pass the file by name"
)


def spool_stdin(folder: Path, input_fd: int = 0) -> Path:
    """Copy the stream on `input_fd` into `folder`; InputError for an empty or unstreamable one."""
    path = Path(folder) / SPOOL_NAME
    head = bytearray()
    decided = False
    with os.fdopen(input_fd, "rb", closefd=False) as source, open(path, "wb") as spool:
        while chunk := source.read(CHUNK_BYTES):
            spool.write(chunk)
            if not decided:
                head += chunk
                verdict = moov_first(head)
                if verdict is False:
                    raise InputError(NOT_STREAMABLE)
                decided = verdict is not None or len(head) >= HEAD_BYTES
    if not head:
        raise InputError("stdin: no data came in; pipe a video into `latentsync sync - ...` (e.g. ffmpeg ... -f nut -)")
    return path


def moov_first(head: bytes) -> bool | None:
    """For an MP4/MOV stream: True if its index (moov) or a fragment (moof) comes before its data (mdat),
    False if the data comes first, None while undecided (or for any other container: always None)."""
    if len(head) < 8 or head[4:8] not in QUICKTIME_FIRST_BOXES:
        return None
    position = 0
    while position + 8 <= len(head):
        size, kind = struct.unpack(">I4s", head[position : position + 8])
        if kind in (b"moov", b"moof"):
            return True
        if kind == b"mdat":
            return False
        if size == 1:  # a 64-bit size follows the type
            if position + 16 > len(head):
                return None
            size = struct.unpack(">Q", head[position + 8 : position + 16])[0]
        if size < 8:
            return None  # a box to the end of the stream, or not a box at all
        position += size
    return None

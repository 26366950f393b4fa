"""Output paths: the default name, and the checks that refuse an output before any work is done.

An output is a file (out.mp4, .mov, .mxf, .mkv), an image sequence named by its
pattern (out/frame_%05d.exr: the folder is what appears, whole or not at all), or
"-" (stdout). A job claims the file or the sequence's folder (jobs/scratch.py).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from latentsync_cli.errors import OutputError
from latentsync_cli.jobs.scratch import SCRATCH_PREFIX
from latentsync_cli.media.outputs import STDOUT, output_container, wav_name
from latentsync_cli.media.sequences import find_sequence, is_sequence_pattern

KEPT_SUFFIXES = (".mov", ".mxf")  # plates whose default output keeps their container (and so their codec)


def default_output_path(video: Path) -> Path:
    """Beside the video: <stem>_synced.mp4 (.mov and .mxf plates keep theirs); a sequence gives a sequence
    in <folder>_synced/ with the same file names."""
    if is_sequence_pattern(video) or video.is_dir():
        pattern = find_sequence(video).pattern
        return pattern.parent.with_name(f"{pattern.parent.name}_synced") / pattern.name
    suffix = video.suffix.lower() if video.suffix.lower() in KEPT_SUFFIXES else ".mp4"
    return video.with_name(f"{video.stem}_synced{suffix}")


def claimed_path(output: Path) -> Path | None:
    """What appears at the end, and what a job claims: the file, the sequence's folder; None for stdout."""
    if output == STDOUT:
        return None
    return output.parent if is_sequence_pattern(output) else output


def output_exists(output: Path) -> bool:
    """Whether a finished output is there: the file, or a sequence folder with files in it."""
    claimed = claimed_path(output)
    if claimed is None:
        return False
    if is_sequence_pattern(output):
        return claimed.is_dir() and any(claimed.iterdir())
    return claimed.is_file()


def check_output_path(output: Path, inputs: list[Path], overwrite: bool, stream_format: str | None = None) -> Path:
    """Refuse an output we must not write, before any work is done. Returns the absolute path (or "-")."""
    if output == STDOUT:
        output_container(output, stream_format)
        return STDOUT
    output = output.expanduser().absolute()
    for source in inputs:
        if source is not None and claimed_path(output).resolve() == Path(source).expanduser().resolve():
            raise OutputError(f"{output}: the output path is the same as an input; choose another with -o")
    output_container(output, stream_format)  # a name we cannot write: OutputError (or UsageError) now
    if is_sequence_pattern(output):
        check_sequence_folder(output, overwrite)
        folder = output.parent.parent
    else:
        if output.is_dir():
            raise OutputError(f"{output}: is a folder; give a file name such as {output / 'out.mp4'}")
        if output.exists() and not overwrite:
            raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
        folder = output.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: the output folder does not exist; create it first")
    # Try it rather than trust permission bits: root ignores them, read-only mounts do not.
    try:
        handle, probe = tempfile.mkstemp(prefix=SCRATCH_PREFIX, dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{folder}: the output folder is not writable ({error.strerror}); choose another with -o"
        ) from None
    return output


def check_sequence_folder(pattern: Path, overwrite: bool) -> None:
    """A sequence's folder is replaced as a whole: it must be new or empty, or (with --overwrite) hold only
    an earlier output of this pattern, so that no other file is ever removed."""
    folder = pattern.parent
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(f"{folder}: is a file; the frames of {pattern.name} go in a folder of that name")
    present = sorted(os.listdir(folder))
    if not present:
        return
    if not overwrite:
        raise OutputError(f"{folder}: already holds files; pass --overwrite to replace the sequence, or choose another")
    ours = _sequence_name(pattern)
    foreign = [name for name in present if not ours.match(name) and name != wav_name(pattern)]
    if foreign:
        raise OutputError(f"{folder}: holds {foreign[0]}, which is not part of {pattern.name}; choose another folder")


def _sequence_name(pattern: Path) -> re.Pattern:
    """The names the sequence's frames may have."""
    before, _, after = re.split(r"(%0?\d*d)", pattern.name.replace("%%", "\0"), maxsplit=1)
    escape = lambda text: re.escape(text.replace("\0", "%"))  # noqa: E731
    return re.compile(rf"^{escape(before)}\d+{escape(after)}$")

"""Output paths: the default name, and the checks that refuse an output before any work is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from latentsync_cli.errors import OutputError
from latentsync_cli.jobs.scratch import SCRATCH_PREFIX


def default_output_path(video: Path) -> Path:
    return video.with_name(f"{video.stem}_synced.mp4")


def check_output_path(output: Path, inputs: list[Path], overwrite: bool) -> Path:
    """Refuse an output we must not write, before any work is done. Returns the absolute path."""
    output = output.expanduser().absolute()
    for source in inputs:
        if source is not None and output.resolve() == Path(source).expanduser().resolve():
            raise OutputError(f"{output}: the output path is the same as an input; choose another with -o")
    if output.suffix.lower() != ".mp4":
        raise OutputError(f"{output}: the output must be an .mp4 file; choose another name with -o")
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

"""Every job's private scratch folder beside its output, and the removal of what killed jobs left behind.

The folder is on the output's filesystem, so the final rename into place is
atomic; it records its owner (host and PID), so that a later job can remove it
when its owner was killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRATCH_PREFIX = ".latentsync-job-"
OWNER_FILE = "owner.json"  # inside a scratch folder: which process on which host made it


@contextmanager
def job_scratch_dir(output_path: Path) -> Iterator[Path]:
    """A private temporary folder beside `output_path`, removed when the job ends however it ends.

    The folder records its owner (host and PID), so that a later job can remove
    it if this one is killed with SIGKILL (see `remove_stale_scratch`).
    """
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=output_path.parent))
    try:
        (folder / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove scratch folders (and partial outputs) in `folder` left by jobs of this host that no longer run.

    Only what provably belongs to a dead process goes: a scratch folder whose
    owner file names this host and a PID that is not alive, and a
    `.<name>.partial-<pid>-...` file whose PID is not alive. Folders of other
    hosts (a shared network folder) and of live jobs are left alone.
    """
    removed = []
    host = socket.gethostname()
    for scratch in folder.glob(SCRATCH_PREFIX + "*"):
        owner = read_json(scratch / OWNER_FILE)
        if scratch.is_dir() and owner.get("host") == host and not _pid_alive(owner.get("pid")):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    for partial in folder.glob(".*.partial-*"):
        pid = partial.name.rpartition(".partial-")[2].split("-")[0]
        if partial.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown owner: assume it is running
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

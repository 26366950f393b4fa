"""Every job's private scratch folder beside its output, and the removal of what killed jobs left behind.

The folder is on the output's filesystem, so the final rename into place is
atomic; it records its owner (host and PID), so that a later job can remove it
when its owner was killed with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latentsync_cli.errors import OutputError

SCRATCH_PREFIX = ".latentsync-job-"
OWNER_FILE = "owner.json"  # inside a scratch folder: which process on which host made it


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def job_scratch_dir(output_path: Path) -> Iterator[Path]:
    """The job's private folder beside `output_path`, and its claim on that output, until the job ends.

    The folder is named after the output and made with one mkdir, which is
    atomic: while a job runs, a second job for the same output is refused at
    once (OutputError). The folder records its owner (host and PID), so that a
    later job can take over the claim of one killed with SIGKILL (see also
    `remove_stale_scratch`). It is removed however the job ends.
    """
    folder = output_path.parent / f"{SCRATCH_PREFIX}{output_path.name}"
    _claim(folder, output_path)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _claim(folder: Path, output_path: Path) -> None:
    host = socket.gethostname()
    for _attempt in range(2):
        try:
            folder.mkdir()
            break
        except FileExistsError:
            owner = read_json(folder / OWNER_FILE)
            if owner.get("host") == host and not pid_alive(owner.get("pid")):
                shutil.rmtree(folder, ignore_errors=True)  # the claim of a killed job
                continue
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', 'an unknown host')}"
            raise OutputError(
                f"{output_path}: another job ({who}) is writing this output; wait for it or choose another -o"
            ) from None
    try:
        (folder / OWNER_FILE).write_text(json.dumps({"host": host, "pid": os.getpid()}))
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise write_error(folder.parent, error) from None


def write_error(folder: Path, error: OSError) -> OutputError:
    """An OSError while writing in `folder` as the one-line error a user can act on (disk full: exit 6)."""
    if error.errno in DISK_FULL_ERRNOS:
        return OutputError(f"{folder}: disk full ({error.strerror}); free some space or choose another folder")
    return OutputError(f"{folder}: cannot write there ({error.strerror}); choose another folder")


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
        if scratch.is_dir() and owner.get("host") == host and not pid_alive(owner.get("pid")):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    for partial in folder.glob(".*.partial-*"):
        pid = partial.name.rpartition(".partial-")[2].split("-")[0]
        if partial.is_file() and pid.isdigit() and not pid_alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def pid_alive(pid) -> bool:
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

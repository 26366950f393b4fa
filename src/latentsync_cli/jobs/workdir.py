"""Resume: finished windows kept on disk in a --work-dir, so that a killed job restarts where it stopped."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from latentsync_cli.errors import OutputError
from latentsync_cli.jobs.scratch import pid_alive, read_json, write_error


def job_fingerprint(inputs: list[Path], settings: Mapping, extra: Mapping) -> str:
    """A digest of what determines the generated faces: input files, settings, weights.

    Input files are identified by path, size and modification time (hashing a
    multi-GB video on every start would cost more than it saves).
    """
    digest = hashlib.sha256()
    for source in inputs:
        if source is None:
            continue
        stat = Path(source).stat()
        digest.update(f"{Path(source).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    digest.update(json.dumps(dict(extra), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class WorkDirStore:
    """Finished windows on disk, so that a killed job resumes from the first unfinished one.

    Layout: `<work_dir>/job.json` (the job's fingerprint) and one
    `window-00000.npz` per finished window. Each file is written under a
    temporary name and renamed, so a kill mid-write leaves no half window. A
    work dir holding another job's windows (different fingerprint) is cleared.
    One job at a time uses a work dir: it holds an exclusive lock on
    `<work_dir>/lock` until `close()` (or until the process dies).
    """

    def __init__(self, work_dir: Path, fingerprint: str):
        self.work_dir = Path(work_dir)
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.work_dir / "lock", "a")
        except OSError as error:
            raise OutputError(f"{self.work_dir}: cannot use it as --work-dir ({error.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise OutputError(
                f"{self.work_dir}: another running job uses this --work-dir; give each job its own"
            ) from None
        self.resumed_windows = 0
        remove_dead_temporaries(self.work_dir)
        manifest = self.work_dir / "job.json"
        previous = read_json(manifest)
        if previous.get("fingerprint") != fingerprint:
            for stale in self.work_dir.glob("window-*.npz"):
                stale.unlink()
            _write_atomic(manifest, json.dumps({"fingerprint": fingerprint}).encode())

    def _path(self, index: int) -> Path:
        return self.work_dir / f"window-{index:05d}.npz"

    def has(self, index: int) -> bool:
        return self._path(index).exists()

    def load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self._path(index)) as data:
            arrays = {name: data[name] for name in data.files}
        self.resumed_windows += 1
        return arrays

    def save(self, index: int, **arrays: np.ndarray) -> None:
        temporary = self._path(index).with_suffix(f".tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self._path(index))
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise write_error(self.work_dir, error) from None

    def finished_count(self) -> int:
        return len(list(self.work_dir.glob("window-*.npz")))

    def close(self) -> None:
        """Release the work dir for the next job (the finished windows stay)."""
        self._lock.close()

    def __enter__(self) -> WorkDirStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_error(path.parent, error) from None


def remove_dead_temporaries(folder: Path) -> None:
    """Remove `*.tmp-<pid>` files whose writer no longer runs (a job killed mid-write, or a full disk)."""
    for temporary in folder.glob("*.tmp-*"):
        pid = temporary.name.rpartition(".tmp-")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            temporary.unlink(missing_ok=True)

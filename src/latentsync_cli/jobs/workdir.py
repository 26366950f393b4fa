"""Resume: finished windows kept on disk in a --work-dir, so that a killed job restarts where it stopped."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from latentsync_cli.errors import OutputError
from latentsync_cli.face.track import FaceTrack
from latentsync_cli.jobs.scratch import pid_alive, read_json, write_error
from latentsync_cli.jobs.shards import Shard


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
    """Finished windows on disk, so that a killed job resumes and shards of one job share their work.

    Layout: `<work_dir>/job.json` (the job's fingerprint), `track.npz` (the face
    track, written once), one `window-00000.npz` per finished window, and lock
    files. Each file is written under a temporary name and renamed, so a kill
    mid-write leaves no half file. Every process using the work dir holds a
    shared lock on `lock` until `close()` (or until it dies); a work dir holding
    another job's windows (different fingerprint) is cleared only by a process
    that can take that lock alone, and refused otherwise. A shard also holds
    `shard-K-of-N.lock`, so the same shard never runs twice at once.
    """

    def __init__(self, work_dir: Path, fingerprint: str, shard: Shard | None = None):
        self.work_dir = Path(work_dir)
        self._locks = [self._open_lock("lock")]
        try:
            self._enter(fingerprint)
            if shard is not None:
                self._take_shard(shard)
        except BaseException:
            self.close()
            raise

    def _open_lock(self, name: str):
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            return open(self.work_dir / name, "a")  # noqa: SIM115 - held until close()
        except OSError as error:
            raise OutputError(f"{self.work_dir}: cannot use it as --work-dir ({error.strerror})") from None

    def _enter(self, fingerprint: str) -> None:
        """Join the job whose windows are here, or clear another job's windows when no one else uses them."""
        lock, manifest = self._locks[0], self.work_dir / "job.json"
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # in use: join it if it is the same job
            fcntl.flock(lock, fcntl.LOCK_SH)
            if read_json(manifest).get("fingerprint") != fingerprint:
                raise OutputError(
                    f"{self.work_dir}: a running job with other inputs or settings uses this --work-dir; "
                    "give each job its own"
                ) from None
            return
        remove_dead_temporaries(self.work_dir)
        if read_json(manifest).get("fingerprint") != fingerprint:
            for stale in [*self.work_dir.glob("window-*.npz"), self.track_path]:
                stale.unlink(missing_ok=True)
            _write_atomic(manifest, json.dumps({"fingerprint": fingerprint}).encode())
        fcntl.flock(lock, fcntl.LOCK_SH)  # let the job's other shards in

    def _take_shard(self, shard: Shard) -> None:
        lock = self._open_lock(f"shard-{shard.number}-of-{shard.count}.lock")
        self._locks.append(lock)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"{self.work_dir}: shard {shard} of this job is already running") from None

    # --- the face track ------------------------------------------------------------------------

    @property
    def track_path(self) -> Path:
        return self.work_dir / "track.npz"

    def face_track(self, compute: Callable[[], FaceTrack]) -> FaceTrack:
        """The stored face track; the first process to ask computes it while the others wait for it."""
        if not self.track_path.exists():
            with open(self.work_dir / "track.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not self.track_path.exists():
                    try:
                        compute().save(self.track_path)
                    except OSError as error:
                        raise write_error(self.work_dir, error) from None
        return FaceTrack.load(self.track_path)

    # --- windows -------------------------------------------------------------------------------

    def _path(self, index: int) -> Path:
        return self.work_dir / f"window-{index:05d}.npz"

    def has(self, index: int) -> bool:
        return self._path(index).exists()

    def missing(self, indices: range) -> list[int]:
        return [index for index in indices if not self.has(index)]

    def load_faces(self, index: int) -> np.ndarray:
        """A finished window's faces, float16 (n, 3, R, R)."""
        with np.load(self._path(index)) as data:
            return data["faces"].astype(np.float16)

    def load_flags(self, index: int) -> np.ndarray:
        """Which frames of a finished window have a face, bool (F,) (read without its faces)."""
        with np.load(self._path(index)) as data:
            return data["flags"].astype(bool)

    def save_window(self, index: int, faces: np.ndarray, flags: np.ndarray) -> None:
        """Keep a window the models just made (the pipeline's on_generated)."""
        self.save(index, faces=faces, flags=flags)

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
        """Release the work dir for other jobs (the finished windows stay)."""
        for lock in self._locks:
            lock.close()
        self._locks = []

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

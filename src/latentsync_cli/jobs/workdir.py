"""Resume: finished windows kept on disk in a --work-dir, so that a killed job restarts where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from latentsync_cli.errors import OutputError
from latentsync_cli.face.track import FaceTrack
from latentsync_cli.jobs.lease import Lease, LeaseBusy, LeaseTerms, acquire, live_leases, new_token, shared_now
from latentsync_cli.jobs.scratch import read_json, write_error
from latentsync_cli.jobs.shards import Shard

USERS = "users"  # one lease per process using the work dir
WAIT_POLL_S = 0.2  # how often a process waiting for a lease (joining, the face track) looks again


def job_fingerprint(inputs: list[Path], settings: Mapping, extra: Mapping) -> str:
    """A digest of what determines the generated faces: input files, settings, weights.

    Input files are identified by path, size and modification time (hashing a
    multi-GB video on every start would cost more than it saves); a named pipe
    by its path alone (its mtime moves whenever it is written): the caller adds
    a digest of what was read from it to `extra`.
    """
    digest = hashlib.sha256()
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if not source.is_file():
            digest.update(f"{source.resolve()}|stream\n".encode())
            continue
        stat = source.stat()
        digest.update(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    digest.update(json.dumps(dict(extra), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class WorkDirStore:
    """Finished windows on disk, so that a killed job resumes and shards of one job share their work.

    Layout: `<work_dir>/job.json` (the job's fingerprint), `track.npz` (the face
    track, written once), one `window-00000.npz` per finished window, and leases
    (jobs/lease.py), which hold across hosts and containers and expire when
    their job dies:

        users/<token>/       one per process using the work dir, with its fingerprint;
                             its temporary files are written inside it, so they go with it
        shard-K-of-N.lease   while shard K/N runs: the same shard never runs twice at once
        enter.lease          while a process joins (a moment): joining and clearing take turns
        track.lease          while the face track is computed: the others wait for it

    A work dir holding another job's windows (different fingerprint) is cleared
    only when no live user of another fingerprint is in it, and refused while one is.
    """

    def __init__(
        self,
        work_dir: Path,
        fingerprint: str,
        shard: Shard | None = None,
        terms: LeaseTerms | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.work_dir = Path(work_dir)
        self.terms = terms or LeaseTerms()
        self.warn = warn
        self._leases: list[Lease] = []
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / USERS).mkdir(exist_ok=True)
        except OSError as error:
            raise OutputError(f"{self.work_dir}: cannot use it as --work-dir ({error.strerror})") from None
        try:
            self.user = self._enter(fingerprint)
            if shard is not None:
                self._take_shard(shard)
        except BaseException:
            self.close()
            raise

    def _acquire(self, name: str, what: str, info: dict | None = None) -> Lease:
        try:
            lease = acquire(self.work_dir / name, self.terms, f"{self.work_dir}: {what}", self.warn, info)
        except OSError as error:
            raise write_error(self.work_dir, error) from None
        self._leases.append(lease)
        return lease

    def _wait_for(self, name: str, what: str) -> Lease:
        """A lease that is held only for moments or until a task is done: wait for it (or for it to go stale)."""
        while True:
            try:
                return self._acquire(name, what)
            except LeaseBusy:
                time.sleep(WAIT_POLL_S)

    def _release(self, lease: Lease) -> None:
        self._leases.remove(lease)
        lease.release()

    def _enter(self, fingerprint: str) -> Lease:
        """Join the job whose windows are here, or clear another job's windows when no one else uses them."""
        entering = self._wait_for("enter.lease", "joining")
        try:
            user = self._acquire(f"{USERS}/{new_token()}", "user", {"fingerprint": fingerprint})
            others = [
                state for folder, state in live_leases(self.work_dir / USERS, self.terms).items()
                if folder != user.folder
            ]  # fmt: skip
            if any(state.info.get("fingerprint") != fingerprint for state in others):
                raise OutputError(
                    f"{self.work_dir}: a running job with other inputs or settings uses this --work-dir; "
                    "give each job its own"
                )
            manifest = self.work_dir / "job.json"
            if read_json(manifest).get("fingerprint") != fingerprint:
                if not others:
                    remove_old_temporaries(self.work_dir, self.terms)
                    for stale in [*self.work_dir.glob("window-*.npz"), self.track_path]:
                        stale.unlink(missing_ok=True)
                self._write_atomic(manifest, json.dumps({"fingerprint": fingerprint}).encode(), user)
        finally:
            self._release(entering)
        return user

    def _take_shard(self, shard: Shard) -> None:
        try:
            self._acquire(f"shard-{shard.number}-of-{shard.count}.lease", f"shard {shard}")
        except LeaseBusy as busy:
            raise OutputError(
                f"{self.work_dir}: shard {shard} of this job is already running ({busy.state.holder}, "
                f"heartbeat {busy.state.age_s:.0f} s ago)"
            ) from None

    # --- the face track ------------------------------------------------------------------------

    @property
    def track_path(self) -> Path:
        return self.work_dir / "track.npz"

    def face_track(self, compute: Callable[[], FaceTrack]) -> FaceTrack:
        """The stored face track; the first process to ask computes it while the others wait for it."""
        if not self.track_path.exists():
            computing = self._wait_for("track.lease", "the face track")
            try:
                if not self.track_path.exists():
                    made = self.user.folder / self.track_path.name  # with this process's lease until it is moved
                    compute().save(made)
                    os.replace(made, self.track_path)
            except OSError as error:
                raise write_error(self.work_dir, error) from None
            finally:
                self._release(computing)
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
        temporary = self.user.folder / self._path(index).name  # goes with this process's lease if it dies
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
        """Release the work dir for other jobs (the finished windows stay; this process's leases go)."""
        while self._leases:
            self._release(self._leases[-1])

    def __enter__(self) -> WorkDirStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write_atomic(self, path: Path, data: bytes, user: Lease) -> None:
        temporary = user.folder / path.name
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise write_error(path.parent, error) from None


def remove_old_temporaries(folder: Path, terms: LeaseTerms) -> None:
    """Remove `*.tmp-<pid>` files of versions before leases that nothing has written to for a lease's time."""
    temporaries = list(folder.glob("*.tmp-*"))
    now = shared_now(folder) if temporaries else 0.0
    for temporary in temporaries:
        try:
            if now - temporary.stat().st_mtime >= terms.seconds:
                temporary.unlink(missing_ok=True)
        except FileNotFoundError:
            continue

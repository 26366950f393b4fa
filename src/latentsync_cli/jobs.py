"""Running jobs unattended: scratch folders, signals, output checks, batch manifests, resume.

A render farm runs thousands of `latentsync sync` jobs. Each one must either
leave a correct file at its output path or fail fast with nothing there, never
share scratch space with a neighbour, and never redo finished work:

- `job_scratch_dir` gives every job its own temporary folder beside its output
  (same filesystem, so the final rename is atomic), removed on any exit.
- `stop_on_signals` turns SIGINT/SIGTERM into an exception, so every `finally`
  (temporary files, child processes) runs before the process exits 130/143.
- `check_output_path` refuses outputs that exist, equal an input, or cannot be
  written, before any work is done.
- `read_batch` parses a CSV or JSON-lines manifest into jobs.
- `WorkDirStore` keeps each finished window on disk so that a killed job,
  started again with the same arguments, resumes where it stopped.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentsync_cli.errors import ExitCode, Interrupted, OutputError, UsageError

SCRATCH_PREFIX = ".latentsync-job-"
OWNER_FILE = "owner.json"  # inside a scratch folder: which process on which host made it


# --- scratch space ---------------------------------------------------------------------------


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
        owner = _read_json(scratch / OWNER_FILE)
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


# --- signals ---------------------------------------------------------------------------------

_SIGNAL_EXIT_CODES = {
    signal.SIGINT: ("SIGINT", ExitCode.INTERRUPTED),
    signal.SIGTERM: ("SIGTERM", ExitCode.TERMINATED),
}


class _Stop(BaseException):
    """Carries `Interrupted` out of the job. A BaseException, so that `except Exception` blocks on the way
    (e.g. "this checkpoint is corrupt" around a torch.load) cannot turn a signal into another error."""

    def __init__(self, error: Interrupted):
        super().__init__(error.message)
        self.error = error


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise `Interrupted` from the block on SIGINT/SIGTERM, after every `finally` in it has run.

    The exception carries exit code 130 (SIGINT) or 143 (SIGTERM). Only the main
    thread can install handlers; elsewhere this is a no-op.
    """

    def on_signal(signum, _frame):
        name, code = _SIGNAL_EXIT_CODES[signal.Signals(signum)]
        # A second signal while cleaning up must not interrupt the cleanup itself.
        for sig in _SIGNAL_EXIT_CODES:
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop(Interrupted(name, code))

    try:
        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNAL_EXIT_CODES}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except _Stop as stop:
        raise stop.error from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- output checks ---------------------------------------------------------------------------


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


# --- batch manifests -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """One row of a batch manifest: paths resolved, other columns kept as `sync` options."""

    number: int  # 1-based row number, for messages
    video: Path
    audio: Path | None
    output: Path | None
    options: dict[str, str] = field(default_factory=dict)


PATH_COLUMNS = ("video", "audio", "output")


def read_batch(path: Path, allowed_options: set[str]) -> list[BatchJob]:
    """Read a `.csv` (header row) or `.jsonl` (one object per line) batch manifest.

    Relative paths are taken from the manifest's folder, and a relative output may
    not leave that folder (`../x.mp4` is refused). Unknown columns are an error for
    the whole file, since they would otherwise be silently ignored on every row.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: batch file not found; give a .csv or .jsonl file")
    rows = _read_rows(path)
    if not rows:
        raise UsageError(f"{path}: the batch file has no jobs")
    base = path.parent.absolute()
    jobs = []
    for number, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(PATH_COLUMNS) - allowed_options)
        if unknown:
            raise UsageError(
                f"{path}: row {number}: unknown column {unknown[0]!r}; "
                f"allowed: {', '.join(PATH_COLUMNS + tuple(sorted(allowed_options)))}"
            )
        if not row.get("video"):
            raise UsageError(f"{path}: row {number}: the 'video' column is empty")
        output = _batch_path(row.get("output"), base)
        if output is not None and not Path(row["output"]).expanduser().is_absolute():
            if not _is_inside(output, base):
                raise UsageError(f"{path}: row {number}: output {row['output']!r} leaves the batch folder {base}")
        options = {k: str(v) for k, v in row.items() if k not in PATH_COLUMNS and v not in (None, "")}
        jobs.append(
            BatchJob(
                number=number,
                video=_batch_path(row["video"], base),
                audio=_batch_path(row.get("audio"), base),
                output=output,
                options=options,
            )
        )
    return jobs


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read the batch file ({error})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise UsageError(f"{path}: the CSV header must name a 'video' column (and optionally audio, output)")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}: line {line_number}: each line must be a JSON object")
            rows.append(row)
        return rows
    raise UsageError(f"{path}: unknown batch file type {suffix!r}; use .csv or .jsonl")


def _batch_path(value, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    candidate = Path(str(value)).expanduser()
    return Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))


def _is_inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


# --- resume ----------------------------------------------------------------------------------


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
            self._lock = open(self.work_dir / "lock", "a")  # noqa: SIM115 - held until close()
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
        manifest = self.work_dir / "job.json"
        previous = _read_json(manifest)
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
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path(index))

    def finished_count(self) -> int:
        return len(list(self.work_dir.glob("window-*.npz")))

    def close(self) -> None:
        """Release the work dir for the next job (the finished windows stay)."""
        self._lock.close()

    def __enter__(self) -> WorkDirStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)

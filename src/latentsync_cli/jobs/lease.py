"""Leases: claims in a shared folder that end with their job, even when its machine dies.

    lease = acquire(folder / ".latentsync-job-out.mp4", LeaseTerms(), "out.mp4", warn)  # LeaseBusy if held
    ...                                       # a daemon thread touches the lease every few seconds
    lease.release()                           # the folder and what the job put in it are removed

A lease is a folder holding `lease.json`: a token made for this one claim (not
a host name and PID, which repeat across containers and reboots) and, for
messages, the host and PID that made it. The folder is built under a private
name and renamed into place, so it appears whole or not at all, and a second
job's rename fails while it exists. Its holder touches `lease.json` every
`heartbeat_s` seconds; a lease whose heartbeat is older than `seconds` is stale,
whichever host or container made it, and the next job that wants it moves it
aside, checks that what it moved is the lease it judged, removes it and takes
its place. Nothing of a lease with a live heartbeat is ever removed.

One shortcut: a lease also records which process made it, as the kernel knows
it (boot id, PID namespace, PID, start time). A job that sees a lease made in
its own boot and PID namespace by a process that no longer runs knows that
job is dead and takes over at once, so a job killed on this machine does not
block the command run again after it. A host name and a PID alone prove
nothing: containers share host names, and PID namespaces repeat PIDs.

A lease's age is read on the shared folder's clock: the heartbeat's mtime
against the mtime of a file made in the same folder just then, so machines
whose clocks disagree still agree on an age (on NFS both are the server's).

What the shared folder must provide: renaming a folder is atomic and fails when
the target is a folder that is not empty; mtimes move when a file is touched;
opening a file shows what other machines wrote before they closed it (NFS's
close-to-open consistency). A machine that froze for longer than the lease (a
suspended VM) finds its lease taken over; its job then stops before it writes
its output (`Lease.still_held`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from latentsync_cli.errors import UsageError

LEASE_FILE = "lease.json"
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0  # at most; a short lease gets four beats per lease
LEASE_SECONDS_VARIABLE = "LATENTSYNC_LEASE_SECONDS"
MISSED_BEATS_TO_LOSE = 2  # a lease file found missing this many beats in a row: the lease was taken over


@dataclass(frozen=True)
class LeaseTerms:
    """How long a silent lease stays valid, and how often a holder proves it is alive."""

    seconds: float = DEFAULT_LEASE_SECONDS

    @property
    def heartbeat_s(self) -> float:
        return min(HEARTBEAT_SECONDS, self.seconds / 4)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> LeaseTerms:
        """The terms `LATENTSYNC_LEASE_SECONDS` sets (default 60); UsageError for a value that is not a number >= 1."""
        environ = os.environ if environ is None else environ
        text = environ.get(LEASE_SECONDS_VARIABLE, "").strip()
        if not text:
            return cls()
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= MIN_LEASE_SECONDS):
            raise UsageError(
                f"{LEASE_SECONDS_VARIABLE}={text!r}: give the lease in seconds, a number of at least "
                f"{MIN_LEASE_SECONDS:g} (default {DEFAULT_LEASE_SECONDS:g})"
            )
        return cls(seconds)


@dataclass(frozen=True)
class LeaseState:
    """What a lease folder says: its holder (None when it has no lease file) and its heartbeat's age."""

    token: str | None
    host: str
    pid: int | None
    age_s: float
    info: dict = field(default_factory=dict)
    holder_gone: bool = False  # made in this boot and PID namespace by a process that no longer runs

    @property
    def holder(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'} on {self.host}"

    def is_stale(self, terms: LeaseTerms) -> bool:
        return self.holder_gone or self.age_s >= terms.seconds

    def why_stale(self, terms: LeaseTerms) -> str:
        if self.holder_gone:
            return f"{self.holder}, which no longer runs"
        return f"{self.holder}, last heartbeat {self.age_s:.0f} s ago, lease {terms.seconds:g} s"


class LeaseBusy(Exception):
    """The lease is held by a job whose heartbeat is live."""

    def __init__(self, folder: Path, state: LeaseState):
        super().__init__(f"{folder}: held by {state.holder}, heartbeat {state.age_s:.0f} s ago")
        self.folder = folder
        self.state = state


def new_token() -> str:
    return secrets.token_hex(8)


def process_identity(pid: int | None = None) -> dict | None:
    """Who process `pid` (default: this one) is, as the kernel knows it; None where /proc cannot say.

    The boot id and PID namespace say whether another process could check the PID at all;
    the start time tells the process from a later one given the same PID.
    """
    pid = os.getpid() if pid is None else pid
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid")
        started = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None
    return {"boot": boot, "pid_namespace": f"{namespace.st_dev}:{namespace.st_ino}", "pid": pid, "started": started}


def _holder_gone(identity) -> bool:
    """Whether the process `identity` names is provably not running: it ran in this boot and PID namespace."""
    if not isinstance(identity, dict) or not isinstance(identity.get("pid"), int):
        return False
    here = process_identity()
    if here is None or (identity.get("boot"), identity.get("pid_namespace")) != (here["boot"], here["pid_namespace"]):
        return False  # another machine or container: only the heartbeat can tell
    now = process_identity(identity["pid"])
    return now is None or now["started"] != identity.get("started")


# --- reading leases ------------------------------------------------------------------------------


def shared_now(folder: Path) -> float:
    """The shared folder's clock: the mtime of a file made in `folder` now (this machine's clock if it cannot)."""
    try:
        handle, path = tempfile.mkstemp(prefix=".latentsync-clock-", dir=folder)
    except OSError:
        return time.time()
    try:
        return os.fstat(handle).st_mtime
    finally:
        os.close(handle)
        os.unlink(path)


def inspect(folder: Path, now: float | None = None) -> LeaseState | None:
    """The state of the lease `folder`, or None when there is none.

    A folder without a lease file (one being built, or a claim of an older
    version) is as old as the folder itself.
    """
    try:
        # Opened, not just stat-ed: with NFS's close-to-open consistency an open fetches fresh attributes.
        with open(folder / LEASE_FILE, "rb") as handle:
            heartbeat = os.fstat(handle.fileno()).st_mtime
            record = _parse(handle.read())
    except (FileNotFoundError, NotADirectoryError):
        try:
            heartbeat, record = folder.stat().st_mtime, {}
        except FileNotFoundError:
            return None
    except OSError:
        heartbeat, record = time.time(), {}  # unreadable: count it as live rather than remove it
    now = shared_now(folder.parent) if now is None else now
    pid = record.get("pid")
    return LeaseState(
        token=record.get("token") if isinstance(record.get("token"), str) else None,
        host=str(record.get("host", "an unknown host")),
        pid=pid if isinstance(pid, int) else None,
        age_s=max(0.0, now - heartbeat),
        info=record.get("info") if isinstance(record.get("info"), dict) else {},
        holder_gone=_holder_gone(record.get("process")),
    )


def _parse(data: bytes) -> dict:
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _token_in(folder: Path) -> str | None:
    try:
        return _parse((folder / LEASE_FILE).read_bytes()).get("token")
    except OSError:
        return None


# --- taking and holding leases -------------------------------------------------------------------


def acquire(
    folder: Path,
    terms: LeaseTerms,
    what: str | None = None,
    warn: Callable[[str], None] | None = None,
    info: dict | None = None,
) -> Lease:
    """Take the lease `folder` and start its heartbeat; LeaseBusy while a live lease holds it.

    A stale lease is taken over, and `warn` hears one line saying so (`what`
    names the thing claimed, for that line). `info` is kept in the lease file
    for others to read (`LeaseState.info`).
    """
    token = new_token()
    for _attempt in range(8):  # each round either takes the lease, finds it live, or removes a stale one
        if _create(folder, token, info or {}):
            return Lease(folder, token, terms)
        state = inspect(folder)
        if state is None:
            continue  # released meanwhile
        if not state.is_stale(terms):
            raise LeaseBusy(folder, state)
        if remove_if_unchanged(folder, state.token) and warn is not None:
            warn(f"{what or folder}: taking over the claim of a job that stopped ({state.why_stale(terms)})")
    raise LeaseBusy(folder, inspect(folder) or LeaseState(None, "an unknown host", None, 0.0))


def _create(folder: Path, token: str, info: dict) -> bool:
    """Put a new lease at `folder` in one rename; False when a lease is already there."""
    building = folder.with_name(f"{folder.name}.new-{token}")
    building.mkdir(parents=False)
    try:
        record = {
            "token": token, "host": socket.gethostname(), "pid": os.getpid(), "process": process_identity(), "info": info
        }  # fmt: skip
        (building / LEASE_FILE).write_text(json.dumps(record))
        os.rename(building, folder)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


def remove_if_unchanged(folder: Path, token: str | None) -> bool:
    """Remove the lease `folder` if it is still the one with `token` (None: one without a lease file).

    The folder is first renamed to a name only this call uses, then checked:
    if another job replaced the lease in the meantime, what was moved is put
    back untouched. Returns whether it was removed.
    """
    aside = folder.with_name(f"{folder.name}.stale-{new_token()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return False  # someone else removed it first
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    if _token_in(aside) != token:
        try:
            os.rename(aside, folder)  # not the lease we judged: give it back
        except OSError:
            pass  # its holder notices the lease is gone (Lease.lost) and stops before writing
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def remove_stale(folder: Path, pattern: str, terms: LeaseTerms) -> list[Path]:
    """Remove the stale leases in `folder` whose names match `pattern`; returns what was removed."""
    removed = []
    now = None
    for candidate in sorted(folder.glob(pattern)):
        if not candidate.is_dir():
            continue
        now = shared_now(folder) if now is None else now
        state = inspect(candidate, now)
        if state is not None and state.is_stale(terms) and remove_if_unchanged(candidate, state.token):
            removed.append(candidate)
    return removed


def live_leases(folder: Path, terms: LeaseTerms) -> dict[Path, LeaseState]:
    """The live leases directly in `folder` (stale ones are removed on the way)."""
    remove_stale(folder, "*", terms)
    now = shared_now(folder)
    states = {candidate: inspect(candidate, now) for candidate in sorted(folder.glob("*")) if candidate.is_dir()}
    return {path: state for path, state in states.items() if state is not None and not state.is_stale(terms)}


class Lease:
    """A lease this process holds: a daemon thread touches it every `terms.heartbeat_s` until `release()`.

    The thread only touches a small file; it never waits on the job. If it finds
    the lease gone or replaced (taken over after this machine went silent for
    longer than the lease), `lost` becomes True and the beats stop.
    """

    def __init__(self, folder: Path, token: str, terms: LeaseTerms):
        self.folder = folder
        self.token = token
        self.terms = terms
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {folder.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        missed = 0
        while not self._stop.wait(self.terms.heartbeat_s):
            token = _token_in(self.folder)
            if token is None:
                missed += 1
                self.lost = missed >= MISSED_BEATS_TO_LOSE
            elif token != self.token:
                self.lost = True
            else:
                missed = 0
                try:
                    os.utime(self.folder / LEASE_FILE)  # mtime := now (on NFS: the server's now)
                except OSError:
                    continue
            if self.lost:
                return

    def still_held(self) -> bool:
        """Whether the lease is still this process's (read from the folder now, not from the heartbeat)."""
        if self.lost:
            return False
        for _attempt in range(2):
            token = _token_in(self.folder)
            if token is not None:
                return token == self.token
            time.sleep(0.05)  # a taker that moved it aside by mistake puts it back at once
        return False

    def release(self) -> None:
        """Stop the heartbeat and remove the lease folder with everything in it, if it is still ours."""
        self._stop.set()
        self._thread.join()
        if not self.lost:
            remove_if_unchanged(self.folder, self.token)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

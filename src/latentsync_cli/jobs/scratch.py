"""Every job's private scratch folder beside its output: its lease on that output, and what dead jobs left.

The scratch folder is a lease (jobs/lease.py): while the job runs, its
heartbeat keeps every other job, on any host or in any container, away from
the output and from the folder; a job that died (SIGKILL, a lost machine) loses
it `LeaseTerms.seconds` after its last heartbeat, and the next job for that
output takes it over. Everything the job writes before its output is finished,
partial files included, is inside the folder, so it goes with the lease. The
folder is on the output's filesystem, so the final rename into place is atomic.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from latentsync_cli.errors import OutputError
from latentsync_cli.jobs.lease import Lease, LeaseBusy, LeaseTerms, acquire, remove_stale, shared_now
from latentsync_cli.media.outputs import move_into_place

SCRATCH_PREFIX = ".latentsync-job-"
PARTIAL_MARK = ".partial-"  # `.<name>.partial-<pid>-<random><suffix>`: what versions before leases wrote beside outputs

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class JobScratch:
    """A job's private folder and, when it claims an output, the lease that does."""

    folder: Path
    lease: Lease | None = None  # None: a private temporary folder that claims nothing

    def publish(self, made: Path, output: Path) -> None:
        """Move the finished file or sequence folder `made` (in the folder) to `output`, if the output is
        still this job's."""
        if self.lease is not None and not self.lease.still_held():
            raise OutputError(
                f"{output}: another job took this output over while this one was silent for more than "
                f"{self.lease.terms.seconds:g} s (a suspended or overloaded machine?); nothing was written"
            )
        try:
            move_into_place(made, output)
        except OSError as error:
            raise write_error(output.parent, error) from None


def scratch_folder(output_path: Path) -> Path:
    return output_path.parent / f"{SCRATCH_PREFIX}{output_path.name}"


@contextmanager
def job_scratch_dir(
    output_path: Path, terms: LeaseTerms | None = None, warn: Callable[[str], None] | None = None
) -> Iterator[JobScratch]:
    """The job's private folder beside `output_path`, which is also its lease on that output, until the job ends.

    While another job's lease on the output is live, OutputError at once; a
    stale one is taken over and `warn` hears one line saying so. The folder and
    everything in it are removed however the job ends.
    """
    terms = terms or LeaseTerms()
    try:
        lease = acquire(scratch_folder(output_path), terms, str(output_path), warn)
    except LeaseBusy as busy:
        raise OutputError(
            f"{output_path}: another job ({busy.state.holder}, heartbeat {busy.state.age_s:.0f} s ago) is writing "
            f"this output; wait for it or choose another -o (a job that died loses the output "
            f"{terms.seconds:g} s after its last heartbeat)"
        ) from None
    except OSError as error:
        raise write_error(output_path.parent, error) from None
    try:
        yield JobScratch(lease.folder, lease)
    finally:
        lease.release()


def write_error(folder: Path, error: OSError) -> OutputError:
    """An OSError while writing in `folder` as the one-line error a user can act on (disk full: exit 6)."""
    if error.errno in DISK_FULL_ERRNOS:
        return OutputError(f"{folder}: disk full ({error.strerror}); free some space or choose another folder")
    return OutputError(f"{folder}: cannot write there ({error.strerror}); choose another folder")


def remove_stale_scratch(folder: Path, terms: LeaseTerms | None = None) -> list[Path]:
    """Remove what dead jobs left in `folder`, on any host: scratch folders whose lease is stale, and
    partial outputs of older versions that nothing has written to for a lease's time and whose output
    no live job holds. Returns what was removed."""
    terms = terms or LeaseTerms()
    removed = remove_stale(folder, SCRATCH_PREFIX + "*", terms)
    partials = [path for path in folder.glob(f".*{PARTIAL_MARK}*") if path.is_file()]
    now = shared_now(folder) if partials else 0.0
    for partial in partials:
        output = _partial_output(partial)
        try:
            silent_s = now - partial.stat().st_mtime
        except FileNotFoundError:
            continue
        if silent_s >= terms.seconds and not scratch_folder(output).exists():
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _partial_output(partial: Path) -> Path:
    """The output a `.<stem>.partial-<pid>-<random><suffix>` file was being written for."""
    stem, _mark, rest = partial.name[1:].rpartition(PARTIAL_MARK)
    return partial.with_name(stem + Path(rest).suffix)


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

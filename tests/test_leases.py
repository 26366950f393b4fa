"""Many hosts and containers, one shared folder: output claims and work dirs are leases with a heartbeat.

Other hosts and containers are simulated two ways: a lease folder written as
another machine leaves it (its host name, a PID that means nothing here, a
heartbeat as old as we make it with os.utime), and, where this machine lets us
(root, `unshare`), real processes in their own PID and UTS namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from latentsync_cli.errors import OutputError, UsageError
from latentsync_cli.jobs.lease import LEASE_FILE, LeaseBusy, LeaseTerms, acquire, inspect, process_identity
from latentsync_cli.jobs.scratch import SCRATCH_PREFIX, job_scratch_dir, remove_stale_scratch, scratch_folder
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.jobs.workdir import USERS, WorkDirStore

LONG_AGO_S = 3600.0


def lease_of_another_job(
    folder: Path, host: str, pid: int, silent_s: float = 0.0, info: dict | None = None, process: dict | None = None
) -> Path:
    """A lease folder as a job on `host` leaves it, its last heartbeat `silent_s` seconds ago."""
    folder.mkdir()
    record = {"token": f"other-{host}-{pid}", "host": host, "pid": pid, "process": process, "info": info or {}}
    (folder / LEASE_FILE).write_text(json.dumps(record))
    set_heartbeat_age(folder, silent_s)
    return folder


def set_heartbeat_age(folder: Path, silent_s: float) -> None:
    then = time.time() - silent_s
    os.utime(folder / LEASE_FILE, (then, then))


def pid_not_running_here() -> int:
    """A PID no process has here, as a job's PID in another container's namespace looks from this one."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# --- the output's claim ----------------------------------------------------------------------------


def test_scratch_folders_are_private_and_removed(tmp_path):
    with job_scratch_dir(tmp_path / "a.mp4") as first, job_scratch_dir(tmp_path / "b.mp4") as second:
        assert first.folder != second.folder
        assert first.folder.parent == tmp_path and first.folder.name.startswith(SCRATCH_PREFIX)
        (first.folder / "junk").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_second_job_for_the_same_output_is_refused_while_the_first_runs(tmp_path):
    output = tmp_path / "out.mp4"
    with job_scratch_dir(output):
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(OutputError, match=f"another job \\({holder}, heartbeat \\d+ s ago\\) is writing"):
            with job_scratch_dir(output):
                pass
    with job_scratch_dir(output) as again:  # released when the first job ended
        assert again.folder.exists()


def test_a_dead_hosts_claim_is_taken_over_after_its_lease_saying_so_on_one_line(tmp_path):
    output = tmp_path / "out.mp4"
    claim = lease_of_another_job(scratch_folder(output), "deadnode", 4, silent_s=LONG_AGO_S)
    (claim / ".video.partial-4-0000.mp4").write_bytes(b"half a video")
    said = []
    with job_scratch_dir(output, LeaseTerms(), said.append) as scratch:
        assert [path.name for path in scratch.folder.iterdir()] == [LEASE_FILE]  # the dead job's files went
        assert inspect(scratch.folder).host == socket.gethostname()
    assert len(said) == 1 and "pid 4 on deadnode" in said[0] and "taking over" in said[0], said
    assert list(tmp_path.iterdir()) == []


def test_a_silent_claim_blocks_its_output_only_until_the_lease_expires(tmp_path):
    output = tmp_path / "out.mp4"
    claim = lease_of_another_job(scratch_folder(output), "deadnode", 4, silent_s=2.0)
    with pytest.raises(OutputError, match="pid 4 on deadnode"):
        with job_scratch_dir(output, LeaseTerms(seconds=30)):
            pass
    set_heartbeat_age(claim, 31.0)
    with job_scratch_dir(output, LeaseTerms(seconds=30)) as scratch:
        assert scratch.lease.still_held()


def test_a_live_claim_of_a_container_with_the_same_host_name_is_never_touched(tmp_path):
    # Same host name and kernel, a PID that no process has here: a job in another PID namespace on this host.
    output = tmp_path / "out.mp4"
    pid, here = pid_not_running_here(), process_identity()
    container = {**here, "pid_namespace": "another", "pid": pid} if here else None
    claim = lease_of_another_job(scratch_folder(output), socket.gethostname(), pid, process=container)
    partial = claim / ".video.partial-1-0000.mp4"
    partial.write_bytes(b"being written")
    assert remove_stale_scratch(tmp_path) == []
    with pytest.raises(OutputError, match="another job"):
        with job_scratch_dir(output):
            pass
    with job_scratch_dir(tmp_path / "other.mp4"):  # another output in the same folder is fine
        pass
    assert partial.read_bytes() == b"being written"


@pytest.mark.skipif(process_identity() is None, reason="no /proc: only the heartbeat tells a dead job here")
def test_the_claim_of_a_job_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    output = tmp_path / "out.mp4"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_CLAIM, str(output), "60", ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    held = json.loads(holder.stdout.readline())
    holder.kill()  # SIGKILL: its heartbeat is fresh, but its process is gone
    holder.wait(timeout=60)
    said = []
    with job_scratch_dir(output, LeaseTerms(), said.append):
        pass
    assert len(said) == 1 and f"pid {held['pid']} on {held['host']}, which no longer runs" in said[0], said


def test_partial_outputs_of_older_versions_go_only_when_idle_and_unclaimed(tmp_path):
    def partial(name: str, silent_s: float) -> Path:
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, (time.time() - silent_s, time.time() - silent_s))
        return path

    being_written = partial(".fresh.partial-4-0000.mp4", 0.0)
    abandoned = partial(".old.partial-4-0000.mp4", LONG_AGO_S)
    of_a_live_job = partial(".claimed.partial-4-0000.mp4", LONG_AGO_S)  # its job is in another step now
    lease_of_another_job(scratch_folder(tmp_path / "claimed.mp4"), "othernode", 4)
    assert remove_stale_scratch(tmp_path) == [abandoned]
    assert being_written.exists() and of_a_live_job.exists()


def test_the_heartbeat_moves_while_a_lease_is_held(tmp_path):
    lease = acquire(tmp_path / "thing.lease", LeaseTerms(seconds=4))  # a beat every second
    try:
        first = (lease.folder / LEASE_FILE).stat().st_mtime
        set_heartbeat_age(lease.folder, 60.0)
        deadline = time.monotonic() + 120
        while (lease.folder / LEASE_FILE).stat().st_mtime < first:
            assert time.monotonic() < deadline, "the heartbeat never touched the lease"
            time.sleep(0.1)
    finally:
        lease.release()
    assert not (tmp_path / "thing.lease").exists()


def test_a_job_whose_claim_was_taken_over_writes_nothing_and_removes_nothing(tmp_path):
    output = tmp_path / "out.mp4"
    with job_scratch_dir(output) as scratch:
        made = scratch.folder / "finished.mp4"
        made.write_bytes(b"a finished video")
        while True:  # this machine "froze": its heartbeat is old, and another job takes the output over
            set_heartbeat_age(scratch.folder, LONG_AGO_S)
            try:
                taker = acquire(scratch.folder, LeaseTerms())
                break
            except LeaseBusy:  # a heartbeat came in between: age it again
                continue
        with pytest.raises(OutputError, match="another job took this output over"):
            scratch.publish(made, output)
    assert not output.exists()
    assert taker.still_held() and taker.folder.exists()  # the first job's exit left the taker's lease alone
    taker.release()


def test_the_lease_comes_from_the_environment():
    assert LeaseTerms.from_environment({}).seconds == 60
    assert LeaseTerms.from_environment({"LATENTSYNC_LEASE_SECONDS": "5"}) == LeaseTerms(5.0)
    assert LeaseTerms(5.0).heartbeat_s < 5.0 and LeaseTerms().heartbeat_s == 5.0
    for bad in ("soon", "0", "-3", "nan", "inf"):
        with pytest.raises(UsageError, match="LATENTSYNC_LEASE_SECONDS"):
            LeaseTerms.from_environment({"LATENTSYNC_LEASE_SECONDS": bad})


# --- work dirs of shards ---------------------------------------------------------------------------


def test_a_dead_hosts_shard_is_taken_over_and_a_live_hosts_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    lease_of_another_job(work / "shard-1-of-2.lease", "deadnode", 4, silent_s=LONG_AGO_S)
    lease_of_another_job(work / "shard-2-of-2.lease", "livenode", 4)
    said = []
    with WorkDirStore(work, "a", Shard(1, 2), warn=said.append):
        pass
    assert len(said) == 1 and "shard 1/2" in said[0] and "pid 4 on deadnode" in said[0], said
    with pytest.raises(OutputError, match="shard 2/2 of this job is already running \\(pid 4 on livenode"):
        WorkDirStore(work, "a", Shard(2, 2))


def test_a_dead_jobs_work_dir_is_cleared_a_live_ones_is_not(tmp_path):
    work = tmp_path / "work"
    with WorkDirStore(work, "old") as old:
        old.save(0, faces=np.zeros((1, 2, 2, 3), np.uint8))
    users = work / USERS
    live = lease_of_another_job(users / "live", "livenode", 7, info={"fingerprint": "old"})
    with pytest.raises(OutputError, match="a running job with other inputs or settings"):
        WorkDirStore(work, "new")
    assert (work / "window-00000.npz").exists()

    # The job on livenode dies: once its heartbeat is older than the lease, the work dir is free.
    (live / "window-00001.npz").write_bytes(b"its temporary file, half written")
    set_heartbeat_age(live, LONG_AGO_S)
    with WorkDirStore(work, "new") as new:
        assert new.finished_count() == 0
        assert not live.exists()  # its lease went, and its temporary file with it


def test_temporary_files_live_in_the_process_lease_until_they_are_complete(tmp_path):
    with WorkDirStore(tmp_path / "work", "a") as store:
        store.save(3, faces=np.zeros((1, 2, 2, 3), np.uint8))
        assert store.has(3) and list(store.user.folder.iterdir()) == [store.user.folder / LEASE_FILE]
    assert list((tmp_path / "work" / USERS).iterdir()) == []


# --- real containers: PID and UTS namespaces ---------------------------------------------------------

HOLD_A_CLAIM = textwrap.dedent("""
    import json, os, socket, sys
    from pathlib import Path
    from latentsync_cli.jobs.lease import LeaseTerms
    from latentsync_cli.jobs.scratch import job_scratch_dir

    output, lease_s, host = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    if host:
        socket.sethostname(host)
    with job_scratch_dir(output, LeaseTerms(lease_s)) as scratch:
        partial = scratch.folder / f".video.partial-{os.getpid()}-0000.mp4"
        partial.write_bytes(b"being encoded")
        print(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "partial": str(partial)}), flush=True)
        sys.stdin.read()  # holds the claim until the test closes stdin
""")

CLEAN_UP_AND_CLAIM = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from latentsync_cli.errors import OutputError
    from latentsync_cli.jobs.scratch import job_scratch_dir, remove_stale_scratch

    theirs, mine = Path(sys.argv[1]), Path(sys.argv[2])
    removed = remove_stale_scratch(theirs.parent)
    with job_scratch_dir(mine):
        pass
    try:
        with job_scratch_dir(theirs):
            took_theirs = True
    except OutputError as error:
        took_theirs = False
    print(json.dumps({"pid": os.getpid(), "removed": [str(p) for p in removed], "took_theirs": took_theirs}))
""")


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--pid", "--fork", "--uts", "true"], capture_output=True, check=False)
    return done.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_allowed(), reason="unshare --pid --uts is not allowed here")


def in_container(script: str, *arguments, pid_one_is_a_shell: bool = False) -> list[str]:
    """A command running `script` in new PID and UTS namespaces: a container with its own PIDs.

    With `pid_one_is_a_shell` the script runs as PID 2 under a shell, so that two containers'
    jobs have different PIDs (PID 2 there, PID 1 here)."""
    python = [sys.executable, "-c", script, *map(str, arguments)]
    if pid_one_is_a_shell:
        python = ["sh", "-c", '"$@"; exit $?', "sh", *python]
    return ["unshare", "--pid", "--fork", "--kill-child", "--uts", *python]


def start_holder(output: Path, lease_s: float, host: str = "", pid_one_is_a_shell: bool = False):
    holder = subprocess.Popen(
        in_container(HOLD_A_CLAIM, output, lease_s, host, pid_one_is_a_shell=pid_one_is_a_shell),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = holder.stdout.readline()
    assert line, holder.stderr.read()
    return holder, json.loads(line)


@needs_namespaces
def test_two_containers_with_one_host_name_never_touch_each_others_files(tmp_path):
    theirs, mine = tmp_path / "a.mp4", tmp_path / "b.mp4"
    holder, held = start_holder(theirs, 60.0, pid_one_is_a_shell=True)
    try:
        other = subprocess.run(
            in_container(CLEAN_UP_AND_CLAIM, theirs, mine), capture_output=True, text=True, check=True, timeout=300
        )
        done = json.loads(other.stdout)
        assert held["host"] == socket.gethostname() and (held["pid"], done["pid"]) == (2, 1)
        assert done["removed"] == [] and done["took_theirs"] is False
        assert Path(held["partial"]).read_bytes() == b"being encoded"
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=120) == 0, holder.stderr.read()
    assert list(tmp_path.iterdir()) == []  # each job removed its own claim


@needs_namespaces
def test_a_job_killed_on_another_host_blocks_the_output_only_until_its_lease_expires(tmp_path):
    output, lease = tmp_path / "out.mp4", LeaseTerms(seconds=6.0)
    holder, held = start_holder(output, lease.seconds, host="deadnode")
    assert held["host"] == "deadnode"
    holder.kill()  # SIGKILL: the container goes with it (--kill-child), leaving its claim behind
    holder.wait(timeout=60)
    with pytest.raises(OutputError, match=f"pid {held['pid']} on deadnode"):
        with job_scratch_dir(output, lease):
            pass
    said = []
    deadline = time.monotonic() + 300
    while True:
        try:
            with job_scratch_dir(output, lease, said.append):
                break
        except OutputError:
            assert time.monotonic() < deadline, "the dead job's claim was never taken over"
            time.sleep(0.2)
    assert len(said) == 1 and "on deadnode" in said[0] and "taking over" in said[0], said
    assert list(tmp_path.iterdir()) == []

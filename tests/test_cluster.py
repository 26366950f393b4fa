"""Jobs on a Ray cluster: the outputs of a single run, whatever the shards and however many workers die.

One private local Ray instance (`ray start --head --block`, two CPUs, free
ports, its own temp dir) serves every test of the module: the CLI tests reach
it with `--ray ADDRESS`, the others call the core API in this process. At the
end only that instance's processes are stopped, by signalling the `ray start`
process the fixture started. Ray is an optional extra; CI installs it (`.ci/run`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clitools import (
    FAST,
    FAST_WEIGHTS,
    cli_env,
    clip_with_reference,
    leftovers,
    run_cli,
    start_cli,
    torch_threads,
    video_stream_bytes,
)

from latentsync_cli.cpu_threads import job_cpu_threads
from latentsync_cli.errors import ExitCode
from latentsync_cli.jobs.cluster import ClusterOptions, run_on_ray
from latentsync_cli.jobs.job import Job
from latentsync_cli.settings.request import SettingsRequest

ray = pytest.importorskip("ray", reason="Ray is the optional extra `latentsync[ray]`")

SECONDS = 1.2  # 32 frames at window 8: 4 windows
JOB_FLAGS = [*FAST, "--window", "8", "--seed", "7"]
# Ports Ray would otherwise take at fixed numbers (6379, 52365, ...), shared with anyone else on the machine.
RAY_PORT_FLAGS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                  "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """A private local cluster for the whole module; its address. Only its own processes are stopped."""
    temp_dir = tmp_path_factory.mktemp("ray")
    port = free_port()
    ports = [str(value) for flag in RAY_PORT_FLAGS for value in (flag, free_port())]
    # The `ray` command, whatever is on PATH; --block keeps it in the foreground, owning what it starts.
    start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
             *ports]  # fmt: skip
    with open(temp_dir / "ray-start.log", "wb") as log:
        head = subprocess.Popen(start, stdout=log, stderr=log, env=cli_env(), start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_port(head, port, temp_dir / "ray-start.log")
        ray.init(address=address, log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        head.terminate()  # `ray start --block` stops the processes it started, and only those
        head.wait(timeout=300)


def wait_for_port(head: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        assert head.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, f"no Ray cluster came up: {log.read_text()}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    with torch_threads(job_cpu_threads()):  # the threads a Ray worker on the CPU takes (jobs/cluster.py)
        return clip_with_reference(tmp_path_factory.mktemp("cluster"), SECONDS, JOB_FLAGS)


def fast_job(media, output: Path) -> Job:
    settings = SettingsRequest(mode="turbo", steps=1, window=8, seed=7, device="cpu")
    return Job(video=media["clip"], audio=media["voice"], output=output, settings=settings, weights=FAST_WEIGHTS)


def test_two_shards_on_the_cluster_give_the_single_run_video(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    ran = run_cli("sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, "--ray", cluster, "--shards", "2",
                  "--ray-workers", "2", timeout=600)  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob(".latentsync-work-*"))


def test_a_manifest_of_three_jobs_on_two_workers(cluster, media, tmp_path):
    rows = [{"video": str(media["clip"]), "audio": str(media["voice"]), "output": f"out{n}.mp4"} for n in range(3)]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ran = run_cli("sync", "--batch", manifest, "--json", *JOB_FLAGS, "--ray", cluster, "--ray-workers", "2",
                  timeout=900)  # fmt: skip
    assert ran.code == 0, ran.stderr
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert sorted(record["job"] for record in records) == [1, 2, 3]
    assert all(record["status"] == "ok" for record in records), records
    for number in range(3):
        assert video_stream_bytes(tmp_path / f"out{number}.mp4") == video_stream_bytes(media["single"])


def descendants(pid: int) -> list[int]:
    """Every process started, directly or not, by `pid` (this module's cluster is started by this process)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def busy_worker_pids() -> list[int]:
    """The processes of this test's workers that are running a task (Ray names them after the method)."""
    busy = []
    for pid in descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::ShardWorker.run"):
            busy.append(pid)
    return busy


def test_a_worker_killed_mid_job_costs_only_its_shard(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    job = fast_job(media, target)
    records = []
    driver = threading.Thread(
        target=lambda: records.extend(run_on_ray([(1, job)], ClusterOptions(workers=2, shards=2))), daemon=True
    )
    driver.start()
    deadline = time.monotonic() + 600
    while not busy_worker_pids():
        assert driver.is_alive() and time.monotonic() < deadline, "no worker started a shard"
        time.sleep(0.1)
    os.kill(busy_worker_pids()[0], signal.SIGKILL)
    driver.join(timeout=900)
    assert not driver.is_alive()
    [record] = records
    assert record.status == "ok", record.error
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])


def test_a_bad_row_fails_alone_on_the_cluster(cluster, media, tmp_path):
    good, bad = fast_job(media, tmp_path / "good.mp4"), fast_job(media, tmp_path / "bad.mp4")
    bad = Job(**{**bad.__dict__, "video": tmp_path / "missing.mp4"})
    records = run_on_ray([(1, good), (2, bad)], ClusterOptions(workers=1))
    assert [(record.job, record.status) for record in records] == [(1, "ok"), (2, "failed")]
    assert records[1].exit_code == ExitCode.BAD_INPUT and "missing.mp4" in records[1].error


def test_a_driver_killed_and_started_again_resumes_from_the_work_dir(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    command = ["sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, "--ray", cluster, "--shards", "2",
               "--ray-workers", "2"]  # fmt: skip
    driver = start_cli(*command)
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob(".latentsync-work-*/window-*.npz")):
        assert driver.poll() is None and time.monotonic() < deadline, "no window was stored"
        time.sleep(0.1)
    driver.kill()  # the driver dies; its workers go with it
    driver.communicate(timeout=60)
    assert not target.exists()
    kept = len(list(tmp_path.glob(".latentsync-work-*/window-*.npz")))

    again = run_cli(*command, "--json", timeout=600)
    assert again.code == 0, again.stderr
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])
    # The windows stored before the kill were taken as they were, not computed again.
    assert json.loads(again.stdout.splitlines()[-1])["resumed_windows"] >= kept >= 1
    assert not list(tmp_path.glob(".latentsync-work-*"))  # the finished job's work dir is gone


def test_an_address_where_no_cluster_answers_fails_at_once_with_one_line(tmp_path):
    # Nothing listens on port 1: Ray itself would retry for minutes.
    ran = run_cli("sync", tmp_path / "clip.mp4", "--ray", "127.0.0.1:1", *JOB_FLAGS, timeout=120)
    assert ran.code == ExitCode.USAGE, ran.stderr
    assert len(ran.error_lines) == 1 and "--ray 127.0.0.1:1: no Ray cluster answers there" in ran.error_lines[0]
    assert "Traceback" not in ran.stderr

"""Jobs on a Ray cluster: the outputs of a single run, whatever the shards and however many workers die.

One local Ray instance (`ray start --head`, two CPUs) serves every test of the
module: the CLI tests reach it with `--ray auto`, the others call the core API
in this process. Ray is an optional extra; CI installs it (`.ci/run`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clitools import FAST, cli_env, clip_with_reference, leftovers, run_cli, start_cli, video_stream_bytes

from latentsync_cli.errors import ExitCode
from latentsync_cli.jobs.cluster import ClusterOptions, run_on_ray
from latentsync_cli.jobs.job import Job
from latentsync_cli.settings.request import SettingsRequest

ray = pytest.importorskip("ray", reason="Ray is the optional extra `latentsync[ray]`")

SECONDS = 1.2  # 32 frames at window 8: 4 windows
JOB_FLAGS = [*FAST, "--window", "8", "--seed", "7"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster for the whole module, stopped afterwards."""
    temp_dir = tmp_path_factory.mktemp("ray")
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command, whatever is on PATH
    start = [*ray_cli, "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, env=cli_env(), timeout=300)
    ray.init(address="auto", log_to_driver=False)
    yield
    ray.shutdown()
    subprocess.run([*ray_cli, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return clip_with_reference(tmp_path_factory.mktemp("cluster"), SECONDS, JOB_FLAGS)


def tiny_job(media, output: Path) -> Job:
    settings = SettingsRequest(mode="turbo", steps=1, window=8, seed=7, device="cpu")
    return Job(video=media["clip"], audio=media["voice"], output=output, settings=settings, weights="random-tiny")


def test_two_shards_on_the_cluster_give_the_single_run_video(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    ran = run_cli("sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, "--ray", "auto", "--shards", "2",
                  "--ray-workers", "2", timeout=600)  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob(".latentsync-work-*"))


def test_a_manifest_of_three_jobs_on_two_workers(cluster, media, tmp_path):
    rows = [{"video": str(media["clip"]), "audio": str(media["voice"]), "output": f"out{n}.mp4"} for n in range(3)]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ran = run_cli("sync", "--batch", manifest, "--json", *JOB_FLAGS, "--ray", "auto", "--ray-workers", "2",
                  timeout=900)  # fmt: skip
    assert ran.code == 0, ran.stderr
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert sorted(record["job"] for record in records) == [1, 2, 3]
    assert all(record["status"] == "ok" for record in records), records
    for number in range(3):
        assert video_stream_bytes(tmp_path / f"out{number}.mp4") == video_stream_bytes(media["single"])


def busy_worker_pids() -> list[int]:
    """The processes of workers that are running a task (Ray names them after the method)."""
    found = subprocess.run(["pgrep", "-f", "ray::ShardWorker.run"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_worker_killed_mid_job_costs_only_its_shard(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    job = tiny_job(media, target)
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
    good, bad = tiny_job(media, tmp_path / "good.mp4"), tiny_job(media, tmp_path / "bad.mp4")
    bad = Job(**{**bad.__dict__, "video": tmp_path / "missing.mp4"})
    records = run_on_ray([(1, good), (2, bad)], ClusterOptions(workers=1))
    assert [(record.job, record.status) for record in records] == [(1, "ok"), (2, "failed")]
    assert records[1].exit_code == ExitCode.BAD_INPUT and "missing.mp4" in records[1].error


def test_a_driver_killed_and_started_again_resumes_from_the_work_dir(cluster, media, tmp_path):
    target = tmp_path / "out.mp4"
    command = ["sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, "--ray", "auto", "--shards", "2",
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

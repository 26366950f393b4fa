"""Jobs at once in one folder: different outputs share no scratch space; one output is never written twice;
a job that died (on this host or another) blocks its output only until its lease expires."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from clitools import FAST, FAST_WEIGHTS, cli_command, cli_env, leftovers, run_cli, start_cli, stream_summary

from latentsync_cli.errors import ExitCode
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.lease import LEASE_FILE
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import claim_output, execute, prepare
from latentsync_cli.jobs.scratch import scratch_folder
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.settings.request import SettingsRequest

SECONDS = 0.2  # a few frames: one short window


def test_four_concurrent_jobs_in_one_folder_all_succeed(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    outputs = [tmp_path / f"out_{number}.mp4" for number in range(4)]
    # Relative paths from the shared folder, as four farm jobs started there would pass them.
    processes = [
        start_cli("sync", clip.name, voice.name, "-o", output.name, "--json", *FAST, "--window", "16", cwd=tmp_path)
        for output in outputs
    ]
    for process, output in zip(processes, outputs):
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        result = json.loads(stdout)
        assert result["output"] == str(output)
        assert stream_summary(output) == (1, 1, result["frames"])  # one video and one audio stream, every frame
    assert leftovers(tmp_path) == []


def test_a_second_job_for_the_same_output_is_refused_at_once_and_the_first_finishes(tmp_path):
    """The first job runs here through the job API and holds its claim on the output while a second
    `latentsync sync` for the same output starts in another process: no race on who comes first."""
    clip = make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    target = tmp_path / "out.mp4"
    settings = SettingsRequest(mode="turbo", steps=1, device="cpu")
    first = prepare(Job(clip, voice, target, settings, weights=FAST_WEIGHTS))
    with claim_output(first) as scratch:  # what the first job holds from its claim to its end
        second = run_cli("sync", clip, voice, "-o", target, *FAST)
        assert second.code == ExitCode.OUTPUT, second.stderr
        assert len(second.error_lines) == 1 and "another job" in second.error_lines[0], second.stderr
        assert f"pid {os.getpid()}" in second.error_lines[0]  # it names the job that holds the output
        finished = execute(first, ModelCache().get(first), scratch)
    assert stream_summary(target) == (1, 1, finished.result.frames)
    assert leftovers(tmp_path) == []


def test_the_claim_of_a_job_that_died_on_another_host_is_taken_over_by_the_next_job(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    target = tmp_path / "out.mp4"
    claim = scratch_folder(target)  # as a job SIGKILLed on deadnode an hour ago left it
    claim.mkdir()
    (claim / LEASE_FILE).write_text(json.dumps({"token": "0123", "host": "deadnode", "pid": 4, "info": {}}))
    (claim / ".out.partial-4-0000.mp4").write_bytes(b"half a video")
    os.utime(claim / LEASE_FILE, (time.time() - 3600, time.time() - 3600))
    ran = run_cli("sync", clip, voice, "-o", target, "--json", *FAST)
    assert ran.code == 0, ran.stderr
    taken = [line for line in ran.stderr.splitlines() if "taking over" in line]
    assert len(taken) == 1 and "pid 4 on deadnode" in taken[0], ran.stderr
    assert stream_summary(target) == (1, 1, json.loads(ran.stdout)["frames"])
    assert leftovers(tmp_path) == []


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--pid", "--fork", "--uts", "true"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not namespaces_allowed(), reason="unshare --pid --uts is not allowed here")
def test_two_jobs_in_two_pid_namespaces_with_one_host_name_both_succeed(tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    container = ["unshare", "--pid", "--fork", "--kill-child", "--uts"]  # its own PIDs, this host's name
    processes = []
    for number, under_a_shell in ((0, True), (1, False)):
        command = cli_command("sync", clip, voice, "-o", tmp_path / f"out_{number}.mp4", "--json", *FAST)
        if under_a_shell:  # PID 2 in its namespace, a PID the other job's namespace does not have
            command = ["sh", "-c", '"$@"; exit $?', "sh", *command]
        processes.append(
            subprocess.Popen([*container, *command], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
        )
    for number, process in enumerate(processes):
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr
        assert stream_summary(tmp_path / f"out_{number}.mp4") == (1, 1, json.loads(stdout)["frames"])
    assert leftovers(tmp_path) == []
    assert socket.gethostname()  # both ran under this host's name (--uts copies it)

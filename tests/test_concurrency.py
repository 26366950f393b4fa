"""Jobs at once in one folder: different outputs share no scratch space; one output is never written twice."""

from __future__ import annotations

import json
import os

from clitools import FAST, leftovers, run_cli, start_cli, stream_summary

from latentsync_cli.errors import ExitCode
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import claim_output, execute, prepare
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
    first = prepare(Job(clip, voice, target, settings, weights="random-tiny"))
    with claim_output(first) as scratch:  # what the first job holds from its claim to its end
        second = run_cli("sync", clip, voice, "-o", target, *FAST)
        assert second.code == ExitCode.OUTPUT, second.stderr
        assert len(second.error_lines) == 1 and "another job" in second.error_lines[0], second.stderr
        assert f"pid {os.getpid()}" in second.error_lines[0]  # it names the job that holds the output
        finished = execute(first, ModelCache().get(first), scratch)
    assert stream_summary(target) == (1, 1, finished.result.frames)
    assert leftovers(tmp_path) == []

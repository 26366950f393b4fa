"""Jobs at once in one folder: different outputs share no scratch space; one output is never written twice."""

from __future__ import annotations

import json
import time

from clitools import FAST, leftovers, run_cli, start_cli, stream_summary

from latentsync_cli.errors import ExitCode
from latentsync_cli.jobs.scratch import SCRATCH_PREFIX
from latentsync_cli.media.synthetic import make_face_clip, make_speech

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
    clip = make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    target = tmp_path / "out.mp4"
    first = start_cli("sync", clip, voice, "-o", target, "--json", *FAST)
    claim = tmp_path / f"{SCRATCH_PREFIX}{target.name}"
    while not claim.exists():  # the first job has claimed the output (it then loads the models)
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    second = run_cli("sync", clip, voice, "-o", target, *FAST)
    assert second.code == ExitCode.OUTPUT, second.stderr
    assert len(second.error_lines) == 1 and "another job" in second.error_lines[0], second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert stream_summary(target) == (1, 1, json.loads(stdout)["frames"])
    assert leftovers(tmp_path) == []

"""Four jobs at once in one folder, same input names, different outputs: no shared scratch space."""

from __future__ import annotations

import json

from clitools import FAST, leftovers, start_cli, stream_summary

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

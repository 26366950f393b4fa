"""`latentsync sync --batch`: rows in order, existing outputs skipped, failures isolated, one JSON line per job."""

from __future__ import annotations

import json

from clitools import FAST, leftovers, run_cli, run_cli_here, stream_summary

from latentsync_cli.errors import ExitCode
from latentsync_cli.media.synthetic import make_face_clip, make_speech

SECONDS = 0.2  # a few frames: one short window


def test_batch_runs_skips_and_fails_rows_independently(tmp_path):
    make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    (tmp_path / "done.mp4").write_bytes(b"finished earlier")
    rows = [
        {"video": "clip.mp4", "audio": "voice.wav", "steps": 1},  # default output: clip_synced.mp4
        {"video": "clip.mp4", "audio": "voice.wav", "output": "done.mp4"},  # exists: skipped
        {"video": "gone.mp4", "audio": "voice.wav", "output": "bad.mp4"},  # a missing file: fails alone
        {"video": "clip.mp4", "audio": "unsaid.wav", "output": "quiet.mp4"},  # a missing speech file: fails alone
    ]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))

    ran = run_cli_here("sync", "--batch", manifest, "--json", *FAST, "--window", "16")

    assert ran.code == ExitCode.BATCH_FAILED, ran.stderr
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [(r["job"], r["status"], r["exit_code"]) for r in records] == [
        (1, "ok", 0),
        (2, "skipped", 0),
        (3, "failed", ExitCode.BAD_INPUT),
        (4, "failed", ExitCode.BAD_INPUT),
    ]
    assert records[0]["output"] == str(tmp_path / "clip_synced.mp4")
    assert stream_summary(tmp_path / "clip_synced.mp4") == (1, 1, records[0]["frames"])
    assert (tmp_path / "done.mp4").read_bytes() == b"finished earlier"
    assert "gone.mp4" in records[2]["error"] and "unsaid.wav" in records[3]["error"]
    assert not (tmp_path / "bad.mp4").exists() and not (tmp_path / "quiet.mp4").exists()
    assert all(isinstance(r["seconds"], float) for r in records)
    # The summary table and one final error line on stderr.
    assert "Batch" in ran.stderr and "skipped" in ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 of 4 jobs failed (rows 3, 4)" in errors[0]
    assert leftovers(tmp_path) == []


def test_a_bad_value_in_any_row_refuses_the_manifest_before_a_job_runs(tmp_path):
    """What the manifest says is checked up front, like a command line's flags (exit 2); what a row's
    files hold is found when it runs (that row fails, exit 8)."""
    make_face_clip(tmp_path / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast")
    make_speech(tmp_path / "voice.wav", SECONDS, use_espeak=False)
    rows = [
        {"video": "clip.mp4", "audio": "voice.wav", "output": "first.mp4"},
        {"video": "clip.mp4", "audio": "voice.wav", "output": "bad.mp4", "steps": "many"},
        {"video": "clip.mp4", "audio": "voice.wav", "output": "warp.mp4", "mode": "warp"},
    ]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ran = run_cli("sync", "--batch", manifest, *FAST)
    assert ran.code == ExitCode.USAGE, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "row 2" in errors[0] and "many" in errors[0]
    assert not (tmp_path / "first.mp4").exists()


def test_batch_output_may_not_leave_the_manifest_folder(tmp_path):
    folder = tmp_path / "farm"
    folder.mkdir()
    manifest = folder / "jobs.csv"
    manifest.write_text("video,audio,output\nclip.mp4,voice.wav,../../escaped.mp4\n")
    ran = run_cli("sync", "--batch", manifest, *FAST)
    assert ran.code == ExitCode.USAGE
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "leaves the batch folder" in errors[0]
    assert not (tmp_path.parent / "escaped.mp4").exists()


def test_batch_refuses_unknown_columns_before_running_anything(tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("video,audio,colour\nclip.mp4,voice.wav,red\n")
    ran = run_cli("sync", "--batch", manifest, *FAST)
    assert ran.code == ExitCode.USAGE
    assert "unknown column 'colour'" in ran.stderr and "Traceback" not in ran.stderr

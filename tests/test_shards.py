"""`--shard K/N` + `--finalize` through the real CLI: the same H.264 stream as one uninterrupted run.

The clip is 1.6 s (41 frames at window 8: 6 windows), so three shards get two
windows each. Everything runs with the small proxy model and one denoising step.
The first test runs each shard in its own process, as a farm does; the others run
the CLI in this process (`run_cli_here`), which saves each run the imports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import FAST, clip_with_reference, leftovers, run_cli, run_cli_here, video_stream_bytes

from latentsync_cli.errors import ExitCode

SECONDS = 1.6
JOB_FLAGS = [*FAST, "--window", "8", "--seed", "7"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return clip_with_reference(tmp_path_factory.mktemp("shards"), SECONDS, JOB_FLAGS)


def sync(media, target: Path, *extra):
    return run_cli_here("sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, *extra)


def sync_in_a_process(media, target: Path, *extra):
    return run_cli("sync", media["clip"], media["voice"], "-o", target, *JOB_FLAGS, *extra)


def test_shards_in_reverse_order_then_finalize_give_the_single_run_video(media, tmp_path):
    target, work_dir = tmp_path / "out.mp4", tmp_path / "work"
    for shard in ("3/3", "2/3", "1/3"):
        ran = sync_in_a_process(media, target, "--work-dir", work_dir, "--shard", shard)
        assert ran.code == 0, ran.stderr
        assert not target.exists()  # a shard writes only into the work dir
    assert sorted(path.name for path in work_dir.glob("window-*.npz")) == [f"window-{i:05d}.npz" for i in range(6)]
    assert (work_dir / "track.npz").exists()  # the face track, found once and read by every shard

    finalized = sync_in_a_process(media, target, "--work-dir", work_dir, "--finalize", "--json")
    assert finalized.code == 0, finalized.stderr
    assert json.loads(finalized.stdout)["resumed_windows"] == 6  # no window was computed again
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])
    assert leftovers(tmp_path) == []


def test_the_command_without_shard_computes_what_is_missing_and_finishes(media, tmp_path):
    target, work_dir = tmp_path / "out.mp4", tmp_path / "work"
    assert sync(media, target, "--work-dir", work_dir, "--shard", "2/3").code == 0
    ran = sync(media, target, "--work-dir", work_dir, "--json")
    assert ran.code == 0, ran.stderr
    assert json.loads(ran.stdout)["resumed_windows"] == 2
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])


def test_finalize_with_a_shard_missing_names_the_windows_and_writes_nothing(media, tmp_path):
    target, work_dir = tmp_path / "out.mp4", tmp_path / "work"
    for shard in ("1/3", "3/3"):
        assert sync(media, target, "--work-dir", work_dir, "--shard", shard).code == 0
    ran = sync(media, target, "--work-dir", work_dir, "--finalize")
    assert ran.code == ExitCode.INCOMPLETE, ran.stderr
    assert len(ran.error_lines) == 1 and "windows 2, 3" in ran.error_lines[0], ran.stderr
    assert "Traceback" not in ran.stderr
    assert not target.exists() and leftovers(tmp_path) == []


def test_overlapping_windows_in_shards_give_the_single_run_video(tmp_path):
    """--window-overlap keeps each window's faces its own: the border blend is made again at finalize."""
    flags = [*JOB_FLAGS, "--window-overlap", "3"]
    (tmp_path / "clip").mkdir()
    media = clip_with_reference(tmp_path / "clip", SECONDS, flags)
    target, work_dir = tmp_path / "out.mp4", tmp_path / "work"
    for shard in ("2/2", "1/2"):
        ran = run_cli_here("sync", media["clip"], media["voice"], "-o", target, *flags, "--work-dir", work_dir,
                           "--shard", shard)  # fmt: skip
        assert ran.code == 0, ran.stderr
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", target, *flags, "--work-dir", work_dir,
                       "--finalize")  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert video_stream_bytes(target) == video_stream_bytes(media["single"])


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--shard", "1/3"], "--work-dir"),
        (["--finalize"], "--work-dir"),
        (["--shard", "4/3", "--work-dir", "w"], "--shard 4/3"),
        (["--shard", "1/2", "--finalize", "--work-dir", "w"], "--finalize"),
        (["--shards", "2"], "--ray"),
        (["--warm-start", "--work-dir", "w"], "warm start"),  # each window needs the one before
    ],
)
def test_shard_flag_mistakes_are_usage_errors(media, tmp_path, flags, fragment):
    ran = sync(media, tmp_path / "out.mp4", *flags)
    assert ran.code == ExitCode.USAGE, ran.stderr
    assert len(ran.error_lines) == 1 and fragment in ran.error_lines[0], ran.stderr


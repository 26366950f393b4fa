"""Which windows a job makes, takes finished from its work dir, or leaves to other tasks.

    plan = plan_windows(ranges, store, track, shard, finalize)   # -> pipeline.windows.WindowPlan

Without a work dir every window is made. With one, a window already there is
taken as it is (a resumed job); a shard makes only its own windows that are not
there yet and outputs no frames; a finalize step takes every window and fails,
naming the missing ones, when any is not there.
"""

from __future__ import annotations

import numpy as np

from latentsync_cli.errors import IncompleteWorkError
from latentsync_cli.face.track import FaceTrack
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.jobs.workdir import WorkDirStore
from latentsync_cli.pipeline.windows import WindowPlan


def plan_windows(
    ranges: list[range], store: WorkDirStore | None, track: FaceTrack | None, shard: Shard | None, finalize: bool,
    overlap: int = 0,
) -> WindowPlan:  # fmt: skip
    """`overlap`: the frames each window also makes of the previous one (a stored window holds them too)."""
    if store is None:
        return WindowPlan.everything(ranges, overlap)
    every = range(len(ranges))
    stored = {index for index in every if store.has(index)}
    if finalize:
        check_all_stored(stored, len(ranges))
    if shard is not None:
        own = shard.windows(len(ranges))
        done = [index for index in own if index in stored]
        generate = frozenset(index for index in own if index not in stored)
        return WindowPlan(ranges, generate, make_frames=False, resumed=len(done), overlap=overlap)
    # A stored window is valid for the faces the track found in its frames (always, unless the
    # track changed under it: then it is made again).
    made = WindowPlan(ranges, frozenset(), overlap=overlap).made_range
    valid = [index for index in sorted(stored) if same_flags(store, index, made(index), track)]
    finished = {index: (lambda index=index: store.load_faces(index)) for index in valid}
    generate = frozenset(index for index in every if index not in finished)
    return WindowPlan(ranges, generate, finished, resumed=len(finished), overlap=overlap)


def same_flags(store: WorkDirStore, index: int, frames: range, track: FaceTrack | None) -> bool:
    if track is None:
        return False
    return np.array_equal(store.load_flags(index), track.has_face[frames.start : frames.stop])


def check_all_stored(stored: set[int], num_windows: int) -> None:
    """IncompleteWorkError naming the windows a finalize step cannot find in the work dir."""
    missing = [index for index in range(num_windows) if index not in stored]
    if missing:
        shown = ", ".join(str(index) for index in missing[:20]) + (", ..." if len(missing) > 20 else "")
        raise IncompleteWorkError(
            f"--finalize: windows {shown} of {num_windows} are not in the work dir yet; run their shards first"
        )

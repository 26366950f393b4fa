"""Shards: one video's windows split into N contiguous ranges, computed by separate tasks into one work dir.

    latentsync sync talk.mp4 voice.wav -o out.mp4 --work-dir /shared/w --shard 2/3   # windows of shard 2 only
    latentsync sync talk.mp4 voice.wav -o out.mp4 --work-dir /shared/w --finalize    # restore, encode, mux

A farm's scheduler runs one task per shard (in any order, at the same time),
then one finalize task; the command without --shard or --finalize computes
whatever is missing and finalizes, as a resume does. The result is the video
one uninterrupted run gives: every window's randomness depends only on (seed,
window index), and everything that carries state from frame to frame (face
tracking, the alignment's nose smoothing, the ping-pong loop) is computed once,
in order, into the work dir's face track, which every shard reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from latentsync_cli.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Shard `number` (1-based) of `count`."""

    number: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` as given to --shard (1 <= K <= N)."""
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if found is None:
            raise UsageError(f"--shard {text}: expected K/N, e.g. --shard 2/4 for the second of four shards")
        number, count = int(found.group(1)), int(found.group(2))
        if not 1 <= number <= count:
            raise UsageError(f"--shard {text}: K must be 1 to N (here 1 to {count})")
        return cls(number, count)

    def windows(self, num_windows: int) -> range:
        """This shard's window indices: the K-th of N contiguous, near-equal ranges (empty when N > windows)."""
        start = (self.number - 1) * num_windows // self.count
        stop = self.number * num_windows // self.count
        return range(start, stop)

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def all_windows(num_windows: int) -> range:
    return range(num_windows)

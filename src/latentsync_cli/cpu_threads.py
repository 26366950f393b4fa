"""How many threads torch's CPU kernels get in a latentsync process."""

from __future__ import annotations

import os


def job_cpu_threads() -> int:
    """One fewer than the cores this process may use, and at least one.

    A job keeps a core busy with its own lanes (decoding, face landmarks, the paste,
    ffmpeg's encoder). torch's threads, which meet after every kernel, then wait for
    that core: on 2 cores the proxy's denoising took 14.4 s on two threads and 5.4 s
    on one (docs/PERFORMANCE.md). The `latentsync` command uses this unless
    OMP_NUM_THREADS is set, and so does a Ray worker on the CPU, so that a shard
    computes what a single run does (a kernel's numbers can depend on its threads).
    """
    return max(1, available_cores() - 1)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

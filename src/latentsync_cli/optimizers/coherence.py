"""A coherent start across windows: a warm start from the previous window, or overlapping windows.

Upstream denoises every window alone from the same noise, so the mouth can jump
at a window border. Two remedies, each its own setting:

  warm start      window k starts from window k-1's last frame (its denoised latents, on every
                  frame) noised back to step `first_step` of the schedule, and runs only the
                  steps from there: fewer steps, and a start that continues the last window.
                  Window k then depends on window k-1, so the windows must be made in order, one
                  per UNet call: shards, Ray and work dirs (resume) refuse it (jobs/run.py).
  window overlap  window k also makes the `overlap` frames before its own, and those frames are
                  cross-faded from window k-1's faces to window k's (pipeline/overlap_blend.py).
                  Each window is still made from its own frames only, so shards and resume give
                  the single run's video; the price is `overlap` more frames per window.
"""

from __future__ import annotations

from dataclasses import dataclass

from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


@dataclass(frozen=True)
class WarmStartPlan:
    enabled: bool = False
    strength: float = 0.5  # the share of the steps a warm-started window runs

    @classmethod
    def from_settings(cls, settings: RunSettings) -> WarmStartPlan:
        return cls(enabled=settings.warm_start, strength=settings.warm_start_strength)

    def first_step(self, steps: int) -> int:
        """The step a warm-started window starts at (it runs at least one step)."""
        return min(steps - 1, steps - round(self.strength * steps))


def warm_start_entry(settings: RunSettings) -> LogEntry:
    name = "warm start"
    if not settings.warm_start:
        return LogEntry(name, OFF, "every window starts from the shared noise and runs every step")
    plan = WarmStartPlan.from_settings(settings)
    runs = settings.steps - plan.first_step(settings.steps)
    detail = (
        f"windows after the first start from the previous window's last frame noised back to step "
        f"{plan.first_step(settings.steps) + 1} and run {runs} of {settings.steps} steps; one window per UNet call"
    )
    return LogEntry(name, APPLIED, detail)


def window_overlap_entry(settings: RunSettings) -> LogEntry:
    name = "window overlap"
    overlap = settings.window_overlap
    if overlap == 0:
        return LogEntry(name, OFF, "windows meet edge to edge")
    detail = (
        f"each window also makes the {overlap} frames before it ({settings.window + overlap} frames per window), "
        "cross-faded from the previous window's faces to its own"
    )
    return LogEntry(name, APPLIED, detail)

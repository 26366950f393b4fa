"""DeepCache: reuse the deep UNet features between nearby denoising steps.

Step i of a window is a full UNet pass iff i % interval == 0; the full pass
stores the hidden state entering the recomputed up layer in a `FeatureCache`,
and the steps in between run only the shallow layers on top of it. Each window
(or group of windows batched in one call) gets a new cache, so the cache
never crosses windows, as upstream's step counter restarts per chunk.

The cache is a plain object passed as an argument, with a bool that selects
the path, so it also works under torch.compile (one graph per path).
"""

from __future__ import annotations

from dataclasses import dataclass

from latentsync_cli.models.unet import FeatureCache
from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


@dataclass(frozen=True)
class DeepCachePlan:
    enabled: bool = False
    interval: int = 3
    branch: int = 0

    @classmethod
    def from_settings(cls, settings: RunSettings) -> DeepCachePlan:
        return cls(enabled=settings.deepcache, interval=settings.deepcache_interval, branch=settings.deepcache_branch)

    def is_full_pass(self, step: int) -> bool:
        return not self.enabled or step % self.interval == 0

    def full_pass_steps(self, steps: int) -> list[int]:
        return [step for step in range(steps) if self.is_full_pass(step)]

    def new_cache(self) -> FeatureCache | None:
        """A fresh cache for one window (None when DeepCache is off)."""
        return FeatureCache(branch=self.branch) if self.enabled else None

    def before_step(self, cache: FeatureCache | None, step: int) -> None:
        if cache is not None:
            cache.reuse = not self.is_full_pass(step)

    def describe(self, steps: int) -> str:
        full = len(self.full_pass_steps(steps))
        return f"interval {self.interval}, branch {self.branch} (full UNet on {full} of {steps} steps)"


def deepcache_entry(plan: DeepCachePlan, steps: int) -> LogEntry:
    """The record of the DeepCache plan (a plan field the denoise loop follows)."""
    if plan.enabled:
        return LogEntry("deepcache", APPLIED, plan.describe(steps))
    return LogEntry("deepcache", OFF, f"full UNet on all {steps} steps")

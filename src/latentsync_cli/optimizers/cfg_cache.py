"""CFG cache (FasterCache's idea): the unconditional half of a guided step, every few steps only.

With guidance g > 1 every step runs the UNet on [unconditional, conditional]
and takes eps = u + g (c - u). The difference d = c - u changes slowly from
step to step, so the CFG cache runs the unconditional half only every
`interval` steps (and on the first step a UNet call computes), keeps d, and
in between runs the conditional half alone and takes eps = c + (g - 1) d:
the UNet batch is halved on those steps (counted as `uncond_reused`).

With DeepCache the cached deep features cover both halves of the batch: a
conditional-only full pass renews the conditional half and keeps the
unconditional half of the last full pass that had it (see `split_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentsync_cli.models.unet import FeatureCache
from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


@dataclass(frozen=True)
class CfgCachePlan:
    enabled: bool = False
    interval: int = 2

    @classmethod
    def from_settings(cls, settings: RunSettings) -> CfgCachePlan:
        return cls(enabled=settings.cfg_cache and settings.uses_cfg, interval=settings.cfg_cache_interval)

    def runs_unconditional(self, step: int, last_unconditional_step: int | None) -> bool:
        """Whether `step` runs the unconditional half (always, unless a recent step left its difference)."""
        if not self.enabled or last_unconditional_step is None:
            return True
        return step - last_unconditional_step >= self.interval


def conditional_cache(cache: FeatureCache | None) -> FeatureCache | None:
    """The cache a conditional-only pass uses: the conditional half of the stored deep features."""
    if cache is None:
        return None
    hidden = cache.hidden
    if hidden is not None:
        hidden = hidden.chunk(2)[1]
    return FeatureCache(branch=cache.branch, hidden=hidden, reuse=cache.reuse)


def merge_conditional_cache(cache: FeatureCache | None, conditional: FeatureCache | None) -> None:
    """After a conditional-only full pass: its features replace the conditional half of `cache`'s."""
    if cache is None or conditional is None or cache.reuse:
        return
    unconditional = cache.hidden.chunk(2)[0]
    cache.hidden = torch.cat([unconditional, conditional.hidden])


def cfg_cache_entry(settings: RunSettings) -> LogEntry:
    name = "cfg cache"
    if not settings.cfg_cache:
        return LogEntry(name, OFF, "the unconditional pass runs on every guided step")
    if not settings.uses_cfg:
        return LogEntry(name, OFF, f"guidance {settings.guidance:g}: no unconditional pass to cache")
    every = settings.cfg_cache_interval
    detail = (
        f"unconditional pass every {every} steps; the steps between run the conditional half only "
        "and reuse its last difference (UNet batch halved there)"
    )
    return LogEntry(name, APPLIED, detail)

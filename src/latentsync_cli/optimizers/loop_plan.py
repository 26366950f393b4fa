"""LoopPlan: the speed ideas the denoising loop follows (pipeline/denoise.py), each off by default."""

from __future__ import annotations

from dataclasses import dataclass, field

from latentsync_cli.optimizers.cfg_cache import CfgCachePlan
from latentsync_cli.optimizers.multiscale import MultiscalePlan
from latentsync_cli.optimizers.step_skipping import StepSkipPlan


@dataclass(frozen=True)
class LoopPlan:
    cfg_cache: CfgCachePlan = field(default_factory=CfgCachePlan)
    skipping: StepSkipPlan = field(default_factory=StepSkipPlan)
    multiscale: MultiscalePlan = field(default_factory=MultiscalePlan)


UPSTREAM_LOOP = LoopPlan()  # upstream's loop: every step, both halves of the guided batch, full resolution

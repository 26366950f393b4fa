"""The denoising scheduler: upstream's DDIM, or a swap to DPM-Solver++ 2M, Euler or UniPC.

All four are diffusers schedulers built from the same config (upstream's
`configs/scheduler_config.json` values), so they share the betas and the
timestep spacing; only the solver differs.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from latentsync_cli.constants import SCHEDULERS
from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.settings import RunSettings

UPSTREAM_STEPS = 20

UPSTREAM_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

SCHEDULER_TITLES = {
    "ddim": "DDIM",
    "dpmpp_2m": "DPM-Solver++ 2M",
    "euler": "Euler",
    "unipc": "UniPC",
}


def make_scheduler(name: str, steps: int, device=None) -> SchedulerMixin:
    """A fresh scheduler with its timesteps set (multistep solvers keep state, so one per window)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    ddim = DDIMScheduler(**UPSTREAM_SCHEDULER_CONFIG)
    if name == "ddim":
        scheduler = ddim
    elif name == "dpmpp_2m":
        scheduler = DPMSolverMultistepScheduler.from_config(ddim.config, algorithm_type="dpmsolver++", solver_order=2)
    elif name == "euler":
        scheduler = EulerDiscreteScheduler.from_config(ddim.config)
    else:
        scheduler = UniPCMultistepScheduler.from_config(ddim.config)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


class StepScaling:
    """Records the number of denoising steps (already chosen by the quality preset in RunSettings)."""

    name = "step scaling"

    def apply(self, settings: RunSettings, log: OptimizationLog) -> None:
        if settings.steps == UPSTREAM_STEPS:
            log.off(self.name, f"{settings.steps} steps, as upstream")
        else:
            chosen_by = f"mode {settings.mode}, quality {settings.quality}"
            log.applied(self.name, f"{settings.steps} steps instead of upstream's {UPSTREAM_STEPS} ({chosen_by})")


class SchedulerSwap:
    """Records which scheduler runs; the pipeline builds it with `make_scheduler` for every window."""

    name = "scheduler"

    def apply(self, settings: RunSettings, log: OptimizationLog) -> None:
        title = SCHEDULER_TITLES[settings.scheduler]
        timesteps = make_scheduler(settings.scheduler, settings.steps).timesteps.tolist()
        shown = ", ".join(str(int(t)) for t in timesteps)
        if settings.scheduler == "ddim":
            log.off(self.name, f"DDIM, as upstream (timesteps {shown})")
        else:
            log.applied(self.name, f"{title} instead of DDIM, same betas (timesteps {shown})")

"""The denoising scheduler: upstream's DDIM, or a swap to DPM-Solver++ 2M, Euler or UniPC, and its steps.

All four are diffusers schedulers built from the same config (upstream's
`configs/scheduler_config.json` values), so they share the betas and the
timestep spacing; only the solver differs.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from latentsync_cli.constants import SCHEDULERS, TRAIN_TIMESTEPS
from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings

UPSTREAM_STEPS = 20

UPSTREAM_SCHEDULER_CONFIG = {
    "num_train_timesteps": TRAIN_TIMESTEPS,
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


def steps_entry(settings: RunSettings) -> LogEntry:
    """The record of the number of denoising steps (a plan field, chosen in RunSettings)."""
    if settings.steps == UPSTREAM_STEPS:
        return LogEntry("step scaling", OFF, f"{settings.steps} steps, as upstream")
    return LogEntry("step scaling", APPLIED, f"{settings.steps} steps instead of upstream's {UPSTREAM_STEPS}")


def scheduler_entry(settings: RunSettings) -> LogEntry:
    """The record of the scheduler (a plan field: RunPlan.make_scheduler builds it for every UNet call)."""
    timesteps = make_scheduler(settings.scheduler, settings.steps).timesteps.tolist()
    shown = ", ".join(str(int(t)) for t in timesteps)
    if settings.scheduler == "ddim":
        return LogEntry("scheduler", OFF, f"DDIM, as upstream (timesteps {shown})")
    title = SCHEDULER_TITLES[settings.scheduler]
    return LogEntry("scheduler", APPLIED, f"{title} instead of DDIM, same betas (timesteps {shown})")

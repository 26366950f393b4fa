"""The run plan: what one run computes with, decided once from its settings, and the record of each choice.

    plan = build_run_plan(unet, vae, settings, device, face_size)
    plan.make_scheduler(device), plan.guidance, plan.deepcache   read by the denoise loop
    plan.loop                                                    the loop's speed ideas (CFG cache, step
                                                                 skipping, multi-scale steps)
    plan.warm_start, plan.window_overlap, plan.smart_batching    read by the pipeline around the loop
    plan.unet_call                                               the UNet, compiled and/or graph-replayed
    plan.memory                                                  the memory ladder's first rung
    plan.log                                                     the optimization table users see

Process-wide torch switches are not in the plan: see torch_switches.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.optimizers.batching import guidance_entry, smart_batching_entry, windows_per_call_entry
from latentsync_cli.optimizers.cfg_cache import CfgCachePlan, cfg_cache_entry
from latentsync_cli.optimizers.coherence import WarmStartPlan, warm_start_entry, window_overlap_entry
from latentsync_cli.optimizers.compile import TorchCompile
from latentsync_cli.optimizers.cuda_graphs import CudaGraphs, CudaGraphUNet
from latentsync_cli.optimizers.deepcache import DeepCachePlan, deepcache_entry
from latentsync_cli.optimizers.loop_plan import LoopPlan
from latentsync_cli.optimizers.memory import MemorySettings
from latentsync_cli.optimizers.memory_format import ChannelsLast, unet_layout_entry
from latentsync_cli.optimizers.multiscale import MultiscalePlan, multiscale_entry
from latentsync_cli.optimizers.precision import precision_entry
from latentsync_cli.optimizers.schedulers import make_scheduler, scheduler_entry, steps_entry
from latentsync_cli.optimizers.step_skipping import StepSkipPlan, step_skipping_entry
from latentsync_cli.optimizers.torch_builtins import attention_entry
from latentsync_cli.optimizers.torch_switches import memory_fraction_entry, tf32_entry
from latentsync_cli.optimizers.vae_memory import VaeSlicing, VaeTiling
from latentsync_cli.settings.run_settings import RunSettings


@dataclass
class RunPlan:
    steps: int
    scheduler: str  # one of constants.SCHEDULERS
    guidance: float  # > 1: classifier-free guidance; 1: the unconditional pass is skipped
    deepcache: DeepCachePlan
    memory: MemorySettings  # the starting rung of the out-of-memory ladder (windows per call, VAE memory)
    unet_call: Callable  # what the denoising loop calls: the UNet, compiled and/or graph-replayed
    log: OptimizationLog
    loop: LoopPlan = field(default_factory=LoopPlan)  # the denoising loop's speed ideas
    warm_start: WarmStartPlan = field(default_factory=WarmStartPlan)
    window_overlap: int = 0  # frames each window also makes of the previous one
    smart_batching: bool = False  # equal-length windows share a call in any order
    graphs: CudaGraphUNet | None = None  # set by CudaGraphs, so the ladder can drop its graphs

    def make_scheduler(self, device: torch.device | None = None) -> SchedulerMixin:
        """A fresh scheduler with the plan's timesteps (multistep solvers keep state: one per UNet call)."""
        return make_scheduler(self.scheduler, self.steps, device)


def build_run_plan(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    settings: RunSettings,
    device: torch.device,
    face_size: int,
    compile_backend: str | Callable = "inductor",
) -> RunPlan:
    """The plan of one run; applies the optimizers that change the VAE and the UNet call, records every choice."""
    plan = RunPlan(
        steps=settings.steps,
        scheduler=settings.scheduler,
        guidance=settings.guidance,
        deepcache=DeepCachePlan.from_settings(settings),
        memory=MemorySettings(max(1, settings.windows_per_call), settings.vae_slicing, settings.vae_tiling),
        unet_call=unet,
        log=OptimizationLog(),
        loop=loop_plan(unet, settings, face_size),
        warm_start=WarmStartPlan.from_settings(settings),
        window_overlap=settings.window_overlap,
        smart_batching=settings.smart_batching,
    )
    # In the order of the optimization table.
    entries = [
        precision_entry(settings, unet),
        tf32_entry(settings, device),
        steps_entry(settings),
        scheduler_entry(settings),
        deepcache_entry(plan.deepcache, settings.steps),
        guidance_entry(settings),
        cfg_cache_entry(settings),
        step_skipping_entry(settings),
        multiscale_entry(settings, plan.loop.multiscale, face_size // 8),
        windows_per_call_entry(settings),
        smart_batching_entry(settings),
        warm_start_entry(settings),
        window_overlap_entry(settings),
        ChannelsLast().apply(vae, settings, device),
        unet_layout_entry(settings),  # None unless channels_last was asked for
        VaeSlicing().apply(vae, settings, device),
        VaeTiling(face_size).apply(vae, settings, device),
        memory_fraction_entry(settings, device),
        TorchCompile(compile_backend).apply(plan, settings, device),  # None when on: the first call records it
        CudaGraphs().apply(plan, settings, device),
        attention_entry(unet, device, face_size, settings.window + settings.window_overlap),
    ]
    for entry in entries:
        if entry is not None:
            plan.log.add(entry)
    return plan


def loop_plan(unet: torch.nn.Module, settings: RunSettings, face_size: int) -> LoopPlan:
    """The denoising loop's speed ideas; step skipping reads the raw UNet's first block (not a compiled call)."""
    signal = getattr(unet, "first_block_input", None)
    factor = unet.config.downscale_factor if hasattr(unet, "config") else 8
    return LoopPlan(
        cfg_cache=CfgCachePlan.from_settings(settings),
        skipping=StepSkipPlan.from_settings(settings, signal),
        multiscale=MultiscalePlan.from_settings(settings, face_size // 8, factor),
    )

"""Apply every optimizer of a run, in order, and collect what the pipeline runs with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.optimizers.batching import GuidanceSkip, WindowBatching
from latentsync_cli.optimizers.compile import TorchCompile
from latentsync_cli.optimizers.cuda_graphs import CudaGraphs, CudaGraphUNet
from latentsync_cli.optimizers.deepcache import DeepCache, DeepCachePlan
from latentsync_cli.optimizers.memory import MemoryFraction, MemorySettings
from latentsync_cli.optimizers.memory_format import ChannelsLast
from latentsync_cli.optimizers.precision import TF32, Precision
from latentsync_cli.optimizers.schedulers import SchedulerSwap, StepScaling
from latentsync_cli.optimizers.vae_memory import VaeMemory
from latentsync_cli.settings import RunSettings


@dataclass
class RunPlan:
    unet_call: Callable  # what the denoising loop calls: the UNet, compiled and/or graph-replayed
    deepcache: DeepCachePlan
    memory: MemorySettings  # the starting rung of the out-of-memory ladder
    pad_frames_to: int | None  # static window length for CUDA graphs, else None
    graphs: CudaGraphUNet | None
    log: OptimizationLog


def apply_optimizations(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    settings: RunSettings,
    device: torch.device,
    face_size: int,
    compile_backend: str = "inductor",
) -> RunPlan:
    log = OptimizationLog()
    Precision().apply(settings, unet, log)
    TF32().apply(settings, device, log)
    StepScaling().apply(settings, log)
    SchedulerSwap().apply(settings, log)
    deepcache = DeepCache().apply(settings, log)
    GuidanceSkip().apply(settings, log)
    windows_per_call = WindowBatching().apply(settings, log)
    ChannelsLast().apply(settings, vae, log)
    VaeMemory().apply(settings.vae_slicing, settings.vae_tiling, vae, log, face_size)
    MemoryFraction().apply(settings.memory_fraction, device, log)
    unet_call = TorchCompile().apply(settings, unet, log, backend=compile_backend)
    unet_call = CudaGraphs().apply(settings, device, unet_call, log)
    graphs = unet_call if isinstance(unet_call, CudaGraphUNet) else None
    return RunPlan(
        unet_call=unet_call,
        deepcache=deepcache,
        memory=MemorySettings(windows_per_call, settings.vae_slicing, settings.vae_tiling, offload=False),
        pad_frames_to=settings.window if graphs is not None else None,
        graphs=graphs,
        log=log,
    )

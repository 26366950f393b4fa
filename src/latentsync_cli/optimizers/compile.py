"""torch.compile of the UNet's forward, with a recorded fall back to eager when compiling fails.

Compilation happens lazily on the first call, so that is where a failure shows;
the caller then runs eagerly for the rest of the job and the log says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latentsync_cli.optimizers import OFF, LogEntry, OptimizationLog
from latentsync_cli.settings.run_settings import RunSettings


class CompiledUNet:
    """Calls `unet` through torch.compile; on a compile error, records it and calls it eagerly."""

    name = "torch.compile"

    def __init__(self, unet: torch.nn.Module, mode: str, log: OptimizationLog, backend: str | Callable = "inductor"):
        self.unet = unet
        self.mode = mode
        self.log = log
        options = {} if backend != "inductor" else {"mode": mode}
        self.compiled = torch.compile(unet.forward, backend=backend, **options)
        self.succeeded = False

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(self, sample, timestep, audio_embeds, cache=None):
        if self.compiled is not None:
            try:
                output = self.compiled(sample, timestep, audio_embeds, cache=cache)
            except torch.OutOfMemoryError:
                raise  # the memory ladder handles this, not the fall back
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.compiled = None
                reason = " ".join(str(error).split())[:160]
                self.log.skipped(
                    self.name, f"compiling the UNet failed ({type(error).__name__}: {reason}); running eager"
                )
            else:
                if not self.succeeded:
                    self.succeeded = True
                    self.log.applied(self.name, f"UNet forward compiled, mode {self.mode}")
                return output
        return self.unet(sample, timestep, audio_embeds, cache=cache)


class TorchCompile:
    """Replaces the plan's UNet call with CompiledUNet, which records on its first call how compiling went."""

    name = "torch.compile"

    def __init__(self, backend: str | Callable = "inductor"):
        self.backend = backend

    def apply(self, plan, settings: RunSettings, device: torch.device) -> LogEntry | None:
        """`plan` is the RunPlan being built. None when compiling: the entry comes with the first call."""
        if not settings.compile:
            return LogEntry(self.name, OFF, "UNet runs eagerly")
        plan.unet_call = CompiledUNet(plan.unet_call, settings.compile_mode, plan.log, backend=self.backend)
        return None

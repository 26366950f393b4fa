"""Running out of GPU memory without failing the job: a ladder of cheaper memory settings.

On torch.OutOfMemoryError the same windows are tried again, each time one rung
lower: fewer windows per UNet call (halved down to 1), then VAE slicing, then
VAE tiling, then model offload (the UNet and VAE sit on the GPU only while
used). The first rung is the run plan's `memory`. Each downgrade is logged.
Only when the lowest rung fails too does the job end, with DeviceMemoryError
(exit code 7).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from latentsync_cli.errors import DeviceMemoryError
from latentsync_cli.optimizers import OptimizationLog

T = TypeVar("T")


@dataclass(frozen=True)
class MemorySettings:
    windows_per_call: int = 1
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: bool = False

    def lower(self) -> tuple[MemorySettings, str] | None:
        """The next rung down and what changed, or None at the bottom of the ladder."""
        if self.windows_per_call > 1:
            fewer = max(1, self.windows_per_call // 2)
            return replace(self, windows_per_call=fewer), f"windows per call {self.windows_per_call} -> {fewer}"
        if not self.vae_slicing:
            return replace(self, vae_slicing=True), "VAE slicing on"
        if not self.vae_tiling:
            return replace(self, vae_tiling=True), "VAE tiling on"
        if not self.offload:
            return replace(self, offload=True), "model offload on (UNet and VAE on the GPU only while used)"
        return None


def free_device_memory(device: torch.device) -> None:
    """Return cached GPU blocks to the driver (after dropping unreachable tensors); nothing to do on CPU."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


class MemoryLadder:
    """Runs GPU work with the current memory settings, stepping down after out-of-memory errors."""

    name = "memory"

    def __init__(
        self,
        start: MemorySettings,
        device: torch.device,
        log: OptimizationLog,
        on_change: Callable[[MemorySettings], None],
    ):
        self.current = start
        self.device = device
        self.log = log
        self.on_change = on_change
        self.downgrades: list[str] = []

    def run(self, work: Callable[[MemorySettings], T], where: str) -> T:
        """work(settings) until it fits; `where` names the work in the log (e.g. "windows 3-4")."""
        while True:
            try:
                return work(self.current)
            except torch.OutOfMemoryError:
                pass  # handled below, outside the except block, so the failed call's tensors can be freed
            free_device_memory(self.device)
            lower = self.current.lower()
            if lower is None:
                raise DeviceMemoryError(
                    f"out of {self.device.type} memory at {where} even with 1 window per call, VAE slicing and "
                    "tiling and model offload; try a smaller --window, --precision fp16 or another GPU"
                )
            self.current, change = lower
            self.downgrades.append(change)
            self.log.downgraded(self.name, f"{change} after running out of memory at {where}")
            self.on_change(self.current)


@contextmanager
def on_device(model: torch.nn.Module, device: torch.device, offload: bool) -> Iterator[None]:
    """With offload, move `model` to `device` for the body and back to the CPU after; else do nothing."""
    if not offload:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")
        free_device_memory(device)

"""Process-wide torch switches a run asks for: TF32 matmuls and a cap on the GPU memory.

They change global state, so `torch_switches` sets them around one run and
restores what was there before, whatever way the run ends. LipsyncPipeline.run
enters it, so every caller (the CLI, the benchmark, scripts) gets the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings

NO_CAP = 1.0  # torch's own default: the whole GPU


def uses_tf32(settings: RunSettings, device: torch.device) -> bool:
    """TensorFloat-32 for fp32 matmuls and convolutions exists only on CUDA (Ampere and later)."""
    return settings.tf32 and device.type == "cuda"


def memory_cap(settings: RunSettings, device: torch.device) -> float | None:
    """This process's share of the GPU memory, or None when nothing is capped."""
    if device.type != "cuda" or settings.memory_fraction >= NO_CAP:
        return None
    return settings.memory_fraction


def tf32_entry(settings: RunSettings, device: torch.device) -> LogEntry:
    if not settings.tf32:
        return LogEntry("tf32", OFF, "full fp32 matmuls")
    if not uses_tf32(settings, device):
        return LogEntry("tf32", SKIPPED, f"TF32 exists only on CUDA devices, not {device.type}")
    note = "" if settings.precision == "fp32" else f" (little effect: the models run in {settings.precision})"
    return LogEntry("tf32", APPLIED, f"fp32 matmuls and convolutions in TF32{note}")


def memory_fraction_entry(settings: RunSettings, device: torch.device) -> LogEntry:
    name = "memory fraction"
    if device.type != "cuda":
        return LogEntry(name, SKIPPED, f"a GPU memory cap needs a CUDA device, this run uses {device.type}")
    cap = memory_cap(settings, device)
    if cap is None:
        return LogEntry(name, OFF, "no cap on GPU memory")
    return LogEntry(name, APPLIED, f"at most {cap:.0%} of the GPU's memory")


@contextmanager
def torch_switches(settings: RunSettings, device: torch.device) -> Iterator[None]:
    """Set TF32 and the GPU memory cap as `settings` ask for the body, then put back what was there."""
    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cap = memory_cap(settings, device)
    saved_cap = current_memory_fraction(device) if cap is not None else None
    if uses_tf32(settings, device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(cap, device)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
        if saved_cap is not None:
            torch.cuda.set_per_process_memory_fraction(saved_cap, device)


def current_memory_fraction(device: torch.device) -> float:
    # torch.cuda.get_per_process_memory_fraction is newer than the oldest torch we support;
    # without it, restoring means going back to torch's default of no cap.
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    return NO_CAP if getter is None else float(getter(device))

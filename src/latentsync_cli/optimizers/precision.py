"""Numeric precision of the UNet and VAE (fp32, fp16, bf16).

The models are loaded in the run's dtype (load_models takes `dtype_for(settings.precision)`),
so precision is no optimizer here: the entry checks and records what was loaded.
"""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAME = "precision"


def dtype_for(precision: str) -> torch.dtype:
    """The torch dtype the models are loaded in for a precision name."""
    return DTYPES[precision]


def precision_entry(settings: RunSettings, unet: torch.nn.Module) -> LogEntry:
    loaded = next(unet.parameters()).dtype
    if loaded != dtype_for(settings.precision):
        return LogEntry(NAME, SKIPPED, f"{settings.precision} was asked for, but the UNet is {loaded}")
    if settings.precision == "fp32":
        return LogEntry(NAME, OFF, "fp32 weights and activations")
    return LogEntry(NAME, APPLIED, f"{settings.precision} UNet and VAE (the scheduler math stays fp32)")

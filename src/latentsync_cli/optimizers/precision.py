"""Numeric precision of the UNet and VAE (fp32, fp16, bf16) and TF32 matmuls on CUDA."""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.settings import RunSettings

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_for(precision: str) -> torch.dtype:
    """The torch dtype the models are loaded in for a precision name."""
    return DTYPES[precision]


class Precision:
    """Records the dtype the models were loaded in (load_models takes it, see `dtype_for`)."""

    name = "precision"

    def apply(self, settings: RunSettings, unet: torch.nn.Module, log: OptimizationLog) -> None:
        loaded = next(unet.parameters()).dtype
        if loaded != dtype_for(settings.precision):
            log.skipped(self.name, f"{settings.precision} was asked for, but the UNet is {loaded}")
        elif settings.precision == "fp32":
            log.off(self.name, "fp32 weights and activations")
        else:
            log.applied(self.name, f"{settings.precision} UNet and VAE (the scheduler math stays fp32)")


class TF32:
    """TensorFloat-32 for fp32 matmuls and convolutions; exists only on CUDA (Ampere and later)."""

    name = "tf32"

    def apply(self, settings: RunSettings, device: torch.device, log: OptimizationLog) -> None:
        if not settings.tf32:
            log.off(self.name, "full fp32 matmuls")
            return
        if device.type != "cuda":
            log.skipped(self.name, f"TF32 exists only on CUDA devices, not {device.type}")
            return
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        note = "" if settings.precision == "fp32" else f" (little effect: the models run in {settings.precision})"
        log.applied(self.name, f"fp32 matmuls and convolutions in TF32{note}")

"""UNet FLOPs from a run's step counts, with the per-call numbers of ../shared/reference/COST_MODEL.md.

COST_MODEL.md measured LatentSync 1.6's UNet (upstream's code, FlopCounterMode) per call of 16
frames: a batch-1 forward is 17.626 TFLOP at 64x64 latents, 4.0505 at 32x32 and 1.0012 at
16x16; a DeepCache cached step (branch 0) of the CFG batch is 3.8123 TFLOP at 64x64, 10.8 % of the
full CFG forward (35.251). Divided by 16 frames, that is the cost of one frame pass (one frame of
one batch row), which is what UNetSteps.frame_passes counts. Two estimates, said here once:
the cost is taken as linear in the frames (the temporal attention's frames-squared part is small),
and a cached step at another latent size costs the same 10.8 % of that size's full pass.

The numbers are LatentSync 1.6's at its 512 px faces (64x64 latents) whatever model ran: a run
with the tiny test model or the proxy counts the passes, and this says what those passes would
cost the real model. Only convolutions, matmuls and attention products are counted (the cost
model's lower bound).
"""

from __future__ import annotations

from latentsync_cli.constants import FPS
from latentsync_cli.unet_steps import UNetSteps

COST_MODEL_FRAMES = 16  # the frames of one measured call
FULL_PASS_TFLOP = {64: 17.626, 32: 4.0505, 16: 1.0012}  # batch-1 forward of 16 frames, by latent side
CACHED_SHARE = 3.8123 / 35.251  # a DeepCache cached step against the full forward of the same batch
REAL_LATENT_SIZE = 64  # LatentSync 1.6: 512 px faces


def frame_pass_tflop(kind: str, latent_size: int = REAL_LATENT_SIZE) -> float:
    """TFLOP of one frame pass of `kind` (UNetSteps.frame_passes' keys) at `latent_size`."""
    size = latent_size // 2 if kind.endswith("_half_res") else latent_size
    if size not in FULL_PASS_TFLOP:
        raise ValueError(f"COST_MODEL.md has no UNet numbers for {size}x{size} latents")
    full = FULL_PASS_TFLOP[size] / COST_MODEL_FRAMES
    return full * CACHED_SHARE if kind.startswith("cached") else full


def unet_tflop(steps: UNetSteps, latent_size: int = REAL_LATENT_SIZE) -> float:
    """LatentSync 1.6's UNet TFLOP for the passes `steps` counted (skipped steps cost nothing)."""
    return sum(count * frame_pass_tflop(kind, latent_size) for kind, count in steps.frame_passes.items() if count)


def unet_tflop_per_output_second(steps: UNetSteps, frames: int, latent_size: int = REAL_LATENT_SIZE) -> float:
    """UNet TFLOP per second of 25 fps output video."""
    if frames <= 0:
        raise ValueError("no output frames")
    return unet_tflop(steps, latent_size) / (frames / FPS)

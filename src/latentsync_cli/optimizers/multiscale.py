"""Multi-scale early steps: the first, high-noise steps at half the latent resolution.

On those steps the UNet sees every other latent pixel in each direction (the
noisy latents, the mask and the face latents alike), which keeps the noise's
per-pixel statistics the UNet was trained on, at a quarter of the pixels. Its
noise prediction covers the low frequencies; the high frequencies of a
high-noise input are almost all noise, so the full-resolution prediction is

    eps = upsample(eps_half) + (x - upsample(subsample(x))) / sqrt(1 - alpha_bar_t)

with x the scaled model input (every scheduler's `scale_model_input` gives
x = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps) and nearest upsampling.
The scheduler itself always steps at full resolution, so every scheduler works
unchanged, and the later steps at full resolution draw the detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


@dataclass(frozen=True)
class MultiscalePlan:
    enabled: bool = False
    share: float = 0.25  # of the steps, at half resolution

    @classmethod
    def from_settings(cls, settings: RunSettings, latent_size: int, downscale_factor: int) -> MultiscalePlan:
        usable = latent_size % (2 * downscale_factor) == 0
        return cls(enabled=settings.multiscale and usable, share=settings.multiscale_share)

    def half_res_steps(self, steps: int) -> int:
        """How many of the first steps run at half resolution (at least one, never the last)."""
        if not self.enabled or steps < 2:
            return 0
        return min(steps - 1, max(1, round(self.share * steps)))


def subsample(tensor: Tensor) -> Tensor:
    """(..., h, w) -> (..., h/2, w/2): every other pixel in each direction."""
    return tensor[..., ::2, ::2]


def upsample(tensor: Tensor) -> Tensor:
    """(..., h, w) -> (..., 2h, 2w), each pixel repeated (the inverse of `subsample` on the kept pixels)."""
    return tensor.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def full_resolution_noise(half_noise: Tensor, model_input: Tensor, alpha_bar: float) -> Tensor:
    """The full-resolution noise prediction from the half-resolution one (see the module's formula)."""
    high_frequencies = model_input - upsample(subsample(model_input))
    return upsample(half_noise) + high_frequencies / (1.0 - alpha_bar) ** 0.5


def alpha_bar(scheduler, timestep: Tensor) -> float:
    """The scheduler's cumulative alpha at `timestep`."""
    return float(scheduler.alphas_cumprod[int(torch.as_tensor(timestep).item())])


def multiscale_entry(settings: RunSettings, plan: MultiscalePlan, latent_size: int) -> LogEntry:
    name = "multi-scale steps"
    if not settings.multiscale:
        return LogEntry(name, OFF, "every step at full latent resolution")
    if not plan.enabled:
        return LogEntry(name, SKIPPED, f"{latent_size}x{latent_size} latents cannot be halved for this UNet")
    half = plan.half_res_steps(settings.steps)
    detail = (
        f"the first {half} of {settings.steps} steps at {latent_size // 2}x{latent_size // 2} latents "
        f"(a quarter of the pixels), the rest at {latent_size}x{latent_size}"
    )
    return LogEntry(name, APPLIED, detail)

"""The denoising loop for one UNet call's worth of windows, as upstream runs it per chunk.

The golden tests call `denoise` directly, so they check the code the pipeline
runs (FaceGenerator.denoise calls it for every UNet call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from latentsync_cli.optimizers.deepcache import DeepCachePlan

# on_step(step_index, timestep, latents_after_step, guided_noise_pred)
StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]


@dataclass
class DenoiseInputs:
    """Everything but the noise, for B windows of F frames each (latents h x w)."""

    mask: Tensor  # (B, 1, F, h, w) 1 = keep, 0 = generate
    masked_latents: Tensor  # (B, 4, F, h, w) the face with the mouth blanked, encoded
    reference_latents: Tensor  # (B, 4, F, h, w) the whole face, encoded
    audio_embeds: Tensor  # (B*F, T, C) batch-major: row r is window r // F, frame r % F

    @property
    def num_frames(self) -> int:
        return self.mask.shape[2]


@dataclass
class DenoiseResult:
    latents: Tensor  # (B, 4, F, h, w) float32, denoised
    full_steps: int  # steps that ran the whole UNet
    cached_steps: int  # steps that ran only the shallow layers on DeepCache's deep features


def denoise(
    unet: Callable[..., Tensor],
    scheduler: SchedulerMixin,
    latents: Tensor,
    inputs: DenoiseInputs,
    guidance: float,
    deepcache: DeepCachePlan,
    on_step: StepCallback | None = None,
) -> DenoiseResult:
    """Run every scheduler step on `latents` (B, 4, F, h, w); the denoised latents and the steps of each kind.

    The UNet input is upstream's 13 channels [noisy 4 | mask 1 | masked 4 | reference 4].
    With guidance > 1 the batch is [unconditional (zero audio), conditional] and
    eps = u + guidance * (c - u); with guidance <= 1 only the conditional half runs.
    `scale_model_input` sees only the 4 noisy channels. Latents stay float32 between
    steps; the UNet gets its own dtype.
    """
    use_guidance = guidance > 1.0
    model_dtype = getattr(unet, "dtype", latents.dtype)
    condition = torch.cat([inputs.mask, inputs.masked_latents, inputs.reference_latents], dim=1)
    audio = inputs.audio_embeds
    if use_guidance:
        condition = torch.cat([condition, condition])
        audio = torch.cat([torch.zeros_like(audio), audio])
    condition = condition.to(model_dtype)
    audio = audio.to(model_dtype)

    cache = deepcache.new_cache()
    latents = latents.float()
    full_steps = cached_steps = 0
    for step, timestep in enumerate(scheduler.timesteps):
        noisy = torch.cat([latents, latents]) if use_guidance else latents
        noisy = scheduler.scale_model_input(noisy, timestep)
        sample = torch.cat([noisy.to(model_dtype), condition], dim=1)
        deepcache.before_step(cache, step)
        if cache is not None and cache.reuse:
            cached_steps += 1
        else:
            full_steps += 1
        noise_pred = unet(sample, timestep, audio, cache=cache).float()
        if use_guidance:
            unconditional, conditional = noise_pred.chunk(2)
            noise_pred = unconditional + guidance * (conditional - unconditional)
        latents = scheduler.step(noise_pred, timestep, latents).prev_sample
        if on_step is not None:
            on_step(step, timestep, latents, noise_pred)
    return DenoiseResult(latents, full_steps, cached_steps)

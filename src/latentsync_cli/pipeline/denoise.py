"""The denoising loop for one UNet call's worth of windows, as upstream runs it per chunk.

The golden tests call `denoise` directly, so they check the code the pipeline
runs (FaceGenerator.denoise calls it for every UNet call). With the default
`LoopPlan` it is upstream's loop; the speed ideas of the plan change it step by
step (optimizers/cfg_cache.py, step_skipping.py, multiscale.py say how), and
`first_step` > 0 starts it part-way (a warm-started window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from latentsync_cli.optimizers.cfg_cache import (
    CfgCachePlan,
    conditional_cache,
    merge_conditional_cache,
)
from latentsync_cli.optimizers.deepcache import DeepCachePlan
from latentsync_cli.optimizers.loop_plan import UPSTREAM_LOOP, LoopPlan
from latentsync_cli.optimizers.multiscale import (
    alpha_bar,
    full_resolution_noise,
    subsample,
)
from latentsync_cli.unet_steps import UNetSteps

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
    steps: UNetSteps  # what each step ran

    @property
    def full_steps(self) -> int:  # steps that ran the whole UNet
        return self.steps.full

    @property
    def cached_steps(self) -> int:  # steps that ran only the shallow layers on DeepCache's deep features
        return self.steps.cached


def denoise(
    unet: Callable[..., Tensor],
    scheduler: SchedulerMixin,
    latents: Tensor,
    inputs: DenoiseInputs,
    guidance: float,
    deepcache: DeepCachePlan,
    on_step: StepCallback | None = None,
    loop: LoopPlan = UPSTREAM_LOOP,
    first_step: int = 0,
) -> DenoiseResult:
    """Run the scheduler's steps from `first_step` on `latents` (B, 4, F, h, w); the denoised latents and the steps.

    The UNet input is upstream's 13 channels [noisy 4 | mask 1 | masked 4 | reference 4].
    With guidance > 1 the batch is [unconditional (zero audio), conditional] and
    eps = u + guidance * (c - u); with guidance <= 1 only the conditional half runs.
    `scale_model_input` sees only the 4 noisy channels. Latents stay float32 between
    steps; the UNet gets its own dtype.
    """
    predictor = NoisePredictor(unet, scheduler, inputs, guidance, deepcache, loop.cfg_cache)
    skipping = loop.skipping.new_state()
    timesteps = scheduler.timesteps
    half_res_steps = loop.multiscale.half_res_steps(len(timesteps))
    latents = latents.float()
    noise_pred = None
    for step in range(first_step, len(timesteps)):
        timestep = timesteps[step]
        reuse = False
        if skipping is not None:
            must_compute = noise_pred is None or step == len(timesteps) - 1
            reuse = skipping.skips(predictor.conditional_sample(latents, timestep), timestep, must_compute)
        if reuse:
            predictor.steps.skipped += 1
        else:
            noise_pred = predictor(latents, timestep, step, half_res=step < half_res_steps)
        latents = scheduler.step(noise_pred, timestep, latents).prev_sample
        if on_step is not None:
            on_step(step, timestep, latents, noise_pred)
    return DenoiseResult(latents, predictor.steps)


class NoisePredictor:
    """One step's guided noise prediction: the UNet call(s), DeepCache, the CFG cache and half resolution."""

    def __init__(self, unet, scheduler, inputs: DenoiseInputs, guidance: float, deepcache: DeepCachePlan,
                 cfg_cache: CfgCachePlan):  # fmt: skip
        self.unet = unet
        self.scheduler = scheduler
        self.guidance = guidance
        self.deepcache = deepcache
        self.cfg_cache = cfg_cache
        self.dtype = getattr(unet, "dtype", inputs.mask.dtype)
        self.conditions = UNetConditions(inputs, self.dtype)
        self.caches = {False: deepcache.new_cache(), True: deepcache.new_cache()}  # by half resolution
        self.steps = UNetSteps()
        self.difference: Tensor | None = None  # c - u of the last step that ran the unconditional half
        self.last_unconditional_step: int | None = None

    def conditional_sample(self, latents: Tensor, timestep: Tensor) -> Tensor:
        """The conditional half's full-resolution UNet input (for the step-skipping signal)."""
        condition, _ = self.conditions.get(guided=False, half_res=False)
        noisy = self.scheduler.scale_model_input(latents, timestep)
        return torch.cat([noisy.to(self.dtype), condition], dim=1)

    def __call__(self, latents: Tensor, timestep: Tensor, step: int, half_res: bool) -> Tensor:
        guided = self.guidance > 1.0
        cache = self.caches[half_res]
        self.deepcache.before_step(cache, step)
        if cache is not None and cache.hidden is None:  # a loop's first pass at this resolution is a full one
            cache.reuse = False
        with_unconditional = guided and (
            self.cfg_cache.runs_unconditional(step, self.last_unconditional_step)
            or (cache is not None and cache.hidden is None)
        )
        noisy = torch.cat([latents, latents]) if with_unconditional else latents
        noisy = self.scheduler.scale_model_input(noisy, timestep)
        model_input = subsample(noisy) if half_res else noisy
        condition, audio = self.conditions.get(with_unconditional, half_res)
        sample = torch.cat([model_input.to(self.dtype), condition], dim=1)
        call_cache = cache if with_unconditional or not guided else conditional_cache(cache)
        noise_pred = self.unet(sample, timestep, audio, cache=call_cache).float()
        if guided and not with_unconditional:
            merge_conditional_cache(cache, call_cache)
        cached = cache is not None and cache.reuse
        self.steps.count_pass(cached, half_res, frames=sample.shape[0] * sample.shape[2])
        if half_res:
            noise_pred = full_resolution_noise(noise_pred, noisy, alpha_bar(self.scheduler, timestep))
        return self.guide(noise_pred, with_unconditional, step) if guided else noise_pred

    def guide(self, noise_pred: Tensor, with_unconditional: bool, step: int) -> Tensor:
        """eps = u + g (c - u); without the unconditional half, u = c - (the last c - u)."""
        if with_unconditional:
            unconditional, conditional = noise_pred.chunk(2)
            if self.cfg_cache.enabled:
                self.difference = conditional - unconditional
                self.last_unconditional_step = step
            return unconditional + self.guidance * (conditional - unconditional)
        self.steps.uncond_reused += 1
        return noise_pred + (self.guidance - 1.0) * self.difference


class UNetConditions:
    """The UNet's constant channels and audio, for each batch layout and resolution a step may use."""

    def __init__(self, inputs: DenoiseInputs, dtype: torch.dtype):
        self.condition = torch.cat([inputs.mask, inputs.masked_latents, inputs.reference_latents], dim=1)
        self.audio = inputs.audio_embeds
        self.dtype = dtype
        self.made: dict[tuple[bool, bool], tuple[Tensor, Tensor]] = {}

    def get(self, guided: bool, half_res: bool) -> tuple[Tensor, Tensor]:
        """(condition channels, audio): with `guided`, the [unconditional, conditional] batch."""
        key = (guided, half_res)
        if key not in self.made:
            condition = subsample(self.condition) if half_res else self.condition
            audio = self.audio
            if guided:
                condition = torch.cat([condition, condition])
                audio = torch.cat([torch.zeros_like(audio), audio])
            self.made[key] = (condition.to(self.dtype), audio.to(self.dtype))
        return self.made[key]


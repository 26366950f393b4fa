"""Golden parity of the denoising loop with upstream (README §2 of the golden fixtures).

The same `denoise` function the pipeline runs, on the golden tiny UNet: 4 DDIM
steps with CFG 1.5, and 6 steps with DeepCache (interval 3, branch 0).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentsync_cli.optimizers.deepcache import DeepCachePlan
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.pipeline.denoise import DenoiseInputs, denoise

ATOL = 2e-3
GUIDANCE = 1.5


@pytest.fixture(scope="module")
def golden(golden_dir):
    tensors = load_file(str(golden_dir / "denoise_tiny.safetensors"))
    settings = json.loads((golden_dir / "denoise_tiny.json").read_text())
    return tensors, settings


def _run(unet, tensors, steps: int, deepcache: DeepCachePlan):
    scheduler = make_scheduler("ddim", steps)
    inputs = DenoiseInputs(
        mask=tensors["mask"],
        masked_latents=tensors["masked_image_latents"],
        reference_latents=tensors["ref_latents"],
        audio_embeds=tensors["audio_embeds"],
    )
    per_step_latents, per_step_noise, full_passes = [], [], []
    hook = unet.mid_block.register_forward_hook(lambda *_: full_passes.append(len(per_step_latents)))

    def record(step, timestep, latents, noise_pred):
        per_step_latents.append(latents.clone())
        per_step_noise.append(noise_pred.clone())

    try:
        with torch.no_grad():
            result = denoise(unet, scheduler, tensors["init_latents"], inputs, GUIDANCE, deepcache, on_step=record)
    finally:
        hook.remove()
    # The loop's own count of full UNet passes agrees with the passes that reached the deep blocks.
    assert result.full_steps == len(full_passes) and result.full_steps + result.cached_steps == steps
    return scheduler.timesteps, result.latents, torch.stack(per_step_latents), torch.stack(per_step_noise), full_passes


def test_golden_denoise_ddim_4_steps_with_cfg(golden, golden_unet):
    tensors, settings = golden
    assert settings["guidance_scale"] == GUIDANCE and settings["eta"] == 0.0
    timesteps, final, latents, noise, full_passes = _run(golden_unet, tensors, 4, DeepCachePlan(enabled=False))

    assert timesteps.tolist() == tensors["timesteps_4"].tolist()
    torch.testing.assert_close(latents, tensors["latents_per_step_4"], atol=ATOL, rtol=0)
    torch.testing.assert_close(noise, tensors["noise_pred_per_step_4"], atol=ATOL, rtol=0)
    torch.testing.assert_close(final, tensors["final_latents_4"], atol=ATOL, rtol=0)
    assert full_passes == settings["full_pass_steps_4"]


def test_golden_deepcache_6_steps(golden, golden_unet):
    tensors, settings = golden
    plan = DeepCachePlan(
        enabled=True,
        interval=settings["deepcache"]["cache_interval"],
        branch=settings["deepcache"]["cache_branch_id"],
    )
    timesteps, final, latents, noise, full_passes = _run(golden_unet, tensors, 6, plan)

    assert timesteps.tolist() == tensors["timesteps_6"].tolist()
    assert full_passes == tensors["full_pass_steps_6_deepcache"].tolist() == [0, 3]
    assert plan.full_pass_steps(6) == [0, 3]
    torch.testing.assert_close(latents, tensors["latents_per_step_6_deepcache"], atol=ATOL, rtol=0)
    torch.testing.assert_close(noise, tensors["noise_pred_per_step_6_deepcache"], atol=ATOL, rtol=0)
    torch.testing.assert_close(final, tensors["final_latents_6_deepcache"], atol=ATOL, rtol=0)


def test_golden_deepcache_differs_from_no_cache(golden, golden_unet):
    tensors, settings = golden
    _, cached, _, _, _ = _run(golden_unet, tensors, 6, DeepCachePlan(enabled=True, interval=3, branch=0))
    _, uncached, _, _, full_passes = _run(golden_unet, tensors, 6, DeepCachePlan(enabled=False))

    assert full_passes == settings["full_pass_steps_6_nocache"]
    torch.testing.assert_close(uncached, tensors["final_latents_6_nocache"], atol=ATOL, rtol=0)
    # Upstream's two results differ by up to 1.13: ours must tell them apart the same way.
    assert (cached - uncached).abs().max() > 0.5

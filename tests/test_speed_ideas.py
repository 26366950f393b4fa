"""The speed ideas of docs/PERFORMANCE.md: each changes the computation as it says, is counted, and is off
by default (upstream's loop).

The denoising loop runs on conftest's two-level UNet (4 frames of 8x8 latents); the pipeline
tests on the random-tiny models through the model lane, as test_pipeline does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_optimizers import make_inputs
from test_pipeline import count_unet_calls, generate, make_windows

from latentsync_cli.bench.flops import unet_tflop, unet_tflop_per_output_second
from latentsync_cli.bench.matrix import plan_cases
from latentsync_cli.errors import UsageError
from latentsync_cli.optimizers.cfg_cache import CfgCachePlan
from latentsync_cli.optimizers.coherence import WarmStartPlan
from latentsync_cli.optimizers.deepcache import DeepCachePlan
from latentsync_cli.optimizers.loop_plan import UPSTREAM_LOOP, LoopPlan
from latentsync_cli.optimizers.multiscale import (
    MultiscalePlan,
    full_resolution_noise,
    subsample,
)
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.optimizers.step_skipping import StepSkipPlan
from latentsync_cli.pipeline.denoise import denoise
from latentsync_cli.pipeline.overlap_blend import OverlapBlend
from latentsync_cli.pipeline.windows import WindowInput, WindowOutput
from latentsync_cli.settings.device_record import Capabilities, DeviceRecord
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings, resolve_settings
from latentsync_cli.unet_steps import UNetSteps
from latentsync_cli.weights.load import load_models

GUIDANCE = 1.5
NO_CACHE = DeepCachePlan(enabled=False)
FAST = RunSettings(steps=1, guidance=1.5, window=2, vae_slicing=False, deepcache=False)


@pytest.fixture(scope="module")
def unet(small_unet):
    return small_unet  # conftest's two-level UNet, its weights nudged off their initial values


def run_loop(unet, steps=4, guidance=GUIDANCE, deepcache=NO_CACHE, loop=UPSTREAM_LOOP, on_step=None):
    latents, inputs = make_inputs(seed=3)
    with torch.no_grad():
        scheduler = make_scheduler("ddim", steps)
        return denoise(unet, scheduler, latents, inputs, guidance, deepcache, on_step=on_step, loop=loop)


def unet_inputs(unet):
    """Record the shape of every sample the UNet's conv_in sees (the step-skipping signal included)."""
    shapes = []
    return shapes, unet.conv_in.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))


def deep_passes(unet):
    """Count the passes that reach the deep blocks (full passes; never the signal or a cached pass)."""
    passes = []
    return passes, unet.mid_block.register_forward_hook(lambda *_: passes.append(1))


# --- the loop: off is upstream ----------------------------------------------------------------


def test_every_idea_is_off_by_default_and_normal_keeps_upstreams_computation():
    normal = resolve_settings(load_presets(environ={}), SettingsRequest(mode="normal"), DeviceRecord("cpu", "CPU"))
    settings = normal.settings
    ideas = ("cfg_cache", "step_skipping", "multiscale", "warm_start", "smart_batching")
    assert not any(getattr(settings, idea) for idea in ideas) and settings.window_overlap == 0
    assert not any(getattr(RunSettings(), idea) for idea in ideas)
    loop = LoopPlan(
        CfgCachePlan.from_settings(settings), StepSkipPlan.from_settings(settings, None),
        MultiscalePlan.from_settings(settings, 64, 8),
    )  # fmt: skip
    assert loop == UPSTREAM_LOOP


# --- 2. CFG cache ------------------------------------------------------------------------------


def test_cfg_cache_runs_the_unconditional_half_every_interval_steps(unet):
    shapes, hook = unet_inputs(unet)
    try:
        plain = run_loop(unet, steps=5)
        shapes.clear()
        cached = run_loop(unet, steps=5, loop=LoopPlan(cfg_cache=CfgCachePlan(True, interval=2)))
    finally:
        hook.remove()
    frames = 4
    assert [shape[0] for shape in shapes] == [2 * frames, frames, 2 * frames, frames, 2 * frames]
    assert (cached.steps.full, cached.steps.uncond_reused) == (5, 2)
    assert cached.steps.frame_passes["full"] == 8 + 4 + 8 + 4 + 8 == plain.steps.frame_passes["full"] - 8
    assert not torch.allclose(cached.latents, plain.latents)
    assert (cached.latents - plain.latents).abs().max() < 0.5 * plain.latents.abs().max()  # an approximation


def test_cfg_cache_reuses_the_last_difference_between_the_halves(unet):
    latents_after, noise = [], []
    plan = LoopPlan(cfg_cache=CfgCachePlan(True, interval=2))
    run_loop(unet, steps=2, loop=plan, on_step=lambda step, t, latents, eps: (latents_after.append(latents),
                                                                               noise.append(eps)))  # fmt: skip
    start, inputs = make_inputs(seed=3)
    scheduler = make_scheduler("ddim", 2)
    condition = torch.cat([inputs.mask, inputs.masked_latents, inputs.reference_latents], dim=1)

    def predict(latents, timestep, audio):
        return unet(torch.cat([latents, condition], dim=1), timestep, audio)

    silent = torch.zeros_like(inputs.audio_embeds)
    with torch.no_grad():
        first, second = scheduler.timesteps
        difference = predict(start, first, inputs.audio_embeds) - predict(start, first, silent)
        conditional = predict(latents_after[0], second, inputs.audio_embeds)
    # Equal up to float rounding: the loop ran the first step as one batch of both halves.
    torch.testing.assert_close(noise[1], conditional + (GUIDANCE - 1.0) * difference, atol=1e-3, rtol=0)


def test_cfg_cache_with_deepcache_keeps_the_cached_features_of_both_halves(unet):
    deepcache = DeepCachePlan(enabled=True, interval=2, branch=1)
    alone = run_loop(unet, steps=6, deepcache=deepcache)
    every_step = run_loop(unet, steps=6, deepcache=deepcache, loop=LoopPlan(cfg_cache=CfgCachePlan(True, 1)))
    torch.testing.assert_close(every_step.latents, alone.latents, atol=0, rtol=0)  # interval 1: no reuse

    both = run_loop(unet, steps=6, deepcache=deepcache, loop=LoopPlan(cfg_cache=CfgCachePlan(True, 3)))
    assert (both.steps.full, both.steps.cached, both.steps.uncond_reused) == (3, 3, 4)
    assert torch.isfinite(both.latents).all() and not torch.allclose(both.latents, alone.latents)


def test_cfg_cache_needs_guidance():
    assert not CfgCachePlan.from_settings(RunSettings(cfg_cache=True, guidance=1.0)).enabled
    assert CfgCachePlan.from_settings(RunSettings(cfg_cache=True, guidance=1.5)).enabled


# --- 1. step skipping --------------------------------------------------------------------------


def test_step_skipping_reuses_the_last_prediction_below_the_threshold(unet):
    noise = []
    record = lambda step, t, latents, eps: noise.append(eps)
    passes, hook = deep_passes(unet)
    try:
        plain = run_loop(unet, steps=5)
        never = run_loop(unet, steps=5, loop=LoopPlan(skipping=StepSkipPlan(True, 0.0, unet.first_block_input)))
        passes.clear()
        always = run_loop(unet, steps=5, loop=LoopPlan(skipping=StepSkipPlan(True, 10.0, unet.first_block_input)),
                          on_step=record)  # fmt: skip
    finally:
        hook.remove()
    torch.testing.assert_close(never.latents, plain.latents, atol=0, rtol=0)  # threshold 0: every step runs
    assert never.steps.skipped == 0
    assert len(passes) == 2 and (always.steps.full, always.steps.skipped) == (2, 3)  # the first and last run
    for step in (1, 2, 3):
        assert torch.equal(noise[step], noise[0])
    assert not torch.allclose(noise[4], noise[0])
    assert always.steps.frame_passes["full"] == 2 * 2 * 4


def test_the_skipping_signal_is_the_first_blocks_time_modulated_input(unet):
    latents, inputs = make_inputs(seed=3)
    sample = torch.cat([latents, inputs.mask, inputs.masked_latents, inputs.reference_latents], dim=1)
    with torch.no_grad():
        early, late = unet.first_block_input(sample, 900), unet.first_block_input(sample, 100)
        conv = unet.conv_in(sample.transpose(1, 2).flatten(0, 1)).unflatten(0, (1, 4))
    assert early.shape == (1, 4, unet.conv_in.out_channels, 8, 8)
    shift = early - conv  # the same for every frame and pixel: the time embedding's projection
    torch.testing.assert_close(shift, shift[:, :1, :, :1, :1].expand_as(shift), atol=1e-5, rtol=0)
    assert not torch.allclose(early, late)


# --- 4. multi-scale ----------------------------------------------------------------------------


def test_half_resolution_noise_is_exact_for_a_pure_noise_input():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((1, 4, 2, 8, 8), generator=generator)
    alpha_bar = 0.01
    model_input = (1 - alpha_bar) ** 0.5 * noise  # x0 = 0: the input is all noise
    torch.testing.assert_close(full_resolution_noise(subsample(noise), model_input, alpha_bar), noise)


def test_multiscale_runs_the_first_steps_at_half_resolution(unet):
    shapes, hook = unet_inputs(unet)
    try:
        result = run_loop(unet, steps=4, loop=LoopPlan(multiscale=MultiscalePlan(True, share=0.5)))
    finally:
        hook.remove()
    assert [shape[-1] for shape in shapes] == [4, 4, 8, 8]
    assert (result.steps.full, result.steps.half_res) == (4, 2)
    assert result.steps.frame_passes == {"full": 16, "cached": 0, "full_half_res": 16, "cached_half_res": 0}
    assert result.latents.shape[-1] == 8 and torch.isfinite(result.latents).all()


def test_multiscale_with_deepcache_starts_a_cache_at_each_resolution(unet):
    deepcache = DeepCachePlan(enabled=True, interval=2, branch=1)
    result = run_loop(unet, steps=5, deepcache=deepcache, loop=LoopPlan(multiscale=MultiscalePlan(True, 0.4)))
    # Half resolution: steps 0 (full), 1 (cached); full resolution: step 2 (full), 3 (cached), 4 (full).
    assert (result.steps.full, result.steps.cached, result.steps.half_res) == (3, 2, 2)


def test_multiscale_needs_latents_that_halve_for_the_unet():
    settings = RunSettings(multiscale=True, steps=20, multiscale_share=0.25)
    assert MultiscalePlan.from_settings(settings, 64, 8).half_res_steps(20) == 5
    assert not MultiscalePlan.from_settings(settings, 8, 8).enabled  # 4x4 cannot go through 3 downsamplers
    assert MultiscalePlan(True, 0.9).half_res_steps(2) == 1  # never the last step


# --- 5. smart batching and the pipeline's ideas -------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return load_models("random-tiny", None, "cpu", torch.float32, seed=0)


@pytest.fixture(scope="module")
def audio_features():
    return torch.randn((64, 50, 384), generator=torch.Generator().manual_seed(3))


def test_smart_batching_packs_equal_windows_in_any_order_with_the_same_faces(models, audio_features):
    windows = make_windows([[True, True], [True, False], [True, True]])
    settings = dataclasses.replace(FAST, windows_per_call=2)
    batches, hook = count_unet_calls(models.unet)
    try:
        _, in_order = generate(models, settings, windows, audio_features)
        consecutive = list(batches)
        batches.clear()
        _, packed = generate(models, dataclasses.replace(settings, smart_batching=True), windows, audio_features)
    finally:
        hook.remove()
    assert consecutive == [2 * 2, 2 * 1, 2 * 2]  # windows 0, 1, 2 one by one: no neighbours of equal length
    assert sorted(batches) == [2 * 1, 2 * 2 * 2]  # windows 0 and 2 share a call
    for got, want in zip(packed, in_order):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


# --- 3. warm start and window overlap -----------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m"])
def test_warm_start_runs_fewer_steps_after_the_first_window(models, audio_features, scheduler):
    windows = make_windows([[True, True]] * 2)
    settings = dataclasses.replace(FAST, steps=2, scheduler=scheduler, warm_start=True, warm_start_strength=0.5,
                                   windows_per_call=2)  # fmt: skip
    batches, hook = count_unet_calls(models.unet)
    try:
        pipeline, faces = generate(models, settings, windows, audio_features)
    finally:
        hook.remove()
    assert WarmStartPlan(True, 0.5).first_step(2) == 1 and WarmStartPlan(True, 0.5).first_step(20) == 10
    assert batches == [2 * 2] * (2 + 1)  # one window per call; window 1 runs the second step only
    assert pipeline.log.is_applied("warm start")
    assert all(torch.isfinite(face).all() for face in faces)


def face_output(index: int, flags: list[bool], value: float, lead: int = 0, first_frame: int = 0) -> WindowOutput:
    has_face = np.array(flags)
    count = int(has_face.sum())
    window = WindowInput(index, first_frame, [np.zeros((2, 2, 3), np.uint8)] * len(flags), has_face,
                         torch.zeros((count, 3, 4, 4), dtype=torch.uint8), [np.eye(2, 3)] * count, lead=lead)  # fmt: skip
    return WindowOutput(window, torch.full((count, 3, 4, 4), value, dtype=torch.float16))


def test_overlap_cross_fades_the_shared_frames_and_drops_the_lead():
    blend = OverlapBlend()
    assert blend.push(face_output(0, [True] * 4, 0.0)) == []
    # Window 1 also made frames 2 and 3 (its lead); frame 2 has no face.
    (first,) = blend.push(face_output(1, [False, True, True, True, True], 1.0, lead=2, first_frame=2))
    (second,) = blend.flush()
    assert first.faces[:, 0, 0, 0].tolist() == [0.0, 0.0, 0.0, pytest.approx(2 / 3, abs=1e-3)]
    assert second.window.first_frame == 4 and len(second.window.frames) == 3 and second.window.lead == 0
    assert second.faces.shape[0] == 3 and torch.all(second.faces == 1.0)
    assert len(second.window.affines) == 3


def test_overlap_without_the_previous_window_only_drops_the_lead():
    blend = OverlapBlend()
    blend.push(face_output(3, [True] * 4, 0.0))
    (kept,) = blend.push(face_output(5, [True] * 6, 1.0, lead=2))  # window 4 is not here (another shard)
    assert torch.all(kept.faces == 0.0)
    (last,) = blend.flush()
    assert last.faces.shape[0] == 4


def test_a_window_and_its_overlap_must_fit_the_position_table():
    table, cpu = load_presets(environ={}), DeviceRecord("cpu", "CPU")
    assert resolve_settings(table, SettingsRequest(window=16, window_overlap=8), cpu).settings.window_overlap == 8
    with pytest.raises(UsageError, match="at most 24 frames"):
        resolve_settings(table, SettingsRequest(window=20, window_overlap=8), cpu)
    with pytest.raises(UsageError, match="at most the window's frames"):
        resolve_settings(table, SettingsRequest(window=4, window_overlap=6), cpu)


# --- FLOPs and the benchmark ---------------------------------------------------------------------


def test_frame_passes_become_cost_model_flops():
    upstream = UNetSteps(full=20, frame_passes={"full": 20 * 2 * 16})  # 20 CFG steps of one 16-frame window
    assert unet_tflop(upstream) == pytest.approx(705.0, abs=0.1)  # COST_MODEL.md: 705.0 per chunk
    assert unet_tflop_per_output_second(upstream, 16) == pytest.approx(1101.6, abs=0.1)
    deepcache = UNetSteps(frame_passes={"full": 7 * 32, "cached": 13 * 32})
    assert unet_tflop(deepcache) == pytest.approx(296.3, abs=0.1)
    half = UNetSteps(frame_passes={"full_half_res": 16})
    assert unet_tflop(half) == pytest.approx(4.0505, abs=1e-3)  # a batch-1 pass at 32x32


def test_the_full_benchmark_switches_each_idea_on_and_off():
    bases = {"normal": RunSettings(mode="normal"), "turbo": RunSettings(mode="turbo", guidance=1.0, cfg_cache=True)}
    names = [case.name for case in plan_cases("full", bases, Capabilities(False, False, False, False, False))]
    for idea in ("cfg-cache", "step-skipping", "multiscale", "warm-start", "smart-batching"):
        assert f"normal+{idea}" in names
    assert "normal+overlap4" in names and "turbo+no-cfg-cache" not in names  # no guidance: nothing to cache

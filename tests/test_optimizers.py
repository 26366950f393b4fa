"""Each optimizer changes what it should (on the tiny UNet, on CPU), and records it honestly."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from torch._dynamo.utils import counters

from latentsync_cli.errors import DeviceMemoryError
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import random_vae, tiny_vae_config
from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, OptimizationLog
from latentsync_cli.optimizers.compile import TorchCompile
from latentsync_cli.optimizers.deepcache import DeepCachePlan
from latentsync_cli.optimizers.memory import MemoryLadder, MemorySettings
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.optimizers.stack import apply_optimizations
from latentsync_cli.pipeline.denoise import DenoiseInputs, denoise, pad_inputs
from latentsync_cli.settings import RunSettings
from latentsync_cli.timing import StageTimer, bottleneck_verdict, critical_path

FRAMES = 4
LATENT = 8
# Two levels instead of four: the same blocks (cross-attention, motion modules, skips), a
# quarter of the Python work, which is what torch.compile tracing and CPU tests pay for.
SMALL_UNET = replace(
    UNetConfig.tiny(),
    block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    motion_module_resolutions=(1, 2),
)


class PlainCall(torch.nn.Module):
    """A minimal module with the UNet's call signature (for the compile fall-back wrapper)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    @property
    def dtype(self):
        return self.scale.dtype

    def forward(self, sample, timestep, audio_embeds, cache=None):
        return sample[:, :4] * self.scale


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(SMALL_UNET).eval()
    with torch.no_grad():
        for parameter in unet.parameters():  # conv_out etc. must not be zero, or every step looks alike
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return unet


def make_inputs(windows: int = 1, frames: int = FRAMES, seed: int = 0) -> tuple[torch.Tensor, DenoiseInputs]:
    generator = torch.Generator().manual_seed(seed)
    shape = (windows, 4, frames, LATENT, LATENT)
    noise = torch.randn((1, 4, 1, LATENT, LATENT), generator=generator).repeat(windows, 1, frames, 1, 1)
    inputs = DenoiseInputs(
        mask=(torch.rand((windows, 1, 1, LATENT, LATENT), generator=generator) > 0.5)
        .float()
        .repeat(1, 1, frames, 1, 1),
        masked_latents=torch.randn(shape, generator=generator),
        reference_latents=torch.randn(shape, generator=generator),
        audio_embeds=torch.randn((windows * frames, 50, 384), generator=generator),
    )
    return noise, inputs


NO_CACHE = DeepCachePlan(enabled=False)


def run(unet, steps=3, guidance=1.5, deepcache=NO_CACHE, windows=1, scheduler="ddim", seed=0):
    latents, inputs = make_inputs(windows, seed=seed)
    with torch.no_grad():
        return denoise(unet, make_scheduler(scheduler, steps), latents, inputs, guidance, deepcache)


# --- schedulers and step scaling --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddim", DDIMScheduler),
        ("dpmpp_2m", DPMSolverMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
        ("unipc", UniPCMultistepScheduler),
    ],
)
def test_scheduler_swap_builds_the_class_from_the_same_betas(name, cls):
    scheduler = make_scheduler(name, 20)
    assert type(scheduler) is cls
    upstream = make_scheduler("ddim", 20)
    torch.testing.assert_close(scheduler.betas, upstream.betas)
    assert len(scheduler.timesteps) == 20


def test_upstream_ddim_timesteps_and_swap_changes_them():
    ddim = make_scheduler("ddim", 20).timesteps.tolist()
    assert ddim[:2] == [951, 901] and ddim[-1] == 1
    assert make_scheduler("dpmpp_2m", 20).timesteps.tolist() != ddim
    assert make_scheduler("dpmpp_2m", 20).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("dpmpp_2m", 20).config.solver_order == 2


def test_step_scaling_changes_the_timesteps_and_is_recorded(tiny_unet):
    vae = random_vae(tiny_vae_config(), seed=0)
    fewer = RunSettings(steps=8)
    plan = apply_optimizations(tiny_unet, vae, fewer, torch.device("cpu"), face_size=256)
    assert plan.log.find("step scaling")[0].status == APPLIED
    assert "8 steps instead of upstream's 20" in plan.log.find("step scaling")[0].detail
    assert len(make_scheduler("ddim", 8).timesteps) == 8
    assert make_scheduler("ddim", 8).timesteps.tolist() != make_scheduler("ddim", 20).timesteps.tolist()[:8]
    upstream = apply_optimizations(tiny_unet, vae, RunSettings(steps=20), torch.device("cpu"), face_size=256)
    assert upstream.log.find("step scaling")[0].status == OFF


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler", "unipc"])
def test_every_scheduler_denoises_with_the_tiny_unet(tiny_unet, name):
    result = run(tiny_unet, steps=3, scheduler=name)
    assert torch.isfinite(result).all()
    assert not torch.allclose(result, run(tiny_unet, steps=3, scheduler="ddim"))


# --- DeepCache ---------------------------------------------------------------------------------


def test_deepcache_plan_full_pass_steps():
    plan = DeepCachePlan(enabled=True, interval=3, branch=0)
    assert plan.full_pass_steps(20) == [0, 3, 6, 9, 12, 15, 18]
    assert plan.describe(20) == "interval 3, branch 0 (full UNet on 7 of 20 steps)"
    assert DeepCachePlan(enabled=False).full_pass_steps(4) == [0, 1, 2, 3]


def test_deepcache_runs_the_deep_blocks_only_on_full_steps_and_restarts_per_window(tiny_unet):
    calls = []
    steps_seen = []
    hook = tiny_unet.mid_block.register_forward_hook(lambda *_: calls.append(len(steps_seen)))
    counter = tiny_unet.conv_in.register_forward_hook(lambda *_: steps_seen.append(1))
    plan = DeepCachePlan(enabled=True, interval=2, branch=1)
    try:
        run(tiny_unet, steps=5, deepcache=plan)  # window 1
        first = [step - 1 for step in calls]
        calls.clear(), steps_seen.clear()
        run(tiny_unet, steps=5, deepcache=plan)  # window 2: the counter starts over
        second = [step - 1 for step in calls]
    finally:
        hook.remove(), counter.remove()
    assert first == second == [0, 2, 4]


def test_deepcache_changes_the_result_and_matches_full_runs_at_interval_1(tiny_unet):
    plain = run(tiny_unet, steps=4)
    assert not torch.allclose(plain, run(tiny_unet, steps=4, deepcache=DeepCachePlan(enabled=True, interval=2)))
    torch.testing.assert_close(plain, run(tiny_unet, steps=4, deepcache=DeepCachePlan(enabled=True, interval=1)))


# --- batch shape: guidance and windows per call ------------------------------------------------


def test_guidance_one_halves_the_unet_batch(tiny_unet):
    batches = []
    hook = tiny_unet.conv_in.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        run(tiny_unet, steps=1, guidance=1.5)
        run(tiny_unet, steps=1, guidance=1.0)
    finally:
        hook.remove()
    assert batches == [2 * FRAMES, FRAMES]


def test_several_windows_per_call_equal_one_window_per_call(tiny_unet):
    latents, inputs = make_inputs(windows=2, seed=5)
    with torch.no_grad():
        together = denoise(tiny_unet, make_scheduler("ddim", 3), latents, inputs, 1.5, DeepCachePlan(enabled=True))
        separate = []
        for window in range(2):
            rows = slice(window * FRAMES, (window + 1) * FRAMES)
            one = DenoiseInputs(
                inputs.mask[window : window + 1],
                inputs.masked_latents[window : window + 1],
                inputs.reference_latents[window : window + 1],
                inputs.audio_embeds[rows],
            )
            scheduler = make_scheduler("ddim", 3)
            separate.append(
                denoise(tiny_unet, scheduler, latents[window : window + 1], one, 1.5, DeepCachePlan(enabled=True))
            )
    # Equal up to float rounding: a different batch size changes how convolutions and matmuls
    # block their sums (~1e-6), which 8x8 latents amplify (their deep levels are 1x1 or 2x2).
    torch.testing.assert_close(together, torch.cat(separate), atol=1e-3, rtol=0)


def test_padding_repeats_the_last_frame():
    latents, inputs = make_inputs(windows=2, frames=3)
    padded_latents, padded = pad_inputs(latents, inputs, 5)
    assert padded.mask.shape[2] == 5 and padded_latents.shape[2] == 5
    torch.testing.assert_close(padded.masked_latents[:, :, 3], inputs.masked_latents[:, :, 2])
    audio = padded.audio_embeds.unflatten(0, (2, 5))
    torch.testing.assert_close(audio[1, 4], inputs.audio_embeds[5])  # window 1's last frame
    torch.testing.assert_close(audio[1, :3], inputs.audio_embeds[3:6])


# --- device-dependent optimizers on CPU: recorded as skipped, never claimed -----------------


def test_cuda_only_optimizations_are_skipped_on_cpu(tiny_unet):
    vae = random_vae(tiny_vae_config(), seed=0)
    settings = RunSettings(tf32=True, cuda_graphs=True, channels_last=True, memory_fraction=0.5)
    plan = apply_optimizations(tiny_unet, vae, settings, torch.device("cpu"), face_size=256)
    for name in ("tf32", "cuda graphs", "memory fraction"):
        entry = plan.log.find(name)[0]
        assert entry.status == SKIPPED and "cpu" in entry.detail, entry
    assert plan.graphs is None and plan.pad_frames_to is None
    assert plan.log.find("channels_last")[0].status == APPLIED
    assert plan.log.find("channels_last (UNet)")[0].status == SKIPPED
    json.dumps(plan.log.to_list())  # the JSON result carries the log


def test_vae_slicing_and_tiling_switch_diffusers_flags(tiny_unet):
    vae = random_vae(tiny_vae_config(), seed=0)
    apply_optimizations(
        tiny_unet, vae, RunSettings(vae_slicing=True, vae_tiling=True), torch.device("cpu"), face_size=256
    )
    assert vae.use_slicing and vae.use_tiling
    apply_optimizations(
        tiny_unet, vae, RunSettings(vae_slicing=False, vae_tiling=False), torch.device("cpu"), face_size=256
    )
    assert not vae.use_slicing and not vae.use_tiling


def test_compile_failure_falls_back_to_eager_and_says_why():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    model = PlainCall()
    log = OptimizationLog()
    compiled = TorchCompile().apply(RunSettings(compile=True), model, log, backend=broken_backend)
    result = run(compiled, steps=2)
    torch.testing.assert_close(result, run(model, steps=2))
    assert compiled.compiled is None  # later calls go straight to the eager module
    entry = log.find("torch.compile")[0]
    assert entry.status == SKIPPED and "no compiler here" in entry.detail and "running eager" in entry.detail


def test_deepcache_traces_under_torch_compile():
    # Tracing costs Python time per layer: one layer per block is enough to cross every kind of block.
    torch.manual_seed(1)
    unet = UNet3DConditionModel(replace(SMALL_UNET, layers_per_block=1)).eval()
    log = OptimizationLog()
    compiled = TorchCompile().apply(RunSettings(compile=True), unet, log, backend="eager")
    plan = DeepCachePlan(enabled=True, interval=2)  # step 0 traces the full pass, step 1 the shallow one
    counters.clear()
    torch.testing.assert_close(run(compiled, steps=2, deepcache=plan), run(unet, steps=2, deepcache=plan))
    assert dict(counters["graph_break"]) == {}  # the cache is traced through, not around
    assert counters["stats"]["unique_graphs"] == 2  # one graph per DeepCache path
    assert log.find("torch.compile")[0].status == APPLIED


# --- out-of-memory ladder --------------------------------------------------------------------


def test_memory_ladder_goes_down_one_rung_at_a_time():
    rungs = []
    settings = MemorySettings(windows_per_call=4)
    while (lower := settings.lower()) is not None:
        settings, change = lower
        rungs.append(change)
    assert rungs == [
        "windows per call 4 -> 2",
        "windows per call 2 -> 1",
        "VAE slicing on",
        "VAE tiling on",
        "model offload on (UNet and VAE on the GPU only while used)",
    ]


def test_memory_ladder_retries_until_the_work_fits_and_fails_clearly_at_the_bottom():
    seen = []

    def work(settings):
        seen.append(settings)
        if not settings.vae_slicing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return "done"

    log = OptimizationLog()
    changes = []
    ladder = MemoryLadder(MemorySettings(windows_per_call=2), torch.device("cpu"), log, changes.append)
    assert ladder.run(work, "window 0") == "done"
    assert [s.windows_per_call for s in seen] == [2, 1, 1]
    assert changes[-1] == MemorySettings(windows_per_call=1, vae_slicing=True)
    assert [entry.status for entry in log.entries] == ["downgraded", "downgraded"]

    def never_fits(settings):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(DeviceMemoryError, match="even with 1 window per call"):
        ladder.run(never_fits, "window 1")


# --- timing ----------------------------------------------------------------------------------


def test_stage_timer_spans_from_threads_make_a_chrome_trace_and_verdict():
    timer = StageTimer("cpu")

    def producer():
        for _ in range(3):
            with timer.stage("decode", "producer"):
                sum(range(20000))

    thread = threading.Thread(target=producer)
    thread.start()
    with timer.stage("denoise", "gpu"):
        sum(range(200000))
    thread.join()
    timer.finish()

    totals = timer.stage_totals()
    assert list(totals) == ["decode", "denoise"]  # pipeline order
    trace = timer.chrome_trace()
    assert len(trace) == 4 and {event["ph"] for event in trace} == {"X"}
    assert {event["args"]["thread"] for event in trace} == {"producer", "gpu"}
    assert len({event["tid"] for event in trace}) == 2
    assert all(set(event) >= {"name", "ph", "ts", "dur", "pid", "tid"} for event in trace)
    busy = timer.lane_busy()
    path = critical_path({"main": 1.0, **busy}, timer.lane_stages())
    assert path["bounding_lane"] == max(busy, key=busy.get)
    assert path["seconds"] == pytest.approx(1.0 + max(busy.values()))

    verdict = bottleneck_verdict({"denoise": 7.8, "decode": 1.0}, wall_s=10.0)
    assert verdict == "bottleneck: denoise (78 % of wall time) — try --mode turbo or DeepCache"
    # With the run's settings the hint names what it has not used yet.
    normal = RunSettings(mode="normal", deepcache=False, guidance=1.5)
    assert "--deepcache" in bottleneck_verdict({"denoise": 7.8}, 10.0, normal)
    turbo = RunSettings(mode="turbo", deepcache=True, guidance=1.0)
    assert "--quality draft" in bottleneck_verdict({"denoise": 7.8}, 10.0, turbo)

"""Each optimizer changes what it should (on the tiny UNet, on CPU), and records it honestly."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from torch._dynamo.utils import counters

from latentsync_cli.advice import bottleneck_verdict
from latentsync_cli.errors import DeviceMemoryError
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.vae import random_vae, tiny_vae_config
from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, OptimizationLog
from latentsync_cli.optimizers.cuda_graphs import CudaGraphs
from latentsync_cli.optimizers.deepcache import DeepCachePlan
from latentsync_cli.optimizers.memory import MemoryLadder, MemorySettings
from latentsync_cli.optimizers.run_plan import build_run_plan
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.optimizers.torch_switches import torch_switches
from latentsync_cli.pipeline import LipsyncPipeline
from latentsync_cli.pipeline.denoise import DenoiseInputs, denoise
from latentsync_cli.pipeline.windows import WindowInput, WindowPlan
from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings, resolve_settings
from latentsync_cli.timing import StageTimer, critical_path

CPU = torch.device("cpu")

FRAMES = 4
LATENT = 8
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
        return denoise(unet, make_scheduler(scheduler, steps), latents, inputs, guidance, deepcache).latents


def plan_for(unet, settings: RunSettings, compile_backend="inductor"):
    return build_run_plan(unet, random_vae(tiny_vae_config(), seed=0), settings, CPU, 256, compile_backend)


def timesteps_the_unet_ran(models, settings: RunSettings) -> tuple[list[int], LipsyncPipeline]:
    """The timestep of every UNet call while a pipeline generates one 1-frame window, read at the UNet's input."""
    seen = []
    hook = models.unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[1])))
    pipeline = LipsyncPipeline(models, settings, StageTimer("cpu"))
    size = models.resolution
    faces = pipeline.face_generator(torch.zeros((1, 50, 384)), paste_mask=torch.ones((1, 1, size, size)))
    window = WindowInput(
        index=0,
        first_frame=0,
        frames=[np.zeros((4, 4, 3), np.uint8)],
        has_face=np.array([True]),
        faces=torch.full((1, 3, size, size), 128, dtype=torch.uint8),
        affines=[np.eye(2, 3)],
    )
    try:
        pipeline.generate_windows([window], faces, WindowPlan.everything([range(1)]))
    finally:
        hook.remove()
    return seen, pipeline


# --- schedulers and step scaling --------------------------------------------------------------


# Upstream's configs/scheduler_config.json (LATENTSYNC_REFERENCE.md), written out here, not imported.
UPSTREAM_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}  # fmt: skip
# Each mode's sampler and steps in presets.toml, and diffusers' class for it with that sampler's options.
MODE_SCHEDULERS = {
    "normal": ("ddim", 20, DDIMScheduler, {}),
    "fast": ("dpmpp_2m", 12, DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "turbo": ("euler", 8, EulerDiscreteScheduler, {}),
    "ultra": ("unipc", 5, UniPCMultistepScheduler, {}),
}
# "leading" spacing with steps_offset 1, worked out by hand: DDIM and Euler take every (1000 // steps)-th
# timestep from 0 up, the multistep solvers every (1000 // (steps + 1))-th and drop the 0; then + 1.
TIMESTEPS = {
    "normal": [951 - 50 * k for k in range(20)],
    "fast": [913 - 76 * k for k in range(12)],
    "turbo": [876 - 125 * k for k in range(8)],
    "ultra": [831 - 166 * k for k in range(5)],
}


def upstream_alphas_cumprod() -> np.ndarray:
    """The scaled-linear betas of the config, in float64: the cumulative product of (1 - beta)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


@pytest.mark.parametrize("mode", list(MODE_SCHEDULERS))
def test_each_modes_scheduler_is_diffusers_own_for_upstreams_config(mode):
    """The scheduler a mode runs with (as presets.toml resolves it, built by the run plan) has the timesteps,
    sigmas and initial noise scale of diffusers' class built from upstream's config, and those are the
    upstream betas' values at hand-computed timesteps."""
    table = load_presets(environ={})
    settings = resolve_settings(table, SettingsRequest(mode=mode), DeviceRecord(backend="cpu", name="CPU")).settings
    name, steps, cls, solver_options = MODE_SCHEDULERS[mode]
    assert (settings.scheduler, settings.steps) == (name, steps)
    ours = plan_for(PlainCall(), settings).make_scheduler()
    theirs = cls.from_config({**UPSTREAM_SCHEDULER_CONFIG, **solver_options})
    theirs.set_timesteps(steps)

    assert type(ours) is cls
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == TIMESTEPS[mode]
    assert float(ours.init_noise_sigma) == float(theirs.init_noise_sigma)
    alphas_cumprod = upstream_alphas_cumprod()
    torch.testing.assert_close(ours.alphas_cumprod.double(), torch.from_numpy(alphas_cumprod), atol=1e-6, rtol=0)
    if cls is DDIMScheduler:  # no sigmas: the last step goes to alpha_cumprod[0], not to 1 (set_alpha_to_one false)
        assert not hasattr(ours, "sigmas") and float(ours.init_noise_sigma) == 1.0
        assert float(ours.final_alpha_cumprod) == pytest.approx(1 - 0.00085, abs=1e-7)
        return
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=0, rtol=0)
    # sigma_t = sqrt((1 - abar_t) / abar_t) at each timestep, then 0 (the last step goes to the clean sample).
    timesteps = np.array(TIMESTEPS[mode])
    expected = np.append(np.sqrt((1 - alphas_cumprod[timesteps]) / alphas_cumprod[timesteps]), 0.0)
    np.testing.assert_allclose(ours.sigmas.double().numpy(), expected, rtol=1e-5, atol=0)
    # Euler works on x / sqrt(abar), so it starts from noise of std sqrt(sigma_max^2 + 1); the others from 1.
    start = np.sqrt(expected[0] ** 2 + 1) if cls is EulerDiscreteScheduler else 1.0
    assert float(ours.init_noise_sigma) == pytest.approx(start, rel=1e-5)


def test_upstream_ddim_timesteps_and_swap_changes_them():
    ddim = make_scheduler("ddim", 20).timesteps.tolist()
    assert ddim[:2] == [951, 901] and ddim[-1] == 1
    assert make_scheduler("dpmpp_2m", 20).timesteps.tolist() != ddim
    assert make_scheduler("dpmpp_2m", 20).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("dpmpp_2m", 20).config.solver_order == 2


def test_step_scaling_changes_the_timesteps_the_pipeline_runs_and_is_recorded(tiny_models, small_unet):
    quick = {"guidance": 1.0, "window": 1, "vae_slicing": False}
    models = replace(tiny_models, unet=small_unet)  # 28 UNet calls: the two-level UNet's are a quarter of the work
    fewer, fewer_pipeline = timesteps_the_unet_ran(models, RunSettings(steps=8, **quick))
    upstream, upstream_pipeline = timesteps_the_unet_ran(models, RunSettings(steps=20, **quick))
    entry = fewer_pipeline.log.find("step scaling")[0]
    assert entry.status == APPLIED
    assert "8 steps instead of upstream's 20" in entry.detail
    # DDIM's "leading" spacing with steps_offset 1: one timestep every 1000 // steps, the last one at 1.
    assert fewer == [1 + 125 * k for k in reversed(range(8))]
    assert upstream == [1 + 50 * k for k in reversed(range(20))]
    assert fewer != upstream[:8]
    assert upstream_pipeline.log.find("step scaling")[0].status == OFF


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler", "unipc"])
def test_every_scheduler_denoises_with_the_tiny_unet(small_unet, name):
    result = run(small_unet, steps=3, scheduler=name)
    assert torch.isfinite(result).all()
    assert not torch.allclose(result, run(small_unet, steps=3, scheduler="ddim"))


# --- DeepCache ---------------------------------------------------------------------------------


def test_deepcache_plan_full_pass_steps():
    plan = DeepCachePlan(enabled=True, interval=3, branch=0)
    assert plan.full_pass_steps(20) == [0, 3, 6, 9, 12, 15, 18]
    assert plan.describe(20) == "interval 3, branch 0 (full UNet on 7 of 20 steps)"
    assert DeepCachePlan(enabled=False).full_pass_steps(4) == [0, 1, 2, 3]


def test_deepcache_runs_the_deep_blocks_only_on_full_steps_and_restarts_per_window(small_unet):
    calls = []
    steps_seen = []
    hook = small_unet.mid_block.register_forward_hook(lambda *_: calls.append(len(steps_seen)))
    counter = small_unet.conv_in.register_forward_hook(lambda *_: steps_seen.append(1))
    plan = DeepCachePlan(enabled=True, interval=2, branch=1)
    try:
        run(small_unet, steps=5, deepcache=plan)  # window 1
        first = [step - 1 for step in calls]
        calls.clear(), steps_seen.clear()
        run(small_unet, steps=5, deepcache=plan)  # window 2: the counter starts over
        second = [step - 1 for step in calls]
    finally:
        hook.remove(), counter.remove()
    assert first == second == [0, 2, 4]


def test_deepcache_changes_the_result_and_matches_full_runs_at_interval_1(small_unet):
    plain = run(small_unet, steps=4)
    assert not torch.allclose(plain, run(small_unet, steps=4, deepcache=DeepCachePlan(enabled=True, interval=2)))
    torch.testing.assert_close(plain, run(small_unet, steps=4, deepcache=DeepCachePlan(enabled=True, interval=1)))


# --- batch shape: guidance and windows per call ------------------------------------------------


def test_guidance_one_halves_the_unet_batch(small_unet):
    batches = []
    hook = small_unet.conv_in.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        run(small_unet, steps=1, guidance=1.5)
        run(small_unet, steps=1, guidance=1.0)
    finally:
        hook.remove()
    assert batches == [2 * FRAMES, FRAMES]


def test_several_windows_per_call_equal_one_window_per_call(small_unet):
    latents, inputs = make_inputs(windows=2, seed=5)
    with torch.no_grad():
        together = denoise(
            small_unet, make_scheduler("ddim", 3), latents, inputs, 1.5, DeepCachePlan(enabled=True)
        ).latents
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
                denoise(
                    small_unet, scheduler, latents[window : window + 1], one, 1.5, DeepCachePlan(enabled=True)
                ).latents
            )
    # Equal up to float rounding: a different batch size changes how convolutions and matmuls
    # block their sums (~1e-6), which 8x8 latents amplify (their deep levels are 1x1 or 2x2).
    torch.testing.assert_close(together, torch.cat(separate), atol=1e-3, rtol=0)


def test_padding_a_window_would_change_its_frames(tiny_unet):
    """Why CUDA graphs capture one graph per window length instead of padding a short window:
    the UNet's GroupNorms and motion modules mix a window's frames, so repeating the last frame
    changes the real frames' result (by up to 0.41 in golden e2e run C's 8-frame window)."""
    latents, inputs = make_inputs(frames=3)

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:  # 3 frames -> 5, the last one repeated
        last = tensor.narrow(dim, tensor.shape[dim] - 1, 1)
        return torch.cat([tensor, last, last], dim=dim)

    padded = DenoiseInputs(
        pad(inputs.mask, 2), pad(inputs.masked_latents, 2), pad(inputs.reference_latents, 2),
        pad(inputs.audio_embeds, 0),
    )
    with torch.no_grad():
        alone = denoise(tiny_unet, make_scheduler("ddim", 3), latents, inputs, 1.5, NO_CACHE).latents
        in_padding = denoise(tiny_unet, make_scheduler("ddim", 3), pad(latents, 2), padded, 1.5, NO_CACHE).latents
    assert (in_padding[:, :, :3] - alone).abs().max() > 1e-2


def test_cuda_graphs_keep_every_window_length(tiny_unet):
    """The plan's UNet call becomes graph-replaying and nothing pads the windows (see the test above)."""
    vae = random_vae(tiny_vae_config(), seed=0)
    settings = RunSettings(cuda_graphs=True)
    plan = build_run_plan(tiny_unet, vae, settings, CPU, face_size=256)
    entry = CudaGraphs().apply(plan, settings, torch.device("cuda"))  # builds no CUDA state
    assert entry.status == APPLIED and plan.unet_call is plan.graphs
    assert "padded" not in entry.detail and not hasattr(plan, "pad_frames_to")


# --- device-dependent optimizers on CPU: recorded as skipped, never claimed -----------------


def test_cuda_only_optimizations_are_skipped_on_cpu(small_unet):
    vae = random_vae(tiny_vae_config(), seed=0)
    settings = RunSettings(tf32=True, cuda_graphs=True, channels_last=True, memory_fraction=0.5)
    plan = build_run_plan(small_unet, vae, settings, CPU, face_size=256)
    for name in ("tf32", "cuda graphs", "memory fraction"):
        entry = plan.log.find(name)[0]
        assert entry.status == SKIPPED and "cpu" in entry.detail, entry
    assert plan.graphs is None
    assert plan.log.find("channels_last")[0].status == APPLIED
    assert plan.log.find("channels_last (UNet)")[0].status == SKIPPED
    json.dumps(plan.log.to_list())  # the JSON result carries the log


def test_vae_slicing_and_tiling_switch_diffusers_flags(small_unet):
    vae = random_vae(tiny_vae_config(), seed=0)
    build_run_plan(small_unet, vae, RunSettings(vae_slicing=True, vae_tiling=True), CPU, face_size=256)
    assert vae.use_slicing and vae.use_tiling
    build_run_plan(small_unet, vae, RunSettings(vae_slicing=False, vae_tiling=False), CPU, face_size=256)
    assert not vae.use_slicing and not vae.use_tiling


def test_compile_failure_falls_back_to_eager_and_says_why():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    model = PlainCall()
    plan = plan_for(model, RunSettings(compile=True), compile_backend=broken_backend)
    compiled = plan.unet_call
    assert plan.log.find("torch.compile") == []  # recorded by the first call, when compiling happens
    result = run(compiled, steps=2)
    torch.testing.assert_close(result, run(model, steps=2))
    assert compiled.compiled is None  # later calls go straight to the eager module
    entry = plan.log.find("torch.compile")[0]
    assert entry.status == SKIPPED and "no compiler here" in entry.detail and "running eager" in entry.detail


def test_deepcache_traces_under_torch_compile(small_unet):
    # Tracing costs Python time per layer: one layer per block is enough to cross every kind of block.
    torch.manual_seed(1)
    unet = UNet3DConditionModel(replace(small_unet.config, layers_per_block=1)).eval()
    run_plan = plan_for(unet, RunSettings(compile=True), compile_backend="eager")
    compiled = run_plan.unet_call
    plan = DeepCachePlan(enabled=True, interval=2)  # step 0 traces the full pass, step 1 the shallow one
    counters.clear()
    torch.testing.assert_close(run(compiled, steps=2, deepcache=plan), run(unet, steps=2, deepcache=plan))
    assert dict(counters["graph_break"]) == {}  # the cache is traced through, not around
    assert counters["stats"]["unique_graphs"] == 2  # one graph per DeepCache path
    assert run_plan.log.find("torch.compile")[0].status == APPLIED


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
    normal = RunSettings(deepcache=False, guidance=1.5)
    assert "--deepcache" in bottleneck_verdict({"denoise": 7.8}, 10.0, normal)
    turbo = RunSettings(steps=8, scheduler="euler", deepcache=True, guidance=1.0)
    assert "--steps 4 (now 8)" in bottleneck_verdict({"denoise": 7.8}, 10.0, turbo)


# With the run's settings, the advice only names what the run does not use yet: never a flag it set,
# a value it already has, a mode or quality preset (the pipeline does not know them), or a GPU on a CPU run.
ADVICE_CASES = [
    RunSettings(),  # mode normal, quality balanced
    RunSettings(steps=10),  # mode normal, quality draft
    RunSettings(steps=8, scheduler="euler", guidance=1.0, deepcache=True, window=12, face_detect_stride=3),
    RunSettings(steps=3, scheduler="unipc", guidance=1.0, deepcache=True, window=24, face_detect_stride=5),
    RunSettings(steps=1, guidance=1.0, deepcache=True, window=24),
    RunSettings(device="cuda", precision="fp32", deepcache=True, guidance=1.0),
    RunSettings(
        device="cuda", precision="fp16", compile=True, steps=5, scheduler="unipc", guidance=1.0, deepcache=True
    ),
]


@pytest.mark.parametrize("stage", ["denoise", "VAE encode", "VAE decode", "landmarks"])
@pytest.mark.parametrize("settings", ADVICE_CASES)
def test_advice_never_names_what_the_run_already_uses(settings, stage):
    verdict = bottleneck_verdict({stage: 7.8, "decode": 1.0}, 10.0, settings)
    assert verdict.startswith(f"bottleneck: {stage} (78 % of wall time) — ")
    assert "--mode" not in verdict and "--quality" not in verdict
    if settings.device == "cpu":
        assert "GPU" not in verdict and "gpu" not in verdict
    for flag, value in re.findall(r"--([a-z]+)(?: ([\w.]+))?", verdict):
        if flag in ("deepcache", "compile"):
            assert not getattr(settings, flag), verdict
        elif value:
            current = getattr(settings, flag)
            assert value != str(current) and (not isinstance(current, float) or float(value) != current), verdict


def test_advice_for_a_slow_denoise_follows_the_settings():
    def hint(**changes):
        return bottleneck_verdict({"denoise": 9.0}, 10.0, RunSettings(**changes)).split(" — ")[1]

    assert hint(deepcache=False).startswith("try --deepcache")
    assert hint(deepcache=True, guidance=1.5).startswith("try --guidance 1 (now 1.5)")
    fewer_steps = hint(deepcache=True, guidance=1.0, steps=10)
    assert fewer_steps.startswith("try --steps 5 (now 10)") and "--scheduler dpmpp_2m" in fewer_steps
    assert "--scheduler" not in hint(deepcache=True, guidance=1.0, steps=10, scheduler="euler")
    assert hint(deepcache=True, guidance=1.0, steps=1).endswith("a faster cpu device")
    assert hint(device="cuda", deepcache=True, guidance=1.0, precision="fp32").startswith("try --precision fp16")
    assert hint(device="cuda", deepcache=True, guidance=1.0, precision="bf16").startswith("try --compile")


# --- process-wide torch switches -------------------------------------------------------------


def test_torch_switches_set_tf32_for_the_run_and_restore_it_even_after_an_error():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    settings = RunSettings(tf32=True, memory_fraction=1.0)  # no memory cap: nothing here needs a real GPU
    try:
        with pytest.raises(RuntimeError, match="the run failed"), torch_switches(settings, torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            raise RuntimeError("the run failed")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        with torch_switches(settings, CPU):  # TF32 exists only on CUDA: a CPU run leaves it alone
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_optimization_table_keeps_one_row_per_optimization_in_order(small_unet):
    names = [entry.name for entry in plan_for(small_unet, RunSettings(channels_last=True)).log.entries]
    without_channels_last = [entry.name for entry in plan_for(small_unet, RunSettings(channels_last=False)).log.entries]
    assert without_channels_last == [name for name in names if name != "channels_last (UNet)"]
    assert names == [
        "precision",
        "tf32",
        "step scaling",
        "scheduler",
        "deepcache",
        "skip unconditional pass",
        "cfg cache",
        "step skipping",
        "multi-scale steps",
        "windows per call",
        "smart batching",
        "warm start",
        "window overlap",
        "channels_last",
        "channels_last (UNet)",
        "vae slicing",
        "vae tiling",
        "memory fraction",
        "torch.compile",
        "cuda graphs",
        "attention kernel",
    ]

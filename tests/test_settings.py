"""resolve_settings: presets x tiers x flags -> RunSettings, with the source of every value."""

from __future__ import annotations

import dataclasses

import pytest
import tomllib

from latentsync_cli.constants import SCHEDULERS
from latentsync_cli.errors import ExitCode, UsageError
from latentsync_cli.settings import presets as presets_module
from latentsync_cli.settings.device_record import DeviceRecord, capabilities_of
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.run_settings import (
    NO_BENCHMARK_NOTE,
    SOURCE_BENCHMARK,
    SOURCE_DEFAULT,
    SOURCE_FLAG,
    SOURCE_LENGTH,
    SOURCE_LEVEL,
    SOURCE_MODE,
    SOURCE_QUALITY,
    SOURCE_TIER,
    RunSettings,
    SettingsRequest,
    choose_device,
    resolve_settings,
    setting_problem,
)

GB = 10**9
CPU = DeviceRecord(backend="cpu", name="CPU", total_memory_bytes=32 * GB)
MPS = DeviceRecord(backend="mps", name="Apple GPU (MPS)", total_memory_bytes=16 * GB)
GTX_1070 = DeviceRecord(
    backend="cuda", name="GTX 1070", index=0, total_memory_bytes=8 * 2**30, compute_capability=(6, 1)
)
T4 = DeviceRecord(backend="cuda", name="Tesla T4", index=0, total_memory_bytes=15360 * 2**20, compute_capability=(7, 5))
RTX_4090 = DeviceRecord(
    backend="cuda", name="RTX 4090", index=0, total_memory_bytes=24564 * 2**20, compute_capability=(8, 9)
)
DEVICES = {"cpu": CPU, "mps": MPS, "small_gpu": GTX_1070, "medium_gpu": T4, "large_gpu": RTX_4090}

TABLE = load_presets(environ={})
RAW_TABLE = tomllib.loads(presets_module._builtin_location().read_text(encoding="utf-8"))
# Fields only the mode sets (no level, tier or medium-length rule touches them).
MODE_ONLY_FIELDS = ("scheduler", "guidance", "window", "deepcache_interval", "deepcache_branch", "face_detect_stride")


# The steps each mode and quality preset resolve to, worked out by hand from presets.toml: the mode's
# steps x the quality's step_scale, rounded half up, never below the mode's min_steps. `auto` with the
# length unknown takes the default length class (medium), whose quality is balanced.
#                 draft  fast  balanced  quality  ultra  auto
STEPS = {
    "normal": (10, 14, 20, 30, 40, 20),  # 20 steps, at least 10
    "fast": (6, 8, 12, 18, 24, 12),  # 12 steps, at least 6: 12 x 0.7 = 8.4 -> 8
    "turbo": (4, 6, 8, 12, 16, 8),  # 8 steps, at least 4: 8 x 0.7 = 5.6 -> 6
    "ultra": (3, 4, 5, 8, 10, 5),  # 5 steps, at least 3: 2.5 -> 3, 3.5 -> 4 (half up), 7.5 -> 8
}
QUALITIES = ("draft", "fast", "balanced", "quality", "ultra", "auto")


def resolve(record=CPU, duration_s=None, benchmark_pick=None, **flags):
    """Resolve for a machine with `record` (and a CPU); flags are SettingsRequest fields."""
    return resolve_settings(TABLE, SettingsRequest(**flags), [record, CPU], duration_s, benchmark_pick)


@pytest.mark.parametrize("tier", list(DEVICES))
@pytest.mark.parametrize("quality", list(TABLE.quality))
@pytest.mark.parametrize("mode", list(TABLE.modes))
def test_every_mode_quality_and_tier_resolves_to_valid_settings(mode, quality, tier):
    device = DEVICES[tier]
    resolved = resolve(device, mode=mode, quality=quality)
    settings = resolved.settings
    # The mode's own fields come through unchanged, compared with the file as tomllib reads it.
    raw_mode = RAW_TABLE["modes"][mode]
    for name in MODE_ONLY_FIELDS:
        assert (getattr(settings, name), resolved.sources[name]) == (raw_mode[name], SOURCE_MODE), name
    assert (settings.mode, settings.quality, settings.tier) == (mode, quality, tier)
    assert settings.steps == STEPS[mode][QUALITIES.index(quality)]
    caps = capabilities_of(device)
    assert settings.precision in {"fp32"} | {p for p in ("fp16", "bf16") if getattr(caps, p)}
    assert not (settings.tf32 and not caps.tf32)
    assert not (settings.cuda_graphs and not caps.cuda_graphs)
    assert not (settings.compile and not caps.compile)
    assert settings.device == device.torch_device
    assert set(resolved.sources) == {f.name for f in dataclasses.fields(RunSettings)}
    assert (NO_BENCHMARK_NOTE in resolved.notes) == TABLE.quality[quality].auto


@pytest.mark.parametrize(
    "mode, quality, steps, source",
    [
        ("normal", "balanced", 20, SOURCE_MODE),
        ("normal", "draft", 10, SOURCE_QUALITY),
        ("normal", "ultra", 40, SOURCE_QUALITY),
        ("fast", "fast", 8, SOURCE_QUALITY),  # 12 * 0.7 = 8.4
        ("fast", "quality", 18, SOURCE_QUALITY),
        ("turbo", "draft", 4, SOURCE_QUALITY),
        ("ultra", "draft", 3, SOURCE_QUALITY),  # 2.5 rounds up to 3, the minimum anyway
        ("ultra", "fast", 4, SOURCE_QUALITY),  # 3.5 rounds half up
    ],
)
def test_quality_scales_the_mode_steps(mode, quality, steps, source):
    resolved = resolve(mode=mode, quality=quality)
    assert resolved.settings.steps == steps
    assert resolved.sources["steps"] == source


def test_defaults_are_upstream_reference_settings():
    resolved = resolve(T4)
    s = resolved.settings
    assert (s.mode, s.quality, s.steps, s.scheduler, s.guidance, s.window, s.deepcache) == (
        "normal",
        "balanced",
        20,
        "ddim",
        1.5,
        16,
        False,
    )
    assert resolved.sources["mode"] == SOURCE_DEFAULT and resolved.sources["seed"] == SOURCE_DEFAULT
    assert resolved.sources["scheduler"] == SOURCE_MODE and resolved.sources["optimization_level"] == SOURCE_TIER
    assert resolved.notes == ()


def test_explicit_flags_win():
    flags = dict(steps=7, deepcache=False, scheduler="unipc", window=24, guidance=2.0, seed=5, compile=True)
    resolved = resolve(RTX_4090, mode="turbo", quality="draft", **flags)
    for name, value in flags.items():
        assert getattr(resolved.settings, name) == value
        assert resolved.sources[name] == SOURCE_FLAG
    assert resolved.sources["mode"] == SOURCE_FLAG


@pytest.mark.parametrize(
    "device, precision", [(RTX_4090, "bf16"), (T4, "fp16"), (GTX_1070, "fp32"), (CPU, "fp32"), (MPS, "fp32")]
)
def test_precision_follows_the_device(device, precision):
    assert resolve(device).settings.precision == precision


def test_precision_auto_flag_overrides_the_tier_pin():
    resolved = resolve(MPS, precision="auto")
    assert resolved.settings.precision == "fp16"
    assert resolved.sources["precision"] == SOURCE_FLAG


def test_tier_picks_the_level_and_device_limits_apply():
    t4 = resolve(T4)
    assert t4.settings.optimization_level == "balanced"
    assert not t4.settings.tf32 and t4.sources["tf32"] == SOURCE_TIER  # balanced asks for TF32; Turing has none
    big = resolve(RTX_4090)
    assert big.settings.optimization_level == "aggressive"
    assert big.settings.tf32 and big.settings.compile and big.settings.cuda_graphs


def test_optimization_level_flag():
    resolved = resolve(T4, optimization_level="aggressive")
    assert resolved.settings.optimization_level == "aggressive"
    assert resolved.sources["optimization_level"] == SOURCE_FLAG
    assert resolved.settings.compile and resolved.sources["compile"] == SOURCE_LEVEL
    assert resolve(T4, optimization_level="auto").settings.optimization_level == "balanced"


@pytest.mark.parametrize(
    "duration_s, steps, deepcache, compile_on_4090",
    [(3.0, 30, False, False), (None, 20, False, True), (12.0, 20, False, True), (30.0, 20, True, True)],
)
def test_auto_without_benchmark_uses_the_length_rule(duration_s, steps, deepcache, compile_on_4090):
    resolved = resolve(RTX_4090, duration_s=duration_s, quality="auto")
    assert resolved.settings.steps == steps and resolved.sources["steps"] == SOURCE_LENGTH
    assert resolved.settings.deepcache is deepcache
    assert resolved.settings.compile is compile_on_4090
    assert resolved.notes == (NO_BENCHMARK_NOTE,)
    assert NO_BENCHMARK_NOTE == "no benchmark for this GPU; run `latentsync benchmark`"


def test_long_video_on_cpu_keeps_compile_off():
    resolved = resolve(CPU, duration_s=60.0, quality="auto")
    assert resolved.settings.deepcache and resolved.sources["deepcache"] == SOURCE_LENGTH
    assert not resolved.settings.compile and resolved.sources["compile"] == SOURCE_TIER


def test_auto_with_benchmark_pick():
    pick = {"steps": 9, "scheduler": "unipc", "deepcache_interval": 2, "description": "fastest above SSIM 0.90"}
    resolved = resolve(RTX_4090, duration_s=30.0, benchmark_pick=pick, quality="auto", scheduler="euler")
    assert resolved.settings.steps == 9 and resolved.sources["steps"] == SOURCE_BENCHMARK
    assert resolved.settings.deepcache_interval == 2
    assert resolved.settings.scheduler == "euler" and resolved.sources["scheduler"] == SOURCE_FLAG
    assert NO_BENCHMARK_NOTE not in resolved.notes
    assert "benchmark pick: fastest above SSIM 0.90" in resolved.notes


def test_benchmark_pick_is_ignored_without_auto():
    resolved = resolve(RTX_4090, benchmark_pick={"steps": 9}, quality="balanced")
    assert resolved.settings.steps == 20


def test_benchmark_pick_with_a_bad_value_names_the_cache():
    with pytest.raises(UsageError, match="window = 30 from the benchmark cache"):
        resolve(RTX_4090, benchmark_pick={"window": 30}, quality="auto")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(mode="warp"), "allowed: normal, fast, turbo, ultra"),
        (dict(quality="best"), "allowed: draft, fast, balanced, quality, ultra, auto"),
        (dict(optimization_level="max"), "allowed: auto, conservative, balanced, aggressive"),
        (dict(scheduler="lms"), "allowed: ddim, dpmpp_2m, euler, unipc"),
        (dict(guidance=0.5), "--guidance 0.5"),
        (dict(window=25), "--window 25"),
        (dict(window=0), "--window 0"),
        (dict(steps=0), "--steps 0"),
        (dict(steps=999, scheduler="ddim"), "--steps 999: allowed: 1 to 998"),
        (dict(steps=10**12), "--steps 1000000000000: allowed: 1 to 998"),
        (dict(steps=10**20), "--steps 100000000000000000000: allowed: 1 to 998"),
        (dict(seed=2**32), "--seed 4294967296: allowed: 0 to 4294967295"),
        (dict(guidance=float("inf")), "--guidance inf"),
        (dict(precision="fp8"), "--precision fp8"),
        (dict(device="cuda"), "no CUDA GPU found"),
        (dict(device="tpu"), "allowed: auto, cpu, cuda, cuda:N, mps"),
        (dict(precision="fp16"), "not supported on the CPU"),
    ],
)
def test_bad_requests_are_usage_errors(flags, expected):
    with pytest.raises(UsageError) as caught:
        resolve(CPU, **flags)
    assert expected in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_the_most_steps_allowed_resolve_for_every_scheduler(scheduler):
    assert resolve(steps=998, scheduler=scheduler).settings.steps == 998


def test_the_steps_bound_is_the_most_every_scheduler_can_place():
    """At the bound every scheduler's timesteps are trained ones (0..999); one step more and one is not."""
    from latentsync_cli.constants import TRAIN_TIMESTEPS
    from latentsync_cli.optimizers.schedulers import make_scheduler
    from latentsync_cli.settings.limits import MAX_STEPS

    def highest_timestep(steps: int) -> int:
        return max(int(make_scheduler(name, steps).timesteps.max()) for name in SCHEDULERS)

    assert highest_timestep(MAX_STEPS) < TRAIN_TIMESTEPS <= highest_timestep(MAX_STEPS + 1)


def test_benchmark_pick_with_too_many_steps_names_the_cache():
    with pytest.raises(UsageError, match="steps = 5000 from the benchmark cache is invalid: allowed: 1 to 998"):
        resolve(RTX_4090, benchmark_pick={"steps": 5000}, quality="auto")


def test_setting_problem_checks_types_then_the_shared_limits():
    assert setting_problem("steps", 2.5) == "expected an integer"
    assert setting_problem("deepcache", 1) == "expected true or false"
    assert "0 to 11" in setting_problem("deepcache_branch", 12)
    assert "> 0 and <= 1" in setting_problem("memory_fraction", 0.0)
    assert setting_problem("deepcache_branch", 11) is None and setting_problem("memory_fraction", 1.0) is None


def test_bf16_on_a_device_without_it_says_so():
    with pytest.raises(UsageError, match="Tesla T4 has no bf16 support"):
        resolve(T4, precision="bf16")


def test_compile_flag_on_a_pre_volta_gpu_is_refused():
    with pytest.raises(UsageError, match="--compile"):
        resolve(GTX_1070, compile=True)


def test_fp16_flag_without_tensor_cores_is_allowed_with_a_note():
    resolved = resolve(GTX_1070, precision="fp16")
    assert resolved.settings.precision == "fp16"
    assert any("tensor cores" in note for note in resolved.notes)


def test_choose_device():
    second = dataclasses.replace(RTX_4090, index=1)
    devices = [T4, second, CPU]
    assert choose_device(devices, "auto") is T4
    assert choose_device(devices, "cuda:1") is second
    assert choose_device(devices, "cpu") is CPU
    assert choose_device([MPS, CPU], "auto") is MPS
    with pytest.raises(UsageError, match="found cuda:0, cuda:1"):
        choose_device(devices, "cuda:2")
    with pytest.raises(UsageError, match="no Apple GPU"):
        choose_device(devices, "mps")


def test_device_flag_source():
    resolved = resolve(T4, device="cpu")
    assert resolved.settings.device == "cpu" and resolved.settings.tier == "cpu"
    assert resolved.sources["device"] == SOURCE_FLAG


def test_to_dict_has_a_source_for_every_value():
    data = resolve(T4, mode="fast", steps=7).to_dict()
    assert set(data["settings"]) == set(data["sources"])
    assert data["settings"]["steps"] == 7 and data["sources"]["steps"] == "user flag"

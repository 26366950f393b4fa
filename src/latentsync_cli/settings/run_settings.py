"""The concrete settings of one run, resolved once and then passed down.

`RunSettings` is what the pipeline reads; nothing below the CLI looks at modes,
presets, tiers or flags again. `resolve_settings` (pure) turns a mode, a
quality preset, the GPU tier, the video length, the benchmark cache and the
user's explicit flags into a `RunSettings` plus, for each field, where its
value came from.

Layers, later ones win: RunSettings defaults -> the mode -> the optimization
level (the tier's default one, or --optimization-level) and the tier's pinned
precision -> the quality preset's steps (for `auto`: the length rule, then
the benchmark pick) -> the user's flags. Last, the settings are fitted to the
device: precision "auto" becomes bf16/fp16/fp32 by capability, and TF32,
CUDA graphs and torch.compile are turned off where the device cannot use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from latentsync_cli.constants import DEFAULT_SEED, MAX_WINDOW
from latentsync_cli.errors import UsageError
from latentsync_cli.settings.device_record import Capabilities, DeviceRecord, auto_precision, classify
from latentsync_cli.settings.limits import LIMITS
from latentsync_cli.settings.presets import Mode, PresetTable, QualityPreset
from latentsync_cli.settings.request import DEFAULT_MODE, DEFAULT_QUALITY, SettingsRequest, flag_of

# Where a value came from; shown by `latentsync presets resolve`.
SOURCE_DEFAULT = "default"
SOURCE_MODE = "mode"
SOURCE_QUALITY = "quality"
SOURCE_TIER = "tier"
SOURCE_LENGTH = "length rule"
SOURCE_BENCHMARK = "benchmark cache"
SOURCE_FLAG = "user flag"
SOURCE_LEVEL = "optimization level"  # a level the user named with --optimization-level

NO_BENCHMARK_NOTE = "no benchmark for this GPU; run `latentsync benchmark`"


@dataclass(frozen=True)
class RunSettings:
    # what the mode and quality preset chose
    mode: str = "normal"
    quality: str = "balanced"
    steps: int = 20
    scheduler: str = "ddim"
    guidance: float = 1.5
    window: int = 16  # frames per denoising chunk (<= 24)
    deepcache: bool = False
    deepcache_interval: int = 3
    deepcache_branch: int = 0
    # The speed ideas of docs/PERFORMANCE.md; each off is upstream's computation.
    cfg_cache: bool = False  # the unconditional pass every cfg_cache_interval steps only
    cfg_cache_interval: int = 2
    step_skipping: bool = False  # reuse the last noise prediction while the UNet's input barely moves
    step_skip_threshold: float = 0.1
    multiscale: bool = False  # the first steps at half the latent resolution
    multiscale_share: float = 0.25
    warm_start: bool = False  # a window starts from the previous window's last frame, part-way through the steps
    warm_start_strength: float = 0.5  # the share of the steps a warm-started window runs
    window_overlap: int = 0  # frames each window also makes of the previous one, cross-faded at the border
    face_detect_stride: int = 1
    seed: int = DEFAULT_SEED
    # what the optimization level (from the GPU tier) chose
    device: str = "cpu"
    tier: str = "cpu"
    optimization_level: str = "conservative"
    precision: str = "fp32"
    tf32: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    cuda_graphs: bool = False
    vae_slicing: bool = True
    vae_tiling: bool = False
    windows_per_call: int = 1
    smart_batching: bool = False  # no CUDA-graph padding; windows of equal length share a call in any order
    memory_fraction: float = 0.9

    @property
    def uses_cfg(self) -> bool:
        """Classifier-free guidance runs only when the scale is above 1."""
        return self.guidance > 1.0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ResolvedSettings:
    settings: RunSettings
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # human notes, e.g. "no benchmark for this GPU; run `latentsync benchmark`"

    def to_dict(self) -> dict:
        values = self.settings.to_dict()
        return {
            "settings": values,
            "sources": {name: self.sources.get(name, SOURCE_DEFAULT) for name in values},
            "notes": list(self.notes),
        }


def resolve_settings(
    table: PresetTable,
    request: SettingsRequest,
    devices: Sequence[DeviceRecord] | DeviceRecord,
    duration_s: float | None = None,
    benchmark_pick: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """The settings of one run, and where each value came from. Pure.

    `devices` are the probed devices (or one recorded device); `duration_s` is
    the video length (None: unknown); `benchmark_pick` holds RunSettings field
    values chosen from the benchmark cache for this GPU and length class (plus
    an optional "description"), used only with quality `auto`.
    """
    if isinstance(devices, DeviceRecord):
        devices = [devices]
    mode, preset = check_request(table, request)
    device = choose_device(devices, request.device)
    found = classify(device, list(table.tiers.values()))
    tier = table.tiers[found.tier]

    values = RunSettings().to_dict()
    sources = dict.fromkeys(values, SOURCE_DEFAULT)
    notes: list[str] = []

    _put(values, sources, {"mode": mode.name}, SOURCE_FLAG if request.mode else SOURCE_DEFAULT)
    _put(values, sources, {"quality": preset.name}, SOURCE_FLAG if request.quality else SOURCE_DEFAULT)
    _put(values, sources, mode.settings(), SOURCE_MODE)

    _put(values, sources, {"device": device.torch_device}, SOURCE_TIER if request.device == "auto" else SOURCE_FLAG)
    _put(values, sources, {"tier": tier.name}, SOURCE_TIER)
    if request.optimization_level in (None, "auto"):
        level, level_source = table.levels[tier.level], SOURCE_TIER
        _put(values, sources, {"optimization_level": level.name}, SOURCE_TIER)
    else:
        level, level_source = table.levels[request.optimization_level], SOURCE_LEVEL
        _put(values, sources, {"optimization_level": level.name}, SOURCE_FLAG)
    _put(values, sources, level.settings(), level_source)
    if tier.precision is not None:
        _put(values, sources, {"precision": tier.precision}, SOURCE_TIER)

    if preset.auto:
        rule = table.length[table.length_class(duration_s)]
        _put(values, sources, {"steps": scaled_steps(mode, table.quality[rule.quality])}, SOURCE_LENGTH)
        _put(values, sources, rule.settings(), SOURCE_LENGTH)
        if benchmark_pick is not None:
            _put(values, sources, _pick_values(benchmark_pick, notes), SOURCE_BENCHMARK)
        else:
            notes.append(NO_BENCHMARK_NOTE)
    else:
        steps_source = SOURCE_MODE if preset.step_scale == 1.0 else SOURCE_QUALITY
        _put(values, sources, {"steps": scaled_steps(mode, preset)}, steps_source)

    _put(values, sources, request.explicit_settings(), SOURCE_FLAG)
    _fit_to_device(values, sources, found.capabilities, device, notes)
    check_values(values, sources)
    return ResolvedSettings(settings=RunSettings(**values), sources=sources, notes=tuple(notes))


def scaled_steps(mode: Mode, preset: QualityPreset) -> int:
    """The mode's steps times the preset's scale, rounded half up, never below the mode's minimum."""
    return max(mode.min_steps, math.floor(mode.steps * preset.step_scale + 0.5))


def choose_device(devices: Sequence[DeviceRecord], wanted: str = "auto") -> DeviceRecord:
    """The device for --device: auto (first CUDA GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps."""
    wanted = (wanted or "auto").strip().lower()
    gpus = [d for d in devices if d.backend == "cuda"]
    apple = [d for d in devices if d.backend == "mps"]
    cpus = [d for d in devices if d.backend == "cpu"] or [DeviceRecord(backend="cpu", name="CPU")]
    if wanted == "auto":
        return (gpus or apple or cpus)[0]
    if wanted == "cpu":
        return cpus[0]
    if wanted == "mps":
        if not apple:
            raise UsageError("--device mps: no Apple GPU (MPS) found; use --device auto or --device cpu")
        return apple[0]
    numbered = re.fullmatch(r"cuda(?::(\d+))?", wanted)
    if numbered is None:
        raise UsageError(f"--device {wanted}: unknown device; allowed: auto, cpu, cuda, cuda:N, mps")
    if not gpus:
        raise UsageError(
            f"--device {wanted}: no CUDA GPU found (see `latentsync presets gpu`); use --device auto or cpu"
        )
    if numbered.group(1) is None:
        return gpus[0]
    index = int(numbered.group(1))
    for gpu in gpus:
        if gpu.index == index:
            return gpu
    found = ", ".join(gpu.torch_device for gpu in gpus)
    raise UsageError(f"--device {wanted}: no such GPU; found {found}")


def setting_problem(name: str, value: Any) -> str | None:
    """Why a RunSettings value is invalid, or None when it is fine (ranges: limits.LIMITS)."""
    default = getattr(RunSettings(), name)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return "expected true or false"
        return None
    if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        return "expected an integer"
    if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "expected a number"
    if isinstance(default, str) and not isinstance(value, str):
        return "expected a string"
    limit = LIMITS.get(name)
    return limit.problem(value) if limit is not None else None


def check_values(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """UsageError for a resolved value out of its range, or values that do not go together."""
    for name, value in values.items():
        problem = setting_problem(name, value)
        if problem:
            raise UsageError(f"{name} = {value!r} from the {sources[name]} is invalid: {problem}")
    problem = overlap_problem(values["window"], values["window_overlap"])
    if problem:
        raise UsageError(f"window {values['window']} ({sources['window']}) with window_overlap "
                         f"{values['window_overlap']} ({sources['window_overlap']}): {problem}")  # fmt: skip


def overlap_problem(window: int, overlap: int) -> str | None:
    """Why a window and its overlap do not go together (None when they do)."""
    if overlap > window:
        return "the overlap is taken from the previous window: at most the window's frames; lower --window-overlap"
    if window + overlap > MAX_WINDOW:
        return (f"a window and its overlap are denoised together, at most {MAX_WINDOW} frames; "
                "lower --window or --window-overlap")  # fmt: skip
    return None


# ---------------------------------------------------------------------------
# Helpers of resolve_settings

def check_request(table: PresetTable, request: SettingsRequest) -> tuple[Mode, QualityPreset]:
    """Unknown names and out-of-range flags -> UsageError; returns the mode and quality preset."""
    mode_name = request.mode or DEFAULT_MODE
    quality_name = request.quality or DEFAULT_QUALITY
    if mode_name not in table.modes:
        raise UsageError(f"--mode {mode_name}: unknown mode; allowed: {', '.join(table.modes)}")
    if quality_name not in table.quality:
        raise UsageError(f"--quality {quality_name}: unknown quality preset; allowed: {', '.join(table.quality)}")
    level = request.optimization_level
    if level is not None and level != "auto" and level not in table.levels:
        allowed = ", ".join(("auto", *table.levels))
        raise UsageError(f"--optimization-level {level}: unknown level; allowed: {allowed}")
    for name, value in request.explicit_settings().items():
        problem = setting_problem(name, value)
        if problem:
            raise UsageError(f"{flag_of(name)} {value}: {problem}")
    return table.modes[mode_name], table.quality[quality_name]


def _put(values: dict[str, Any], sources: dict[str, str], changes: Mapping[str, Any], source: str) -> None:
    for name, value in changes.items():
        values[name] = value
        sources[name] = source


_NOT_FROM_BENCHMARK = ("device", "tier", "quality")


def _pick_values(pick: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """The RunSettings fields of a benchmark pick; its description becomes a note."""
    known = {f.name for f in fields(RunSettings)}
    values = {}
    for name, value in pick.items():
        if name == "description":
            notes.append(f"benchmark pick: {value}")
        elif name in known and name not in _NOT_FROM_BENCHMARK:
            values[name] = value
        else:
            notes.append(f"benchmark cache: ignored {name!r}")
    return values


def _fit_to_device(
    values: dict[str, Any], sources: dict[str, str], capabilities: Capabilities, device: DeviceRecord, notes: list[str]
) -> None:
    """Make precision concrete and turn off what the device cannot use."""
    precision = values["precision"]
    if precision == "auto":
        values["precision"] = auto_precision(capabilities)
    else:
        problem = _precision_problem(precision, capabilities, device)
        if problem and sources["precision"] == SOURCE_FLAG:
            raise UsageError(f"--precision {precision}: {problem}; use --precision auto")
        if problem:
            fallback = auto_precision(capabilities)
            notes.append(f"precision {precision} from the {sources['precision']}: {problem}; using {fallback}")
            _put(values, sources, {"precision": fallback}, SOURCE_TIER)
        elif precision == "fp16" and not capabilities.fp16:
            notes.append(f"{device.name} has no fp16 tensor cores: fp16 saves memory but may be slower than fp32")

    if values["tf32"] and not capabilities.tf32:
        _put(values, sources, {"tf32": False}, SOURCE_TIER)
    if values["cuda_graphs"] and not capabilities.cuda_graphs:
        _put(values, sources, {"cuda_graphs": False}, SOURCE_TIER)
    if values["compile"] and not capabilities.compile:
        if sources["compile"] != SOURCE_FLAG:
            _put(values, sources, {"compile": False}, SOURCE_TIER)
        elif device.backend == "cuda":
            raise UsageError(f"--compile: {device.name} is too old for torch.compile (needs compute capability 7.0+)")


def _precision_problem(precision: str, capabilities: Capabilities, device: DeviceRecord) -> str | None:
    if precision == "bf16" and not capabilities.bf16:
        if device.backend == "cuda":
            return f"{device.name} has no bf16 support (needs compute capability 8.0 or newer)"
        return f"bf16 is not supported on {device.backend}"
    if precision == "fp16" and device.backend == "cpu":
        return "fp16 is not supported on the CPU"
    return None

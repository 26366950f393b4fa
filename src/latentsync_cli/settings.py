"""The concrete settings of one run, resolved once and then passed down.

`RunSettings` is what the pipeline reads; nothing below the CLI looks at modes,
presets, tiers or flags again. `resolve_settings` (pure) turns a mode, a
quality preset, the GPU tier, the video length, the benchmark cache and the
user's explicit flags into a `RunSettings` plus, for each field, where its
value came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SCHEDULERS = ("ddim", "dpmpp_2m", "euler", "unipc")
PRECISIONS = ("fp32", "fp16", "bf16")
MAX_WINDOW = 24  # the temporal position encoding has 24 slots

# Where a value came from; shown by `latentsync presets resolve`.
SOURCE_DEFAULT = "default"
SOURCE_MODE = "mode"
SOURCE_QUALITY = "quality"
SOURCE_TIER = "tier"
SOURCE_LENGTH = "length rule"
SOURCE_BENCHMARK = "benchmark cache"
SOURCE_FLAG = "user flag"


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
    face_detect_stride: int = 1
    seed: int = 1247
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

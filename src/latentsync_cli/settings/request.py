"""SettingsRequest: what the user asked for, each option declared once.

Every field is a `sync`/`profile`/`presets resolve` flag and a batch column
(see options.py). None means "not given", so resolve_settings can tell a
user's flag from a preset's value and say where each value came from.

A field named after a RunSettings field (steps, window, ...) overrides that
setting directly; the selectors (mode, quality, optimization level, device,
presets file) choose the presets and the device it is resolved against.
Adding a setting's flag is one field here (and the RunSettings field it sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentsync_cli.constants import DEFAULT_SEED, MAX_WINDOW, PRECISION_CHOICES, SCHEDULERS
from latentsync_cli.options import SPEED_AND_QUALITY, declared_options, option
from latentsync_cli.settings.limits import MAX_STEPS

DEFAULT_MODE = "normal"
DEFAULT_QUALITY = "balanced"
# Options that choose what the request is resolved against, rather than setting a RunSettings field.
SELECTORS = ("mode", "quality", "optimization_level", "device", "presets_file")


@dataclass(frozen=True)
class SettingsRequest:
    mode: str | None = option(
        None, "Speed mode: normal, fast, turbo, ultra (or your own).", SPEED_AND_QUALITY, shown_default=DEFAULT_MODE
    )
    quality: str | None = option(
        None, "Quality preset: draft, fast, balanced, quality, ultra, auto.", SPEED_AND_QUALITY,
        shown_default=DEFAULT_QUALITY,
    )  # fmt: skip
    steps: int | None = option(None, f"Denoising steps, 1 to {MAX_STEPS} (overrides mode and quality).",
                               SPEED_AND_QUALITY)  # fmt: skip
    deepcache: bool | None = option(None, "Reuse deep UNet features between steps.", SPEED_AND_QUALITY)
    scheduler: str | None = option(None, f"Sampler: {', '.join(SCHEDULERS)}.", SPEED_AND_QUALITY)
    window: int | None = option(None, f"Frames per denoising window, 1 to {MAX_WINDOW}.", SPEED_AND_QUALITY)
    guidance: float | None = option(None, "Classifier-free guidance scale; 1.0 turns it off.", SPEED_AND_QUALITY)
    seed: int | None = option(None, "Random seed.", SPEED_AND_QUALITY, shown_default=str(DEFAULT_SEED))
    precision: str | None = option(
        None, f"{', '.join(PRECISION_CHOICES)} (auto: the best the device supports).", SPEED_AND_QUALITY
    )
    compile: bool | None = option(None, "torch.compile the UNet.", SPEED_AND_QUALITY)
    cuda_graphs: bool | None = option(None, "Replay the UNet's kernels from CUDA graphs (CUDA only).", SPEED_AND_QUALITY)
    windows_per_call: int | None = option(None, "Windows denoised together in one UNet call.", SPEED_AND_QUALITY)
    smart_batching: bool | None = option(
        None, "No CUDA-graph padding; windows of equal length share a UNet call (exact).", SPEED_AND_QUALITY
    )
    cfg_cache: bool | None = option(
        None, "Run the unconditional (guidance) pass every few steps only, reusing its difference.", SPEED_AND_QUALITY
    )
    step_skipping: bool | None = option(
        None, "Reuse the last noise prediction while the UNet's input barely changes (TeaCache).", SPEED_AND_QUALITY
    )
    multiscale: bool | None = option(None, "Run the first, noisiest steps at half resolution.", SPEED_AND_QUALITY)
    warm_start: bool | None = option(
        None, "Start each window from the previous one's last frame, with fewer steps (not with shards).",
        SPEED_AND_QUALITY,
    )  # fmt: skip
    window_overlap: int | None = option(
        None, "Frames each window also makes of the previous one, cross-faded at the border (0: none).",
        SPEED_AND_QUALITY,
    )  # fmt: skip
    optimization_level: str | None = option(
        None, "conservative, balanced, aggressive or auto (from the GPU tier).", SPEED_AND_QUALITY
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", SPEED_AND_QUALITY)
    presets_file: Path | None = option(
        None, "Presets override file (instead of $LATENTSYNC_PRESETS or the user file).", SPEED_AND_QUALITY,
        flag="--presets", batch=False,
    )  # fmt: skip

    def explicit_settings(self) -> dict[str, Any]:
        """The RunSettings fields set directly by a flag."""
        values = {declared.name: getattr(self, declared.name) for declared in declared_options(SettingsRequest)}
        return {name: value for name, value in values.items() if name not in SELECTORS and value is not None}


def flag_of(name: str) -> str:
    """The command-line flag of a request field ("--steps")."""
    return next(declared.flag for declared in declared_options(SettingsRequest) if declared.name == name)

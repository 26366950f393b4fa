"""The flags `sync`, `profile` and `presets resolve` share, and `make_request` that turns them into a request.

Every option defaults to None, meaning "not given", so resolve_settings can
tell a user flag from a preset value (and say so in the sources). The request
is resolved by the core (latentsync_cli.resolution), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentsync_cli.constants import MAX_WINDOW, SCHEDULERS
from latentsync_cli.limits import MAX_STEPS
from latentsync_cli.settings import DEFAULT_MODE, DEFAULT_QUALITY, SettingsRequest

PANEL = "Speed and quality"

ModeOption = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help=f"Speed mode: normal, fast, turbo, ultra (or your own). [default: {DEFAULT_MODE}]",
        rich_help_panel=PANEL,
    ),
]
QualityOption = Annotated[
    str | None,
    typer.Option(
        "--quality",
        help=f"Quality preset: draft, fast, balanced, quality, ultra, auto. [default: {DEFAULT_QUALITY}]",
        rich_help_panel=PANEL,
    ),
]
StepsOption = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help=f"Denoising steps, 1 to {MAX_STEPS} (overrides mode and quality).",
        rich_help_panel=PANEL,
    ),
]
DeepcacheOption = Annotated[
    bool | None,
    typer.Option("--deepcache/--no-deepcache", help="Reuse deep UNet features between steps.", rich_help_panel=PANEL),
]
SchedulerOption = Annotated[
    str | None, typer.Option("--scheduler", help=f"Sampler: {', '.join(SCHEDULERS)}.", rich_help_panel=PANEL)
]
WindowOption = Annotated[
    int | None, typer.Option("--window", help=f"Frames per denoising window, 1 to {MAX_WINDOW}.", rich_help_panel=PANEL)
]
GuidanceOption = Annotated[
    float | None,
    typer.Option("--guidance", help="Classifier-free guidance scale; 1.0 turns it off.", rich_help_panel=PANEL),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed. [default: 1247]", rich_help_panel=PANEL)]
PrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--precision", help="auto, fp32, fp16 or bf16 (auto: the best the device supports).", rich_help_panel=PANEL
    ),
]
CompileOption = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet.", rich_help_panel=PANEL)
]
OptimizationLevelOption = Annotated[
    str | None,
    typer.Option(
        "--optimization-level",
        help="conservative, balanced, aggressive or auto (from the GPU tier).",
        rich_help_panel=PANEL,
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=PANEL)]
PresetsOption = Annotated[
    Path | None,
    typer.Option(
        "--presets",
        help="Presets override file (instead of $LATENTSYNC_PRESETS or the user file).",
        rich_help_panel=PANEL,
        dir_okay=False,
    ),
]


def make_request(
    mode: str | None = None,
    quality: str | None = None,
    steps: int | None = None,
    deepcache: bool | None = None,
    scheduler: str | None = None,
    window: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    optimization_level: str | None = None,
    device: str = "auto",
    presets: Path | None = None,
) -> SettingsRequest:
    """The typer parameters of the shared options as a SettingsRequest (names lower-cased)."""
    return SettingsRequest(
        mode=_lower(mode),
        quality=_lower(quality),
        steps=steps,
        deepcache=deepcache,
        scheduler=_lower(scheduler),
        window=window,
        guidance=guidance,
        seed=seed,
        precision=_lower(precision),
        compile=compile,
        optimization_level=_lower(optimization_level),
        device=_lower(device) or "auto",
        presets_file=presets,
    )


def _lower(text: str | None) -> str | None:
    return text.strip().lower() if text is not None else None

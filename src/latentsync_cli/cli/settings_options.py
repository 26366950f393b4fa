"""The flags `sync` shares with `presets resolve`, and how they become RunSettings.

How a command uses them (this is what `presets resolve` does):

    from latentsync_cli.cli.settings_options import (
        CompileOption, DeepcacheOption, DeviceOption, GuidanceOption, ModeOption,
        OptimizationLevelOption, PrecisionOption, PresetsOption, QualityOption,
        SchedulerOption, SeedOption, StepsOption, WindowOption,
        make_request, resolve_for_cli,
    )

    @app.command()
    def sync(..., mode: ModeOption = None, quality: QualityOption = None,
             steps: StepsOption = None, deepcache: DeepcacheOption = None,
             scheduler: SchedulerOption = None, window: WindowOption = None,
             guidance: GuidanceOption = None, seed: SeedOption = None,
             precision: PrecisionOption = None, compile: CompileOption = None,
             optimization_level: OptimizationLevelOption = None,
             device: DeviceOption = "auto", presets: PresetsOption = None):
        request = make_request(mode=mode, quality=quality, steps=steps, ...)  # same names
        resolved = resolve_for_cli(request, duration_s=video_info.duration_s,
                                   pick_from_benchmark=...)  # the benchmark cache's picker, once it exists
        settings = resolved.settings   # the frozen RunSettings the pipeline reads
        for note in resolved.notes: output.warn(note)

Every option defaults to None, meaning "not given", so resolve_settings can
tell a user flag from a preset value (and say so in the sources).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from latentsync_cli.constants import SCHEDULERS
from latentsync_cli.device_record import DeviceRecord
from latentsync_cli.hardware import HardwareReport, probe_devices
from latentsync_cli.presets import load_presets
from latentsync_cli.settings import (
    DEFAULT_MODE,
    DEFAULT_QUALITY,
    ResolvedSettings,
    SettingsRequest,
    choose_device,
    resolve_settings,
)

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
    int | None, typer.Option("--steps", help="Denoising steps (overrides mode and quality).", rich_help_panel=PANEL)
]
DeepcacheOption = Annotated[
    bool | None,
    typer.Option("--deepcache/--no-deepcache", help="Reuse deep UNet features between steps.", rich_help_panel=PANEL),
]
SchedulerOption = Annotated[
    str | None, typer.Option("--scheduler", help=f"Sampler: {', '.join(SCHEDULERS)}.", rich_help_panel=PANEL)
]
WindowOption = Annotated[
    int | None, typer.Option("--window", help="Frames per denoising window, 1 to 24.", rich_help_panel=PANEL)
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

# pick_from_benchmark(device, length_class) -> RunSettings field values (+ "description"), or None
BenchmarkPicker = Callable[[DeviceRecord, str], Mapping[str, Any] | None]


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


def resolve_for_cli(
    request: SettingsRequest,
    duration_s: float | None = None,
    benchmark_pick: Mapping[str, Any] | None = None,
    pick_from_benchmark: BenchmarkPicker | None = None,
    environ: Mapping[str, str] | None = None,
    hardware: HardwareReport | None = None,
) -> ResolvedSettings:
    """Load the preset table (--presets > $LATENTSYNC_PRESETS > user file), probe the devices, resolve.

    With quality `auto` and no `benchmark_pick`, `pick_from_benchmark` is asked
    for one for the chosen device and the video's length class; by default that
    is the benchmark cache of this machine (`latentsync benchmark`).
    """
    environ = os.environ if environ is None else environ
    table = load_presets(request.presets_file, environ)
    hardware = probe_devices(environ=environ) if hardware is None else hardware
    preset = table.quality.get(request.quality or DEFAULT_QUALITY)
    if benchmark_pick is None and preset is not None and preset.auto:
        if pick_from_benchmark is None:
            from latentsync_cli.bench.auto import picker_for  # imports torch: only when auto asks for it

            pick_from_benchmark = picker_for(table, request.mode)
        device = choose_device(hardware.devices, request.device)
        benchmark_pick = pick_from_benchmark(device, table.length_class(duration_s))
    return resolve_settings(table, request, hardware.devices, duration_s, benchmark_pick)


def _lower(text: str | None) -> str | None:
    return text.strip().lower() if text is not None else None

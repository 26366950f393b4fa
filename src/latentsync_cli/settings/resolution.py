"""A settings request resolved on this machine: the preset table, the probed devices and the benchmark cache.

`settings.resolve_settings` is pure; this is where its inputs come from. The
job API calls it twice per job: once without the speech length (so that a
mistyped flag fails before any file is read), once with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.hardware import HardwareReport, probe_devices
from latentsync_cli.settings.presets import PresetTable, load_presets
from latentsync_cli.settings.run_settings import (
    DEFAULT_QUALITY,
    ResolvedSettings,
    SettingsRequest,
    choose_device,
    resolve_settings,
)

# pick_from_benchmark(device, length_class) -> RunSettings field values (+ "description"), or None
BenchmarkPicker = Callable[[DeviceRecord, str], Mapping[str, Any] | None]


def no_benchmark(device: DeviceRecord, length_class: str) -> None:
    """A picker that never picks: for the flag check before the media are read."""
    return


def resolve_request(
    request: SettingsRequest,
    table: PresetTable,
    hardware: HardwareReport,
    duration_s: float | None = None,
    pick_from_benchmark: BenchmarkPicker | None = None,
) -> ResolvedSettings:
    """The settings for `request` here. With quality `auto`, `pick_from_benchmark` is asked for the chosen
    device and the video's length class; by default that is this machine's benchmark cache."""
    preset = table.quality.get(request.quality or DEFAULT_QUALITY)
    benchmark_pick = None
    if preset is not None and preset.auto:
        if pick_from_benchmark is None:
            from latentsync_cli.settings.benchmark_pick import (
                picker_for,  # imports torch: only when auto asks for it
            )

            pick_from_benchmark = picker_for(table, request.mode)
        device = choose_device(hardware.devices, request.device)
        benchmark_pick = pick_from_benchmark(device, table.length_class(duration_s))
    return resolve_settings(table, request, hardware.devices, duration_s, benchmark_pick)


def resolve_here(
    request: SettingsRequest, duration_s: float | None = None, environ: Mapping[str, str] | None = None
) -> ResolvedSettings:
    """`request` resolved with this machine's preset files (--presets > $LATENTSYNC_PRESETS > user file),
    devices and benchmark cache."""
    table = load_presets(request.presets_file, environ)
    return resolve_request(request, table, probe_devices(environ=environ), duration_s)

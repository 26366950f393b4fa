"""`--quality auto` from the benchmark cache: the fastest measured setting good enough for this video.

For a device with a cache entry, `pick_from_benchmark` takes the measured
configurations that the video's length class allows and, when the entry has
fidelity (real weights), keeps those at or above every `[auto] fidelity_floor`
of the preset table; the fastest of those wins. An entry measured with random
weights has no fidelity, so it is picked by speed alone and says so.

"Allows" means: a switch the length rule turns off (e.g. DeepCache for short
videos) must not be on in the settings the pick would set. Switches the pick
does not set (torch.compile and CUDA graphs come from the optimization level
unless the benchmark varied them) stay as the length rule says.
"""

from __future__ import annotations

import math
from pathlib import Path

from latentsync_cli.benchmark_data import cache
from latentsync_cli.benchmark_data.entries import BenchmarkEntry, CacheKey, CaseResult
from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.presets import PresetTable

# The RunSettings fields a speed mode sets; a pick always carries these.
MODE_FIELDS = (
    "mode",
    "steps",
    "scheduler",
    "guidance",
    "window",
    "deepcache",
    "deepcache_interval",
    "deepcache_branch",
    "face_detect_stride",
)


def pick_from_benchmark(
    device_record: DeviceRecord,
    length_class: str,
    table: PresetTable,
    mode: str | None = None,
    cache_path: Path | None = None,
) -> dict | None:
    """RunSettings field values plus "description" for this device and length class, or None without an entry.

    With `mode`, only that mode's configurations are considered (the user named one).
    """
    current = cache.make_key(device_record, weights="")
    entry = choose_entry(cache.device_entries(current, cache_path), current)
    if entry is None:
        return None
    rule = table.length[length_class]
    candidates = [
        config
        for config in entry.configs
        if config.measured is not None
        and (mode is None or config.mode == mode)
        and allowed_by_rule(pick_settings(config), rule.settings())
    ]
    floors = dict(table.auto.fidelity_floor)
    if entry.has_fidelity:
        candidates = [config for config in candidates if meets_floors(config, floors)]
    if not candidates:
        reason = "meets the fidelity floor" if entry.has_fidelity else "is allowed"
        return {
            "description": f"{_origin(entry)}: no measured configuration {reason} for {length_class} videos; "
            f"using the length rule{_caveats(entry, current)}"
        }
    fastest = min(candidates, key=lambda config: config.measured.seconds_per_output_second)
    return {**pick_settings(fastest), "description": _describe(entry, fastest, length_class, floors, current)}


def choose_entry(entries: list[BenchmarkEntry], current: CacheKey) -> BenchmarkEntry | None:
    """Prefer entries measured by the installed software, then ones with fidelity, then the newest."""

    def preference(entry: BenchmarkEntry) -> tuple:
        return (not cache.is_stale(entry, current), entry.has_fidelity, entry.date)

    usable = [entry for entry in entries if entry.configs]
    return max(usable, key=preference) if usable else None


def pick_settings(config: CaseResult) -> dict:
    """The settings a pick sets: the mode's fields plus whatever the benchmark varied.

    A CPU benchmark runs fewer steps than the mode has; the pick takes the mode's own ("mode_steps").
    """
    names = list(MODE_FIELDS) + [name for name in config.changes if name not in MODE_FIELDS]
    picked = {name: config.settings[name] for name in names if name in config.settings}
    if config.mode_steps and "steps" not in config.changes:
        picked["steps"] = config.mode_steps
    return picked


def allowed_by_rule(settings: dict, rule_settings: dict) -> bool:
    """False when the pick would turn on a switch that the length rule turns off."""
    for name, rule_value in rule_settings.items():
        if rule_value is False and settings.get(name) is True:
            return False
    return True


def meets_floors(config: CaseResult, floors: dict[str, float]) -> bool:
    """Every floored metric is known and at or above its floor (an identical output meets any floor)."""
    fidelity = config.fidelity or {}
    if fidelity.get("identical"):
        return True
    for metric, floor in floors.items():
        value = fidelity.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value < floor:
            return False
    return True


def _origin(entry: BenchmarkEntry) -> str:
    return f"benchmark {entry.date[:10]} on {entry.key.device}"


def _describe(
    entry: BenchmarkEntry, config: CaseResult, length_class: str, floors: dict, current: CacheKey
) -> str:
    text = f"{_origin(entry)}: {config.name}, {config.measured.seconds_per_output_second:.2f} s/s"
    if entry.has_fidelity:
        fidelity = config.fidelity or {}
        if fidelity.get("identical"):
            text += f", identical to {entry.reference or 'the reference'}"
        for metric, floor in floors.items():
            if fidelity.get(metric) is not None:
                text += f", {metric.replace('_', ' ')} {fidelity[metric]:.2f} (floor {floor:.2f})"
    else:
        text += f", fastest allowed for {length_class} videos; fidelity unknown (random weights)"
    return text + _caveats(entry, current)


def _caveats(entry: BenchmarkEntry, current: CacheKey) -> str:
    text = ""
    if entry.label:
        text += f"; {entry.label}"
    if cache.is_stale(entry, current):
        key = entry.key
        text += f"; measured with torch {key.torch} and latentsync {key.latentsync}: run `latentsync benchmark` again"
    return text


def picker_for(table: PresetTable, mode: str | None = None):
    """`pick_from_benchmark` bound to a table (and the user's --mode), as resolve_for_cli takes it."""

    def pick(device_record: DeviceRecord, length_class: str) -> dict | None:
        return pick_from_benchmark(device_record, length_class, table, mode)

    return pick

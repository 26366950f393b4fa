"""`latentsync presets ...`: the preset table and what it resolves to here.

Thin: each command loads the table (presets.py), probes the devices
(hardware.py) or resolves settings (settings.py) and prints. Tables go to
stderr; --json prints one JSON object alone on stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer
from rich import box
from rich.table import Table

from latentsync_cli.cli.options import declared_annotation, with_options
from latentsync_cli.cli.output import Output, get_output
from latentsync_cli.errors import OutputError, UsageError
from latentsync_cli.options import build
from latentsync_cli.settings.device_record import auto_precision, classify
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import (
    SECTIONS,
    AutoPolicy,
    PresetTable,
    describe_range,
    file_keys,
    load_presets,
    locate_preset_files,
    user_presets_path,
)
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.resolution import resolve_here
from latentsync_cli.settings.run_settings import choose_device

app = typer.Typer(help="Show the preset table and the settings a mode resolves to here.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON alone on stdout.")]
PresetsOption = declared_annotation(SettingsRequest, "presets_file")

SECTION_TITLES = {
    "modes": "Speed modes (--mode)",
    "quality": "Quality presets (--quality)",
    "levels": "Optimization levels (--optimization-level)",
    "tiers": "Device tiers (default level per device)",
    "length": "Length rule (quality auto, no benchmark)",
}


@app.command("list", help="Show the merged preset table: modes, quality presets, levels, tiers, length rule.")
def list_presets(ctx: typer.Context, presets: PresetsOption = None, json_output: JsonOption = False) -> None:
    table = load_presets(presets)
    if json_output:
        Output.print_json(table.to_dict())
        return
    out = get_output(ctx)
    out.table(_modes_table(table))
    out.table(_quality_table(table))
    out.table(_levels_table(table))
    out.table(_tiers_table(table))
    out.table(_length_table(table))
    floors = ", ".join(f"{metric} >= {floor:g}" for metric, floor in table.auto.fidelity_floor.items())
    out.info(f"auto pick: fastest setting with {floors or 'no floor'} against mode {table.auto.reference_mode}")
    _say(out, "files: " + " <- ".join(table.files))
    out.info("details: `latentsync presets show NAME`")


@app.command("show", help="Show one mode, quality preset, level, tier or length class (NAME or SECTION.NAME).")
def show_preset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="e.g. fast, turbo, aggressive, modes.fast")],
    presets: PresetsOption = None,
    json_output: JsonOption = False,
) -> None:
    table = load_presets(presets)
    found = find_entries(table, name)
    if not found:
        known = sorted({entry for section in SECTIONS for entry in getattr(table, section)})
        raise UsageError(f"no preset named {name!r}; known names: {', '.join(known)}")
    if json_output:
        Output.print_json(found)
        return
    out = get_output(ctx)
    for section, entries in found.items():
        for entry_name, values in entries.items():
            out.table(_entry_table(f"{section}.{entry_name}", values))


@app.command("resolve", help="The concrete settings `sync` would use here, each with its source.")
@with_options(SettingsRequest, "request")
def resolve(
    ctx: typer.Context,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Video length in seconds (for quality auto).", min=0.0)
    ] = None,
    json_output: JsonOption = False,
    *,
    request: dict,
) -> None:
    request = build(SettingsRequest, request)
    resolved = resolve_here(request, duration_s=duration)
    if json_output:
        Output.print_json(resolved.to_dict())
        return
    out = get_output(ctx)
    rows = _new_table("setting", "value", "source", title="Resolved settings")
    for name, value in resolved.settings.to_dict().items():
        rows.add_row(name, _show(value), resolved.sources.get(name, "default"))
    out.table(rows)
    for note in resolved.notes:
        _say(out, f"note: {note}")


@app.command("path", help="Which preset files are in effect: built-in, user override, --presets/$LATENTSYNC_PRESETS.")
def show_paths(ctx: typer.Context, presets: PresetsOption = None, json_output: JsonOption = False) -> None:
    files = locate_preset_files(presets).to_dict()
    if json_output:
        Output.print_json(files)
        return
    out = get_output(ctx)
    _say(out, f"built-in:      {files['builtin']} (in effect)")
    user_status = "exists" if files["user_exists"] else "not created; `latentsync presets init` writes it"
    if files["explicit"]:
        user_status += f"; not used, {files['explicit_from']} wins"
    elif files["user_exists"]:
        user_status += ", in effect"
    _say(out, f"user override: {files['user']} ({user_status})")
    if files["explicit"]:
        explicit_status = "in effect" if Path(files["explicit"]).is_file() else "MISSING"
        _say(out, f"{files['explicit_from']}: {files['explicit']} ({explicit_status})")


@app.command("init", help="Write a commented user override file (the user config dir unless --path).")
def init(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Option("--path", help="Where to write it.", dir_okay=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    target = path if path is not None else user_presets_path()
    if target.exists() and not force:
        raise OutputError(f"{target} already exists; use --force to overwrite it")
    text = override_file_text()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise OutputError(f"{target}: cannot write the presets file ({error.strerror or error})") from None
    load_presets(target)  # what was written must load over the built-in table
    _say(get_output(ctx), f"wrote {target}")


@app.command("gpu", help="The detected devices, their tier and capabilities.")
def gpu(ctx: typer.Context, presets: PresetsOption = None, json_output: JsonOption = False) -> None:
    table = load_presets(presets)
    report = probe_devices()
    tiers = list(table.tiers.values())
    devices = []
    for record in report.devices:
        found = classify(record, tiers)
        devices.append(
            {
                **record.to_dict(),
                "device": record.torch_device,
                "tier": found.tier,
                "level": table.tiers[found.tier].level,
                "capabilities": found.capabilities.to_dict(),
                "auto_precision": auto_precision(found.capabilities),
            }
        )
    selected = choose_device(report.devices, "auto")
    chosen = next(d for d in devices if d["device"] == selected.torch_device)
    summary = {"device": chosen["device"], "tier": chosen["tier"], "level": chosen["level"]}
    if json_output:
        Output.print_json({"selected": summary, "devices": devices, "problems": list(report.problems)})
        return
    out = get_output(ctx)
    rows = _new_table("device", "memory", "compute", "tier", "level", "fast precisions", title="Devices")
    for d in devices:
        capability = ".".join(map(str, d["compute_capability"])) if d["compute_capability"] else "-"
        fast = [name for name in ("bf16", "fp16", "tf32") if d["capabilities"][name]] or ["fp32 only"]
        rows.add_row(
            d["device"], _gigabytes(d["total_memory_bytes"]), capability, d["tier"], d["level"], " ".join(fast)
        )
    out.table(rows)
    for d in devices:
        versions = f", driver {d['driver_version']}, CUDA {d['cuda_version']}" if d["driver_version"] else ""
        _say(out, f"{d['device']}: {d['name']}{versions}")
    out.info(f"--device auto uses {summary['device']} (tier {summary['tier']}, level {summary['level']})")
    # A machine without NVIDIA has no NVML: that is what the probe expects there, not a problem to show.
    if out.debug:
        for problem in report.problems:
            _say(out, f"probe: skipped {problem}")


# ---------------------------------------------------------------------------
# Helpers


def find_entries(table: PresetTable, name: str) -> dict[str, dict[str, Any]]:
    """Every entry called NAME (or the one SECTION.NAME), as {section: {name: values}}."""
    data = table.to_dict()
    section, _, entry = name.partition(".") if "." in name else ("", "", name)
    found: dict[str, dict[str, Any]] = {}
    for candidate in SECTIONS:
        if section and candidate != section:
            continue
        if entry in data[candidate]:
            found[candidate] = {entry: data[candidate][entry]}
    return found


def override_file_text() -> str:
    """The commented override file `presets init` writes: a key reference, then an example new mode."""
    lines = [
        "# latentsync presets override file.",
        "#",
        "# Merged over the built-in table entry by entry: a key set here replaces",
        "# that key only, and new names add new modes, presets, levels or tiers.",
        "# `latentsync presets list` shows the merged result; `latentsync presets",
        "# list --json` prints the whole built-in table to copy from.",
        "# Precedence: --presets FILE, else $LATENTSYNC_PRESETS, else this file.",
        "#",
        "# Example: make `fast` use 10 steps and no DeepCache:",
        "#   [modes.fast]",
        "#   steps = 10",
        "#   deepcache = false",
        "#",
        "# Keys, per table:",
    ]
    for section, cls in SECTIONS.items():
        lines.append(f"#   [{section}.NAME]")
        lines.extend(_key_help_lines(cls))
    lines.append("#   [auto]")
    lines.extend(_key_help_lines(AutoPolicy))
    lines += ["", "# An example of a new mode (use it with --mode custom):", ""]
    example = {"modes": {"custom": _example_mode()}}
    return "\n".join(lines) + "\n" + tomli_w.dumps(example)


def _example_mode() -> dict[str, Any]:
    fast = load_presets(environ={}).modes["fast"]
    values = {key: getattr(fast, key) for key in file_keys(type(fast))}
    values["description"] = "my own mode: starts as a copy of `fast`"
    return values


def _key_help_lines(cls: type) -> list[str]:
    lines = []
    for key, spec in file_keys(cls).items():
        meta = spec.metadata
        allowed = f" (one of: {', '.join(meta['choices'])})" if meta["choices"] else ""
        bounds = describe_range(spec)
        if bounds != "any":
            allowed += f" ({bounds})"
        lines.append(f"#     {key}: {meta['help']}{allowed}")
    return lines


def _modes_table(table: PresetTable) -> Table:
    rows = _new_table(
        "mode",
        "steps",
        "min",
        "sampler",
        "guidance",
        "window",
        "deepcache",
        "detect every",
        title=SECTION_TITLES["modes"],
    )
    for m in table.modes.values():
        deepcache = f"every {m.deepcache_interval}" if m.deepcache else "off"
        rows.add_row(
            m.name,
            str(m.steps),
            str(m.min_steps),
            m.scheduler,
            f"{m.guidance:g}",
            str(m.window),
            deepcache,
            str(m.face_detect_stride),
        )
    return rows


def _quality_table(table: PresetTable) -> Table:
    rows = _new_table("preset", "steps", "description", title=SECTION_TITLES["quality"])
    for q in table.quality.values():
        rows.add_row(q.name, "auto" if q.auto else f"x{q.step_scale:g}", q.description)
    return rows


def _levels_table(table: PresetTable) -> Table:
    rows = _new_table(
        "level", "precision", "tf32", "compile", "graphs", "vae", "win/call", "mem", title=SECTION_TITLES["levels"]
    )
    for lv in table.levels.values():
        vae = "+".join(part for part, on in (("slice", lv.vae_slicing), ("tile", lv.vae_tiling)) if on) or "whole"
        rows.add_row(
            lv.name,
            lv.precision,
            _show(lv.tf32),
            _show(lv.compile),
            _show(lv.cuda_graphs),
            vae,
            str(lv.windows_per_call),
            f"{lv.memory_fraction:.0%}",
        )
    return rows


def _tiers_table(table: PresetTable) -> Table:
    rows = _new_table("tier", "device", "from", "level", "precision", title=SECTION_TITLES["tiers"])
    for t in table.tiers.values():
        start = f"{t.min_memory_gb:g} GB" if t.backend == "cuda" else "-"
        rows.add_row(t.name, t.backend, start, t.level, t.precision or "level's")
    return rows


def _length_table(table: PresetTable) -> Table:
    rows = _new_table("length", "up to", "quality", "also sets", title=SECTION_TITLES["length"])
    for rule in table.length.values():
        up_to = f"{rule.max_seconds:g} s" if rule.max_seconds is not None else "longer"
        also = ", ".join(f"{key} {_show(value)}" for key, value in rule.settings().items()) or "-"
        rows.add_row(rule.name, up_to, rule.quality, also)
    return rows


def _new_table(*headers: str, title: str) -> Table:
    rows = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    for position, header in enumerate(headers):
        rows.add_column(header, no_wrap=position == 0)  # names stay whole
    return rows


def _say(out: Output, text: str) -> None:
    """A plain line on stderr: no markup, no wrapping (paths stay copyable)."""
    out.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _entry_table(title: str, values: dict[str, Any]) -> Table:
    rows = _new_table("key", "value", title=title)
    for key, value in values.items():
        rows.add_row(key, _show(value))
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _gigabytes(size: int | None) -> str:
    return f"{size / 1e9:.1f} GB" if size else "-"

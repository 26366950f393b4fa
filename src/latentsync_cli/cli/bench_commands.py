"""`latentsync benchmark`: measure this device, cache the result, write a report.

Thin: the work is in latentsync_cli.bench (runner, cache, report). Progress
and the summary go to stderr; --json prints the benchmark entry alone on stdout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from latentsync_cli.cli.options import declared_annotation, with_flags
from latentsync_cli.cli.output import Output, get_output
from latentsync_cli.constants import WEIGHT_CHOICES
from latentsync_cli.errors import UsageError
from latentsync_cli.jobs.signals import stop_on_signals
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import choose_device

DeviceOption = declared_annotation(SettingsRequest, "device")
PresetsOption = declared_annotation(SettingsRequest, "presets_file")
DEFAULT_VIDEO_S = 60.0  # the video length of the cost table's "per 100 videos" without --duration


@dataclass(frozen=True)
class BenchmarkFlags:
    quick: Annotated[bool, typer.Option("--quick", help="Every speed mode with DeepCache on and off (default).")] = (
        False
    )
    full: Annotated[
        bool,
        typer.Option("--full", help="Also schedulers, windows, windows per call, compile, CUDA graphs, precision."),
    ] = False
    stress: Annotated[
        bool, typer.Option("--stress", help="One long run watching memory growth and throughput drift.")
    ] = False
    clear: Annotated[bool, typer.Option("--clear", help="Remove this device's cached benchmark and exit.")] = False
    show: Annotated[bool, typer.Option("--show", help="Print this device's cached benchmark and exit.")] = False
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON alone on stdout.")] = False
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Seconds of test clip [default: 10 on a GPU, 0.5 on a CPU; stress 120/4]."),
    ] = None
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="auto (the checkpoint if present, else random), checkpoint, random, random-tiny, proxy.",
        ),
    ] = "auto"
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Folder with the weights (instead of the Hub cache).")
    ] = None
    gpu_price: Annotated[
        float | None, typer.Option("--gpu-price", help="Dollars per hour of this machine, for the cost table.")
    ] = None
    report_dir: Annotated[
        Path | None,
        typer.Option("--report", help="Report folder [default: <user data dir>/benchmarks/<date>-<device>]."),
    ] = None
    video: Annotated[Path | None, typer.Option("--video", help="Your own face video instead of the test clip.")] = None
    audio: Annotated[Path | None, typer.Option("--audio", help="Your own speech, with --video (without it: the video's own speech, and each "
                                "output's mouth is also scored against the real one).")] = None
    modes: Annotated[
        str | None,
        typer.Option("--modes", help="Comma-separated speed modes to measure [default: all]; `normal` always runs."),
    ] = None
    device: DeviceOption = "auto"
    presets: PresetsOption = None

    @property
    def level(self) -> str:
        chosen = [name for name, on in (("quick", self.quick), ("full", self.full), ("stress", self.stress)) if on]
        if len(chosen) > 1:
            raise UsageError(f"--{chosen[0]} and --{chosen[1]}: choose one benchmark level")
        return chosen[0] if chosen else "quick"


@with_flags(BenchmarkFlags)
def benchmark(ctx: typer.Context, *, flags: BenchmarkFlags) -> None:
    # Imported here: the benchmark pulls in torch, diffusers and MediaPipe, which would slow every `latentsync` call.
    from latentsync_cli.benchmark_data import cache

    out = get_output(ctx)
    level = flags.level
    _check_numbers(flags.duration, flags.gpu_price, flags.weights)
    table = load_presets(flags.presets)
    record = choose_device(probe_devices().devices, flags.device)
    key = cache.make_key(record, weights="")
    if flags.clear and flags.show:
        raise UsageError("--clear and --show: use one at a time")
    if flags.clear:
        _clear(out, record, key, flags.json_output)
    elif flags.show:
        _show(out, record, key, flags.json_output, flags.gpu_price, flags.duration)
    else:
        _measure(out, flags, level, table, record)


def register(app: typer.Typer) -> None:
    app.command(help="Measure this GPU (or CPU) on the preset matrix, cache the results and write a report.")(benchmark)


def _measure(out: Output, flags: BenchmarkFlags, level: str, table, record) -> None:
    """Run the benchmark, cache it, write the report, print the summary (or the JSON)."""
    from latentsync_cli.bench import report
    from latentsync_cli.bench.runner import (
        BenchmarkRequest,
        check_request,
        run_benchmark,
    )
    from latentsync_cli.benchmark_data import cache

    modes = flags.modes or ""
    request = BenchmarkRequest(
        level=level,
        duration_s=flags.duration,
        weights=flags.weights,
        checkpoint_dir=flags.checkpoint_dir,
        video=flags.video,
        audio=flags.audio,
        modes=tuple(name.strip().lower() for name in modes.split(",") if name.strip()),
    )
    check_request(request, table)
    out.info(f"benchmark ({level}) on {record.name}")
    with stop_on_signals():
        entry = run_benchmark(request, table, record, progress=out.info)
    cache_path = cache.store_benchmark(entry)
    folder = flags.report_dir if flags.report_dir is not None else report.default_report_dir(entry)
    video_s = flags.duration or DEFAULT_VIDEO_S
    paths = report.write_report(entry, folder, flags.gpu_price, video_s)
    if flags.json_output:
        printed = {**entry.to_dict(), "cache_file": str(cache_path), "report": paths}
        if flags.gpu_price is not None:
            printed["costs"] = report.cost_table(entry, flags.gpu_price, video_s)
        Output.print_json(json_safe(printed))
        return
    summary = report.summary_text(entry, flags.gpu_price, video_s)
    out.console.print(summary, markup=False, highlight=False, soft_wrap=True)
    out.info(f"cached in {cache_path}")
    out.info(f"report: {paths['summary']}, {paths['plot']}")


def _check_numbers(duration: float | None, gpu_price: float | None, weights: str) -> None:
    if duration is not None and not (math.isfinite(duration) and duration >= 0.2):
        raise UsageError(f"--duration {duration}: use at least 0.2 seconds")
    if gpu_price is not None and not (math.isfinite(gpu_price) and gpu_price >= 0):
        raise UsageError(f"--gpu-price {gpu_price}: use a price in dollars per hour, 0 or more")
    if weights not in WEIGHT_CHOICES:
        raise UsageError(f"--weights {weights}: allowed: {', '.join(WEIGHT_CHOICES)}")


def _clear(out: Output, record, key, json_output: bool) -> None:
    from latentsync_cli.benchmark_data import cache

    removed = cache.clear_device(key)
    if json_output:
        Output.print_json({"device": record.name, "removed": removed, "cache_file": str(cache.cache_file())})
        return
    if removed:
        out.info(f"removed {removed} cached benchmark(s) of {record.name} from {cache.cache_file()}")
    else:
        out.info(f"no cached benchmark of {record.name} in {cache.cache_file()}")


def _show(out: Output, record, key, json_output: bool, gpu_price, duration) -> None:
    from latentsync_cli.bench import report
    from latentsync_cli.benchmark_data import cache

    entries = cache.device_entries(key)
    if json_output:
        stored = [entry.to_dict() for entry in entries]
        Output.print_json(json_safe({"device": record.name, "cache_file": str(cache.cache_file()), "entries": stored}))
        return
    if not entries:
        out.info(f"no benchmark for {record.name}; run `latentsync benchmark`")
        return
    for entry in entries:
        text = report.summary_text(entry, gpu_price, duration or DEFAULT_VIDEO_S)
        if cache.is_stale(entry, key):
            text += "\n(stale: measured with other torch/latentsync versions; run `latentsync benchmark` again)"
        out.console.print(text + "\n", markup=False, highlight=False, soft_wrap=True)
    out.info(f"from {cache.cache_file()}")


def json_safe(value):
    """The value with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value

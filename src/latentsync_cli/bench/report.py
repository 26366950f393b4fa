"""The benchmark report: a text summary, the JSON entry and a speed-vs-fidelity plot.

Everything here reads a `BenchmarkEntry` (bench/results.py: what the runner
builds and the cache stores), so `--show` can print an old entry exactly as
the run that made it did.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import platformdirs
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentsync_cli.bench import metrics
from latentsync_cli.bench.flops import unet_tflop_per_output_second
from latentsync_cli.benchmark_data.entries import BenchmarkEntry, BenchmarkInput, CaseResult, StressSummary
from latentsync_cli.errors import OutputError

STAGES = ("landmarks", "vae", "denoise", "restore", "encode")


def default_report_dir(entry: BenchmarkEntry) -> Path:
    """<user data dir>/benchmarks/<date>-<device>/"""
    date = entry.date[:10] or "undated"
    device = re.sub(r"[^A-Za-z0-9]+", "-", entry.key.device).strip("-").lower() or "device"
    return Path(platformdirs.user_data_dir("latentsync")) / "benchmarks" / f"{date}-{device}"


def write_report(
    entry: BenchmarkEntry, folder: Path, gpu_price: float | None = None, video_s: float | None = None
) -> dict:
    """Write summary.txt, benchmark.json and speed.png into `folder`; returns their paths."""
    folder = Path(folder).expanduser()
    paths = {
        "summary": folder / "summary.txt",
        "json": folder / "benchmark.json",
        "plot": folder / "speed.png",
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths["summary"].write_text(summary_text(entry, gpu_price, video_s) + "\n", encoding="utf-8")
        paths["json"].write_text(json.dumps(entry.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        plot_speed(entry, paths["plot"])
    except OSError as error:
        raise OutputError(
            f"{folder}: cannot write the benchmark report ({error.strerror}); choose another --report DIR"
        ) from None
    return {name: str(path) for name, path in paths.items()}


# --- text ------------------------------------------------------------------------------------


def summary_text(entry: BenchmarkEntry, gpu_price: float | None = None, video_s: float | None = None) -> str:
    key = entry.key
    lines = [
        f"latentsync benchmark ({entry.level or '?'}) on {key.device}, {entry.date[:10]}",
        f"torch {key.torch}, latentsync {key.latentsync}, weights {key.weights}: {entry.weights.description}",
        _input_line(entry.input),
    ]
    if entry.label:
        lines.append(f"every timing below: {entry.label}")
    if entry.fidelity_note:
        lines.append(f"fidelity: {entry.fidelity_note}")
    lines.append("")
    lines.extend(_config_table(entry.configs))
    lines.append("")
    lines.extend(_mode_table(entry))
    if entry.encoders is not None:
        lines.append("")
        lines.append(entry.encoders.describe())
    if gpu_price is not None:
        lines.append("")
        lines.extend(cost_lines(entry, gpu_price, video_s or (entry.input and entry.input.duration_s) or 60.0))
    if entry.stress is not None:
        lines.append("")
        lines.extend(_stress_lines(entry.stress))
    return "\n".join(lines)


def _input_line(source: BenchmarkInput | None) -> str:
    if source is None:
        return "input: ?"
    what = "synthetic face clip and speech" if source.source == "synthetic" else "user clip"
    frames = "?" if source.frames is None else source.frames
    return f"input: {what}, {source.duration_s or 0:.1f} s ({frames} frames), seed {source.seed}"


def _config_table(configs: list[CaseResult]) -> list[str]:
    header = f"{'configuration':<34} {'s/out-s':>8} {'x rt':>6}  " + " ".join(f"{s:>9}" for s in STAGES)
    header += f" {'steps f/c/s/u':>14} {'UNet TF/out-s':>13} {'peak GB':>8} {'mouth PSNR':>10} {'SSIM':>6} {'temporal':>8}"
    lines = [header]
    for config in configs:
        measured = config.measured
        if measured is None:
            lines.append(f"{config.name:<34} failed: {config.error}")
            continue
        stages = " ".join(f"{measured.stages.get(stage, 0.0):>9.2f}" for stage in STAGES)
        counts = measured.unet_steps
        steps = f"{counts.full}/{counts.cached}/{counts.skipped}/{counts.uncond_reused}"
        fidelity = config.fidelity or {}
        lines.append(
            f"{config.name:<34} {measured.seconds_per_output_second:>8.2f} {measured.realtime_factor:>6.2f}  {stages}"
            f" {steps:>14} {_number(_unet_tflop_per_second(config), 0):>13} {_number(measured.peak_memory_gb, 2):>8}"
            f" {_number(fidelity.get('mouth_psnr'), 1):>10} {_number(fidelity.get('mouth_ssim'), 3):>6}"
            f" {_number(fidelity.get('temporal_consistency'), 3):>8}"
        )
    return lines


def _mode_table(entry: BenchmarkEntry) -> list[str]:
    """Per mode, its own settings and its fastest variant, with similarity to the reference."""
    reference = entry.reference or "normal"
    lines = [f"per mode (similarity: mouth SSIM against `{reference}` on the same input and seed)"]
    for mode, fastest in _fastest_per_mode(entry.configs).items():
        similarity = (fastest.fidelity or {}).get("mouth_ssim")
        similarity_text = f"SSIM {similarity:.3f}" if similarity is not None else "similarity unknown"
        speed = fastest.measured.seconds_per_output_second
        lines.append(f"  {mode:<10} fastest: {fastest.name:<34} {speed:.2f} s per output s, {similarity_text}")
    return lines


def cost_lines(entry: BenchmarkEntry, gpu_price: float, video_s: float) -> list[str]:
    """Cost per output minute and per 100 videos of `video_s` seconds, for each mode's fastest config."""
    lines = [f"cost at ${gpu_price:.2f}/h (machine time only)"]
    for row in cost_table(entry, gpu_price, video_s):
        lines.append(
            f"  {row['mode']:<10} ${row['dollars_per_output_minute']:.4f} per output minute,"
            f" ${row['dollars_per_100_videos']:.2f} per 100 videos of {video_s:g} s ({row['configuration']})"
        )
    return lines


def cost_table(entry: BenchmarkEntry, gpu_price: float, video_s: float) -> list[dict]:
    """Per mode, the cost of its fastest configuration (the rows of `cost_lines`, and of --json)."""
    rows = []
    for mode, fastest in _fastest_per_mode(entry.configs).items():
        speed = fastest.measured.seconds_per_output_second
        rows.append(
            {
                "mode": mode,
                "configuration": fastest.name,
                "dollars_per_output_minute": metrics.cost_per_output_minute(speed, gpu_price),
                "dollars_per_100_videos": metrics.cost_per_videos(speed, gpu_price, video_s, count=100),
                "video_s": video_s,
                "gpu_dollars_per_hour": gpu_price,
            }
        )
    return rows


def _stress_lines(stress: StressSummary) -> list[str]:
    return [
        f"stress: {stress.name}, {stress.output_s:.1f} s of output in {stress.wall_s:.1f} s",
        (
            "  throughput drift (denoise time per UNet call, last vs first quarter; + is slower): "
            f"{_percent(stress.throughput_drift)}"
        ),
        f"  memory growth (last vs first quarter of the run): {_number(stress.memory_growth_gb, 3)} GB",
    ]


def _by_mode(configs: list[CaseResult]) -> dict[str, list[CaseResult]]:
    """The measured (not failed) configurations of each mode."""
    groups: dict[str, list[CaseResult]] = {}
    for config in configs:
        if config.measured is not None:
            groups.setdefault(config.mode, []).append(config)
    return groups


def _fastest_per_mode(configs: list[CaseResult]) -> dict[str, CaseResult]:
    return {
        mode: min(group, key=lambda config: config.measured.seconds_per_output_second)
        for mode, group in _by_mode(configs).items()
    }


def _number(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:+.1f} %"


# --- plot ------------------------------------------------------------------------------------


def plot_speed(entry: BenchmarkEntry, path: Path) -> None:
    """Speed (s per output s) against mouth SSIM, or against UNet steps when fidelity is unknown."""
    configs = [config for config in entry.configs if config.measured is not None]
    with_fidelity = any((config.fidelity or {}).get("mouth_ssim") is not None for config in configs)
    figure = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for mode, group in _by_mode(configs).items():
        speeds = [config.measured.seconds_per_output_second for config in group]
        if with_fidelity:
            heights = [(config.fidelity or {}).get("mouth_ssim") for config in group]
            heights = [1.0 if height is None else height for height in heights]
        else:
            heights = [_unet_tflop_per_second(config) or 0.0 for config in group]
        axes.scatter(speeds, heights, label=mode, s=40)
        for config, x, y in zip(group, speeds, heights):
            axes.annotate(config.name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes.set_xlabel("seconds per output second (lower is faster)")
    if with_fidelity:
        axes.set_ylabel(f"mouth SSIM against `{entry.reference or 'normal'}`")
    else:
        axes.set_ylabel("UNet TFLOP per output second (LatentSync 1.6 for these passes, COST_MODEL.md)")
    title = f"{entry.key.device}, {entry.level} benchmark, {entry.date[:10]}"
    if entry.label:
        title += f"\n{entry.label}"
    elif not with_fidelity and entry.fidelity_note:
        title += "\nfidelity unknown: " + entry.fidelity_note
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _unet_tflop_per_second(config: CaseResult) -> float | None:
    """What the case's UNet passes would cost LatentSync 1.6 per output second (None: not counted)."""
    measured = config.measured
    if measured is None or not measured.frames or not any(measured.unet_steps.frame_passes.values()):
        return None  # a benchmark file written before frame passes were counted
    return unet_tflop_per_output_second(measured.unet_steps, measured.frames)

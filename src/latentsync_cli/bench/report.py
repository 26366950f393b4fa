"""The benchmark report: a text summary, the JSON entry and a speed-vs-fidelity plot.

Everything here reads a benchmark entry (the dict the runner builds and the
cache stores; see bench/runner.py for its fields), so `--show` can print an
old entry exactly as the run that made it did.
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
from latentsync_cli.errors import OutputError

STAGES = ("landmarks", "vae", "denoise", "restore", "encode")


def default_report_dir(entry: dict) -> Path:
    """<user data dir>/benchmarks/<date>-<device>/"""
    date = str(entry.get("date", ""))[:10] or "undated"
    device = re.sub(r"[^A-Za-z0-9]+", "-", entry["key"]["device"]).strip("-").lower() or "device"
    return Path(platformdirs.user_data_dir("latentsync")) / "benchmarks" / f"{date}-{device}"


def write_report(entry: dict, folder: Path, gpu_price: float | None = None, video_s: float | None = None) -> dict:
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
        paths["json"].write_text(json.dumps(entry, indent=2, default=str) + "\n", encoding="utf-8")
        plot_speed(entry, paths["plot"])
    except OSError as error:
        raise OutputError(
            f"{folder}: cannot write the benchmark report ({error.strerror}); choose another --report DIR"
        ) from None
    return {name: str(path) for name, path in paths.items()}


# --- text ------------------------------------------------------------------------------------


def summary_text(entry: dict, gpu_price: float | None = None, video_s: float | None = None) -> str:
    key = entry["key"]
    lines = [
        f"latentsync benchmark ({entry.get('level', '?')}) on {key['device']}, {str(entry.get('date', ''))[:10]}",
        (
            f"torch {key['torch']}, latentsync {key['latentsync']}, weights {key['weights']}: "
            f"{entry.get('weights', {}).get('description', '')}"
        ),
        _input_line(entry.get("input", {})),
    ]
    if entry.get("label"):
        lines.append(f"every timing below: {entry['label']}")
    if entry.get("fidelity_note"):
        lines.append(f"fidelity: {entry['fidelity_note']}")
    lines.append("")
    lines.extend(_config_table(entry["configs"]))
    lines.append("")
    lines.extend(_mode_table(entry))
    if gpu_price is not None:
        lines.append("")
        lines.extend(cost_lines(entry, gpu_price, video_s or entry.get("input", {}).get("duration_s") or 60.0))
    if entry.get("stress"):
        lines.append("")
        lines.extend(_stress_lines(entry["stress"]))
    return "\n".join(lines)


def _input_line(source: dict) -> str:
    what = "synthetic face clip and speech" if source.get("source") == "synthetic" else "user clip"
    return f"input: {what}, {source.get('duration_s', 0):.1f} s ({source.get('frames', '?')} frames), seed {source.get('seed', '?')}"


def _config_table(configs: list[dict]) -> list[str]:
    header = f"{'configuration':<34} {'s/out-s':>8} {'x rt':>6}  " + " ".join(f"{s:>9}" for s in STAGES)
    header += f" {'steps full/cached':>18} {'peak GB':>8} {'mouth PSNR':>10} {'SSIM':>6} {'temporal':>8}"
    lines = [header]
    for config in configs:
        if config.get("error"):
            lines.append(f"{config['name']:<34} failed: {config['error']}")
            continue
        stages = " ".join(f"{config['stages'].get(stage, 0.0):>9.2f}" for stage in STAGES)
        steps = f"{config['unet_steps']['full']}/{config['unet_steps']['cached']}"
        fidelity = config.get("fidelity") or {}
        lines.append(
            f"{config['name']:<34} {config['seconds_per_output_second']:>8.2f} {config['realtime_factor']:>6.2f}  {stages}"
            f" {steps:>18} {_number(config.get('peak_memory_gb'), 2):>8}"
            f" {_number(fidelity.get('mouth_psnr'), 1):>10} {_number(fidelity.get('mouth_ssim'), 3):>6}"
            f" {_number(fidelity.get('temporal_consistency'), 3):>8}"
        )
    return lines


def _mode_table(entry: dict) -> list[str]:
    """Per mode, its own settings and its fastest variant, with similarity to the reference."""
    reference = entry.get("reference") or "normal"
    lines = [f"per mode (similarity: mouth SSIM against `{reference}` on the same input and seed)"]
    for mode, configs in _by_mode(entry["configs"]).items():
        fastest = min(configs, key=lambda c: c["seconds_per_output_second"])
        similarity = (fastest.get("fidelity") or {}).get("mouth_ssim")
        similarity_text = f"SSIM {similarity:.3f}" if similarity is not None else "similarity unknown"
        lines.append(
            f"  {mode:<10} fastest: {fastest['name']:<34} {fastest['seconds_per_output_second']:.2f} s per output s, {similarity_text}"
        )
    return lines


def cost_lines(entry: dict, gpu_price: float, video_s: float) -> list[str]:
    """Cost per output minute and per 100 videos of `video_s` seconds, for each mode's fastest config."""
    lines = [f"cost at ${gpu_price:.2f}/h (machine time only)"]
    for mode, configs in _by_mode(entry["configs"]).items():
        fastest = min(configs, key=lambda c: c["seconds_per_output_second"])
        speed = fastest["seconds_per_output_second"]
        per_minute = metrics.cost_per_output_minute(speed, gpu_price)
        per_hundred = metrics.cost_per_videos(speed, gpu_price, video_s, count=100)
        lines.append(
            f"  {mode:<10} ${per_minute:.4f} per output minute, ${per_hundred:.2f} per 100 videos of {video_s:g} s"
            f" ({fastest['name']})"
        )
    return lines


def cost_table(entry: dict, gpu_price: float, video_s: float) -> list[dict]:
    """The same numbers as `cost_lines`, for --json."""
    rows = []
    for mode, configs in _by_mode(entry["configs"]).items():
        fastest = min(configs, key=lambda c: c["seconds_per_output_second"])
        speed = fastest["seconds_per_output_second"]
        rows.append(
            {
                "mode": mode,
                "configuration": fastest["name"],
                "dollars_per_output_minute": metrics.cost_per_output_minute(speed, gpu_price),
                "dollars_per_100_videos": metrics.cost_per_videos(speed, gpu_price, video_s, count=100),
                "video_s": video_s,
                "gpu_dollars_per_hour": gpu_price,
            }
        )
    return rows


def _stress_lines(stress: dict) -> list[str]:
    return [
        f"stress: {stress['name']}, {stress['output_s']:.1f} s of output in {stress['wall_s']:.1f} s",
        (
            "  throughput drift (denoise time per UNet call, last vs first quarter; + is slower): "
            f"{_percent(stress.get('throughput_drift'))}"
        ),
        f"  memory growth (last vs first quarter of the run): {_number(stress.get('memory_growth_gb'), 3)} GB",
    ]


def _by_mode(configs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for config in configs:
        if not config.get("error"):
            groups.setdefault(config["mode"], []).append(config)
    return groups


def _number(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:+.1f} %"


# --- plot ------------------------------------------------------------------------------------


def plot_speed(entry: dict, path: Path) -> None:
    """Speed (s per output s) against mouth SSIM, or against UNet steps when fidelity is unknown."""
    configs = [config for config in entry["configs"] if not config.get("error")]
    with_fidelity = any((config.get("fidelity") or {}).get("mouth_ssim") is not None for config in configs)
    figure = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for mode, group in _by_mode(configs).items():
        speeds = [config["seconds_per_output_second"] for config in group]
        if with_fidelity:
            heights = [(config.get("fidelity") or {}).get("mouth_ssim") for config in group]
            heights = [1.0 if height is None else height for height in heights]
        else:
            heights = [_effective_steps(config) for config in group]
        axes.scatter(speeds, heights, label=mode, s=40)
        for config, x, y in zip(group, speeds, heights):
            axes.annotate(config["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes.set_xlabel("seconds per output second (lower is faster)")
    if with_fidelity:
        axes.set_ylabel(f"mouth SSIM against `{entry.get('reference') or 'normal'}`")
    else:
        axes.set_ylabel("UNet passes over the clip (full + 0.1 x cached)")
    title = f"{entry['key']['device']}, {entry.get('level', '')} benchmark, {str(entry.get('date', ''))[:10]}"
    if entry.get("label"):
        title += f"\n{entry['label']}"
    elif not with_fidelity and entry.get("fidelity_note"):
        title += "\nfidelity unknown: " + entry["fidelity_note"]
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _effective_steps(config: dict) -> float:
    # A cached DeepCache step costs about a tenth of a full one (COST_MODEL.md: 10.8 %).
    return config["unet_steps"]["full"] + 0.1 * config["unet_steps"]["cached"]

"""What `sync` and `profile` print: the stage and optimization tables, the summary, the JSON result, the trace.

Humans read stderr; `--json` prints one object alone on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from latentsync_cli.cli.output import Output
from latentsync_cli.errors import OutputError
from latentsync_cli.jobs.batch import BatchRecord
from latentsync_cli.jobs.job import FinishedJob


def job_json(finished: FinishedJob) -> dict:
    """The one result object of `sync --json` (paths absolute)."""
    prepared, weights = finished.prepared, finished.weights
    result = finished.result.to_dict()
    spec = prepared.output_spec
    return {
        "output": str(spec.path or "-") if spec is not None else None,
        "output_codec": spec.codec if spec is not None else None,
        "output_container": spec.muxer if spec is not None else None,
        "fps": str(prepared.video_info.rate),
        "video": str(prepared.video),
        "audio": str(prepared.audio) if prepared.audio is not None else None,
        "weights": weights.to_dict(),
        "random_weights": weights.is_random,
        "random_weights_note": weights.description if weights.is_random else None,
        "weights_note": weights.note,
        **result,
        "resolved_settings": prepared.resolved.to_dict(),
    }


def profile_json(finished: FinishedJob) -> dict:
    """`sync --json` plus the stage table sorted by time with each stage's share of the wall time."""
    report = job_json(finished)
    wall = finished.result.wall_s
    ranked = sorted(finished.result.stage_seconds.items(), key=lambda item: item[1], reverse=True)
    report["lane_busy_share"] = lane_shares(finished.result.lane_busy_s, wall)
    report["limiting_lane"] = limiting_lane(finished.result.lane_busy_s)
    report["stage_table"] = [
        {"stage": stage, "seconds": round(seconds, 4), "share_of_wall": round(seconds / wall, 4) if wall else None}
        for stage, seconds in ranked
    ]
    return report


def write_trace(path: Path, events: list[dict]) -> None:
    try:
        path.expanduser().write_text(json.dumps(events))
    except OSError as error:
        raise OutputError(f"{path}: cannot write the trace ({error.strerror}); choose another --trace path") from None


def print_sync_report(out: Output, finished: FinishedJob) -> None:
    result = finished.result
    out.table(_stage_table(result.stage_seconds, result.wall_s, "Stage timings"))
    _print_summary(out, finished)
    out.table(_optimization_table(result.optimizations))
    spec, rate = finished.prepared.output_spec, finished.prepared.video_info.rate
    where = "the stream to stdout" if spec.kind == "stream" else str(spec.path)
    out.info(f"wrote {escape(where)} ({spec.codec} in {spec.muxer}, {result.frames} frames at {float(rate):.3f} fps)")


def print_profile_report(out: Output, finished: FinishedJob, report: dict) -> None:
    result = finished.result
    ranked = dict(sorted(result.stage_seconds.items(), key=lambda item: item[1], reverse=True))
    out.table(_stage_table(ranked, result.wall_s, "Stages by time"))
    _print_summary(out, finished)
    shares = lane_shares(result.lane_busy_s, result.wall_s)
    lanes = ", ".join(
        f"{lane} {result.lane_busy_s[lane]:.2f} s ({100 * share:.0f} %)" for lane, share in shares.items()
    )
    out.info(f"lanes busy: {lanes}; the lane that limits the overlapped part: {limiting_lane(result.lane_busy_s)}")
    path = result.critical_path
    out.info(f"critical path: {' + '.join(path['lanes'])} lanes, {path['seconds']:.2f} s ({', '.join(path['stages'])})")
    out.info(f"peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB" + (
        f", peak GPU memory {result.peak_gpu_bytes / 2**30:.2f} GiB" if result.peak_gpu_bytes is not None else ""
    ))  # fmt: skip
    out.table(_optimization_table(result.optimizations))
    if "trace" in report:
        out.info(f"trace: {escape(report['trace'])} (open it in chrome://tracing or ui.perfetto.dev)")
    out.console.print(result.verdict, markup=False, highlight=False, soft_wrap=True)


def _print_summary(out: Output, finished: FinishedJob) -> None:
    result = finished.result
    settings = finished.prepared.resolved.settings
    out.info(
        f"{result.frames} frames ({result.output_seconds:.2f} s) in {result.wall_s:.2f} s wall: "
        f"{result.seconds_per_output_second:.2f} s per output second; the stages add up to {result.stage_sum_s:.2f} s"
    )
    out.info(
        f"mode {settings.mode}, quality {settings.quality}: {settings.steps} steps {settings.scheduler}, "
        f"guidance {settings.guidance:g}, DeepCache {'on' if settings.deepcache else 'off'}, "
        f"window {settings.window}, {settings.device} {settings.precision}"
    )
    if result.frames_without_face:
        out.info(f"{result.frames_without_face} frames without a face were kept unchanged")
    for downgrade in result.memory_downgrades:
        out.warn(f"out of memory: {downgrade}")


def _stage_table(stage_seconds: dict[str, float], wall_s: float, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("% of wall", justify="right")
    for stage, seconds in stage_seconds.items():
        share = f"{100 * seconds / wall_s:.0f} %" if wall_s > 0 else "-"
        table.add_row(stage, f"{seconds:.3f}", share)
    return table


def _optimization_table(entries: list[dict]) -> Table:
    table = Table(title="Optimizations", box=box.SIMPLE, title_justify="left")
    table.add_column("optimization")
    table.add_column("status")
    table.add_column("detail")
    for entry in entries:
        table.add_row(entry["name"], entry["status"], escape(entry["detail"]))
    return table


def batch_table(records: list[BatchRecord]) -> Table:
    table = Table(title="Batch", box=box.SIMPLE, title_justify="left")
    for column in ("job", "status", "seconds", "output", "error"):
        table.add_column(column, justify="right" if column in ("job", "seconds") else "left")
    for record in records:
        table.add_row(str(record.job), record.status, f"{record.seconds:.1f}", escape(record.output or "-"),
                      escape(record.error or ""))  # fmt: skip
    return table


def lane_shares(lane_busy_s: dict[str, float], wall_s: float) -> dict[str, float]:
    """Each lane's busy time as a share of the wall time (a lane near 1.0 is the one the others wait for)."""
    return {lane: round(seconds / wall_s, 3) if wall_s > 0 else 0.0 for lane, seconds in lane_busy_s.items()}


def limiting_lane(lane_busy_s: dict[str, float]) -> str | None:
    """The busiest of the overlapped lanes (the serial "main" lane runs before and after them)."""
    overlapped = {lane: seconds for lane, seconds in lane_busy_s.items() if lane != "main"}
    return max(overlapped, key=overlapped.get, default=None)

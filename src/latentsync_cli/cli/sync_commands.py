"""`latentsync sync` and `latentsync profile`: build a job from the flags, run it with the job API, print.

The work is in latentsync_cli.jobs: `run` checks everything that needs no model
(flags, files, output path, settings), claims the output, loads the weights
(through a model cache that a batch shares) and runs the pipeline. Humans read
stderr (progress, tables); `--json` prints one object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from latentsync_cli.cli.displays import choose_progress
from latentsync_cli.cli.options import with_flags, with_options
from latentsync_cli.cli.output import Output, get_output
from latentsync_cli.cli.reports import (
    batch_table,
    job_json,
    print_profile_report,
    print_sync_report,
    profile_json,
    write_trace,
)
from latentsync_cli.errors import LatentsyncError, OutputError, UsageError
from latentsync_cli.jobs.batch import BatchRecord, BatchRow, raise_if_failed, run_batch
from latentsync_cli.jobs.cluster import RAY_EXTRA_HINT
from latentsync_cli.jobs.job import FinishedJob, Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import run
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.jobs.signals import stop_on_signals
from latentsync_cli.media.outputs import STDOUT
from latentsync_cli.options import INPUT_AND_OUTPUT, build
from latentsync_cli.settings.request import SettingsRequest

VideoArgument = Annotated[
    Path, typer.Argument(help="Face video, image sequence (frames/%05d.exr or its folder) or still image.",
                         show_default=False),
]  # fmt: skip
OptionalVideoArgument = Annotated[
    Path | None,
    typer.Argument(help="Face video, image sequence (frames/%05d.exr or its folder), still image, or - (stdin); "
                   "omitted with --batch.", show_default=False),
]  # fmt: skip
AudioArgument = Annotated[
    Path | None,
    typer.Argument(help="Speech (WAV, MP3, ...); omitted: the video's own audio track.", show_default=False),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output: .mp4, .mov, .mxf, .mkv, an image sequence (out/frame_%05d.exr) "
                 "or - (stdout). [default: <video stem>_synced.mp4 beside the video; .mov/.mxf plates keep theirs; "
                 "a sequence gives <folder>_synced/]", rich_help_panel=INPUT_AND_OUTPUT, dir_okay=False),
]  # fmt: skip
ProfileOutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Keep the output here (as sync names it). [default: not kept]", dir_okay=False,
                 rich_help_panel=INPUT_AND_OUTPUT),
]  # fmt: skip
WorkDirOption = Annotated[
    Path | None,
    typer.Option("--work-dir", help="Keep finished windows here; the same command run again resumes a killed job.",
                 rich_help_panel=INPUT_AND_OUTPUT, file_okay=False),
]  # fmt: skip
BatchOption = Annotated[
    Path | None,
    typer.Option("--batch", help="Run every row of a .csv or .jsonl manifest (columns video, audio, output and "
                 "sync options), loading the models once.", rich_help_panel=INPUT_AND_OUTPUT, dir_okay=False),
]  # fmt: skip
ProgressOption = Annotated[
    str,
    typer.Option("--progress", help="auto (bars on a terminal, lines otherwise), bar, lines, json or none. "
                 "Lines: `progress 37% frames=91/242 fps=3.1 elapsed=29s eta=48s stage=generate`.",
                 rich_help_panel="Messages"),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON result object alone on stdout.")]
TraceOption = Annotated[
    Path | None, typer.Option("--trace", help="Write a Chrome trace (chrome://tracing, Perfetto) here.", dir_okay=False)
]


FARM_PANEL = "Render farms"


@dataclass(frozen=True)
class FarmFlags:
    """How one job is spread over tasks (--shard, --finalize) or a Ray cluster (--ray)."""

    shard: Annotated[
        str | None,
        typer.Option("--shard", metavar="K/N", rich_help_panel=FARM_PANEL,
                     help="Compute only the K-th of N window ranges into --work-dir and exit (no output is "
                     "written); then run the command without --shard, or with --finalize."),
    ] = None  # fmt: skip
    finalize: Annotated[
        bool,
        typer.Option("--finalize", rich_help_panel=FARM_PANEL,
                     help="Only restore, encode and mux the windows in --work-dir (exit 9 if any is missing)."),
    ] = False  # fmt: skip
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", rich_help_panel=FARM_PANEL,
                     help="Run on a Ray cluster: auto (the running one), local, or HOST:PORT. "
                     f"Needs {RAY_EXTRA_HINT}."),
    ] = None  # fmt: skip
    shards: Annotated[
        int | None,
        typer.Option("--shards", min=1, rich_help_panel=FARM_PANEL,
                     help="With --ray: shards per job [default: by length, at most one per worker]."),
    ] = None  # fmt: skip
    ray_workers: Annotated[
        int | None,
        typer.Option("--ray-workers", min=1, rich_help_panel=FARM_PANEL,
                     help="With --ray: workers [default: one per GPU of the cluster; 1 on a CPU-only cluster]."),
    ] = None  # fmt: skip

    def check(self, batch: Path | None) -> None:
        if self.ray is None and (self.shards is not None or self.ray_workers is not None):
            raise UsageError("--shards and --ray-workers go with --ray (for a farm's own tasks, use --shard K/N)")
        if self.ray is not None and (self.shard is not None or self.finalize):
            raise UsageError("--ray splits the job itself: do not also pass --shard or --finalize")
        if batch is not None and (self.shard is not None or self.finalize):
            raise UsageError("--shard and --finalize take one job, not --batch")


def job_of(video: Path, options: dict, request: dict, **fields) -> Job:
    """The Job of a command line: its files, its declared options and its settings request."""
    return build(Job, options, video=video, settings=build(SettingsRequest, request), **fields)


@with_flags(FarmFlags, "farm")
@with_options(Job, "job_options")
@with_options(SettingsRequest, "request")
def sync(
    ctx: typer.Context,
    video: OptionalVideoArgument = None,
    audio: AudioArgument = None,
    output: OutputOption = None,
    work_dir: WorkDirOption = None,
    batch: BatchOption = None,
    progress: ProgressOption = "auto",
    json_output: JsonOption = False,
    *,
    job_options: dict,
    request: dict,
    farm: FarmFlags,
) -> None:
    out = get_output(ctx)
    farm.check(batch)
    if batch is not None:
        given = [name for name, value in (("VIDEO", video), ("AUDIO", audio), ("--output", output)) if value]
        if given:
            raise UsageError(f"--batch runs the jobs of {batch}: do not also pass {given[0]}")
        with stop_on_signals():
            run_manifest(out, batch, job_of(Path(), job_options, request, work_dir=work_dir), farm, progress, json_output)
        return
    if video is None:
        raise UsageError("missing VIDEO: pass a face video (or image) and the speech, or --batch FILE")
    check_streams(video, output, farm, json_output)
    shard = Shard.parse(farm.shard) if farm.shard is not None else None
    job = job_of(video, job_options, request, audio=audio, output=output, work_dir=work_dir, shard=shard,
                 finalize=farm.finalize)  # fmt: skip
    with stop_on_signals(), stdout_kept_for(output) as output_fd:
        if farm.ray is not None:
            return run_one_on_ray(out, job, farm, progress, json_output)
        finished = run_job(out, replace(job, output_fd=output_fd), progress)
    if job.shard is not None:
        return out.info(f"shard {job.shard}: {finished.result.windows} windows in {job.work_dir}")
    if json_output:
        Output.print_json(job_json(finished))
    else:
        print_sync_report(out, finished)


@with_options(Job, "job_options")
@with_options(SettingsRequest, "request")
def profile(
    ctx: typer.Context,
    video: VideoArgument,
    audio: AudioArgument = None,
    output: ProfileOutputOption = None,
    trace: TraceOption = None,
    progress: ProgressOption = "auto",
    json_output: JsonOption = False,
    *,
    job_options: dict,
    request: dict,
) -> None:
    out = get_output(ctx)
    if trace is not None and not trace.expanduser().absolute().parent.is_dir():
        raise OutputError(f"{trace}: the folder for the trace does not exist; create it first")
    check_streams(video, output, FarmFlags(), json_output)
    with stop_on_signals(), stdout_kept_for(output) as output_fd:
        job = job_of(video, job_options, request, audio=audio, output=output, keep_output=output is not None,
                     output_fd=output_fd)  # fmt: skip
        finished = run_job(out, job, progress)
    report = profile_json(finished)
    if trace is not None:
        write_trace(trace, finished.result.trace)
        report["trace"] = str(trace)
    if json_output:
        Output.print_json(report)
    else:
        print_profile_report(out, finished, report)


def check_streams(video: Path, output: Path | None, farm: FarmFlags, json_output: bool) -> None:
    """UsageError for what stdin and stdout cannot do: carry --json, or go to a Ray cluster."""
    if output == STDOUT and json_output:
        raise UsageError("-o - writes the video to stdout, where --json would go too; drop --json (see --progress json)")
    if farm.ray is not None and STDOUT in (video, output):
        raise UsageError("--ray reads and writes files the workers share, not - (stdin/stdout)")


@contextmanager
def stdout_kept_for(output: Path | None) -> Iterator[int]:
    """The file descriptor -o - writes to. With -o -, stdout is kept for the video alone: anything else
    that writes to file descriptor 1 (a library's print) goes to stderr meanwhile."""
    if output != STDOUT:
        yield 1
        return
    sys.stdout.flush()
    stream = os.dup(1)
    os.dup2(2, 1)
    try:
        yield stream
    finally:
        sys.stdout.flush()
        os.dup2(stream, 1)
        os.close(stream)


def register(app: typer.Typer) -> None:
    app.command(help="Lip-sync VIDEO (a video, an image sequence or an image) to AUDIO and write the plate back.")(sync)
    app.command(help="Run one sync with per-stage timings, peak memory and a bottleneck verdict.")(profile)


def run_job(out: Output, job: Job, progress_kind: str, cache: ModelCache | None = None) -> FinishedJob:
    """One job through the job API, with its warnings and progress on stderr."""
    display = choose_progress(progress_kind, out.console, quiet=out.quiet)  # a bad --progress: before any work
    with display:
        finished = run(job, cache, display, warn=out.warn)
    if finished.result.resumed_windows:
        out.info(f"resumed {finished.result.resumed_windows} of {finished.result.windows} windows from {job.work_dir}")
    return finished


def run_manifest(out: Output, manifest: Path, base: Job, farm: FarmFlags, progress_kind: str, json_output: bool):
    """Every row of a batch manifest, the models loaded once; a table at the end, exit 8 if a row failed."""
    on_record = _record_printer(out, json_output)
    if farm.ray is not None:
        from latentsync_cli.jobs.cluster import ClusterOptions, run_manifest_on_ray

        options = ClusterOptions(farm.ray, farm.ray_workers, farm.shards, work_root=base.work_dir)
        with choose_progress(progress_kind, out.console, quiet=out.quiet) as display:
            records = run_manifest_on_ray(manifest, replace(base, work_dir=None), options, on_record, display)
    elif base.work_dir is not None:
        raise UsageError(
            f"--batch runs the jobs of {manifest}: --work-dir goes with --ray (a folder for every job's work)"
        )
    else:
        cache = ModelCache()

        def run_row_job(row: BatchRow, job: Job, total: int) -> FinishedJob:
            out.info(f"job {row.number}/{total}: {escape(str(job.video))} -> {escape(str(job.output or '-'))}")
            return run_job(out, job, progress_kind, cache)

        records = run_batch(manifest, base, run_row_job, on_record)
    out.table(batch_table(records))
    raise_if_failed(manifest, records)


def run_one_on_ray(out: Output, job: Job, farm: FarmFlags, progress_kind: str, json_output: bool) -> None:
    """One job split into shards over the workers of a Ray cluster."""
    from latentsync_cli.jobs.cluster import ClusterOptions, run_on_ray

    options = ClusterOptions(farm.ray, farm.ray_workers, farm.shards)
    with choose_progress(progress_kind, out.console, quiet=out.quiet) as display:
        [record] = run_on_ray([(1, job)], options, _record_printer(out, json_output), progress=display)
    if record.status == "failed":
        raise LatentsyncError.with_code(record.error, record.exit_code)
    out.info(f"wrote {escape(record.output)} ({record.frames} frames in {record.seconds:.1f} s)")


def _record_printer(out: Output, json_output: bool):
    def on_record(record: BatchRecord) -> None:
        if record.status == "failed":
            out.warn(f"job {record.job} failed: {record.error}")
        if json_output:
            sys.stdout.write(json.dumps(asdict(record)) + "\n")
            sys.stdout.flush()

    return on_record

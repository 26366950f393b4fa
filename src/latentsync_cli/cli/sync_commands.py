"""`latentsync sync` and `latentsync profile`: one lip-sync job, reported for people or as JSON.

Order of work, so that mistakes cost nothing: check the paths (refuse an output
that exists or equals an input), resolve the settings once (the speech length
feeds the length rule), load the weights, and only then touch the media.
Humans read stderr (progress, tables); `--json` prints one object on stdout.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from latentsync_cli.cli.output import Output, get_output
from latentsync_cli.cli.settings_options import (
    CompileOption,
    DeepcacheOption,
    DeviceOption,
    GuidanceOption,
    ModeOption,
    OptimizationLevelOption,
    PrecisionOption,
    PresetsOption,
    QualityOption,
    SchedulerOption,
    SeedOption,
    StepsOption,
    WindowOption,
    make_request,
    resolve_for_cli,
)
from latentsync_cli.errors import InputError, OutputError, UsageError
from latentsync_cli.jobs import check_output_path, default_output_path, job_scratch_dir, stop_on_signals
from latentsync_cli.settings import ResolvedSettings, SettingsRequest

JOB_PANEL = "Input and output"
LOOP_MODES = ("pingpong", "loop", "freeze")
FACE_CHOICES = ("largest", "center")
WEIGHT_CHOICES = ("auto", "checkpoint", "random", "random-tiny")

VideoArgument = Annotated[Path, typer.Argument(help="Face video (or a still image).", show_default=False)]
AudioArgument = Annotated[
    Path | None,
    typer.Argument(help="Speech (WAV, MP3, ...); omitted: the video's own audio track.", show_default=False),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output MP4. [default: <video stem>_synced.mp4 beside the video]",
                 rich_help_panel=JOB_PANEL, dir_okay=False),
]  # fmt: skip
CheckpointDirOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint-dir", help="Folder with the weights (see `latentsync models`).", rich_help_panel=JOB_PANEL
    ),
]
WeightsOption = Annotated[
    str,
    typer.Option("--weights", help="auto (the real weights), random or random-tiny (timing and tests only).",
                 rich_help_panel=JOB_PANEL),
]  # fmt: skip
LoopOption = Annotated[
    str,
    typer.Option("--loop", help="A video shorter than the speech continues: pingpong, loop or freeze.",
                 rich_help_panel=JOB_PANEL),
]  # fmt: skip
FaceOption = Annotated[
    str, typer.Option("--face", help="Which face when there are several: largest or center.", rich_help_panel=JOB_PANEL)
]
FeatherOption = Annotated[
    float,
    typer.Option("--mask-feather", metavar="PX", min=0.0, rich_help_panel=JOB_PANEL,
                 help="Soften the edge where the new mouth meets the face (Gaussian sigma in pixels)."),
]  # fmt: skip
CrfOption = Annotated[
    int,
    typer.Option("--crf", min=0, max=51, help="x264 quality: lower is better and bigger.", rich_help_panel=JOB_PANEL),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output.", rich_help_panel=JOB_PANEL)
]
WorkDirOption = Annotated[
    Path | None,
    typer.Option("--work-dir", help="Keep finished windows here to resume a killed job (coming soon).",
                 rich_help_panel=JOB_PANEL, file_okay=False),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON result object alone on stdout.")]
TraceOption = Annotated[
    Path | None, typer.Option("--trace", help="Write a Chrome trace (chrome://tracing, Perfetto) here.", dir_okay=False)
]


@dataclass(frozen=True)
class JobOptions:
    """The flags of `sync` that are not run settings."""

    video: Path
    audio: Path | None
    output: Path | None
    checkpoint_dir: Path | None
    weights: str
    loop: str
    face: str
    mask_feather: float
    crf: int
    overwrite: bool
    work_dir: Path | None


@dataclass
class FinishedJob:
    result: object  # pipeline.lipsync.SyncResult
    resolved: ResolvedSettings
    weights: dict
    options: JobOptions
    output_kept: bool


def register(app: typer.Typer) -> None:
    @app.command(help="Lip-sync VIDEO (or an image) to AUDIO and write an MP4.")
    def sync(
        ctx: typer.Context,
        video: VideoArgument,
        audio: AudioArgument = None,
        output: OutputOption = None,
        mode: ModeOption = None,
        quality: QualityOption = None,
        steps: StepsOption = None,
        deepcache: DeepcacheOption = None,
        scheduler: SchedulerOption = None,
        window: WindowOption = None,
        guidance: GuidanceOption = None,
        seed: SeedOption = None,
        precision: PrecisionOption = None,
        compile: CompileOption = None,
        optimization_level: OptimizationLevelOption = None,
        device: DeviceOption = "auto",
        presets: PresetsOption = None,
        checkpoint_dir: CheckpointDirOption = None,
        weights: WeightsOption = "auto",
        loop: LoopOption = "pingpong",
        face: FaceOption = "largest",
        mask_feather: FeatherOption = 0.0,
        crf: CrfOption = 18,
        overwrite: OverwriteOption = False,
        work_dir: WorkDirOption = None,
        json_output: JsonOption = False,
    ) -> None:
        out = get_output(ctx)
        request = make_request(
            mode=mode, quality=quality, steps=steps, deepcache=deepcache, scheduler=scheduler, window=window,
            guidance=guidance, seed=seed, precision=precision, compile=compile,
            optimization_level=optimization_level, device=device, presets=presets,
        )  # fmt: skip
        options = JobOptions(video, audio, output, checkpoint_dir, weights.lower(), loop.lower(), face.lower(),
                             mask_feather, crf, overwrite, work_dir)  # fmt: skip
        finished = run_job(out, request, options, keep_output=True)
        if json_output:
            Output.print_json(job_json(finished))
        else:
            print_sync_report(out, finished)

    @app.command(help="Run one sync with per-stage timings, peak memory and a bottleneck verdict.")
    def profile(
        ctx: typer.Context,
        video: VideoArgument,
        audio: AudioArgument = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output",
                "-o",
                help="Keep the MP4 here. [default: not kept]",
                dir_okay=False,
                rich_help_panel=JOB_PANEL,
            ),
        ] = None,  # fmt: skip
        mode: ModeOption = None,
        quality: QualityOption = None,
        steps: StepsOption = None,
        deepcache: DeepcacheOption = None,
        scheduler: SchedulerOption = None,
        window: WindowOption = None,
        guidance: GuidanceOption = None,
        seed: SeedOption = None,
        precision: PrecisionOption = None,
        compile: CompileOption = None,
        optimization_level: OptimizationLevelOption = None,
        device: DeviceOption = "auto",
        presets: PresetsOption = None,
        checkpoint_dir: CheckpointDirOption = None,
        weights: WeightsOption = "auto",
        loop: LoopOption = "pingpong",
        face: FaceOption = "largest",
        mask_feather: FeatherOption = 0.0,
        crf: CrfOption = 18,
        overwrite: OverwriteOption = False,
        trace: TraceOption = None,
        json_output: JsonOption = False,
    ) -> None:
        out = get_output(ctx)
        if trace is not None and not trace.expanduser().absolute().parent.is_dir():
            raise OutputError(f"{trace}: the folder for the trace does not exist; create it first")
        request = make_request(
            mode=mode, quality=quality, steps=steps, deepcache=deepcache, scheduler=scheduler, window=window,
            guidance=guidance, seed=seed, precision=precision, compile=compile,
            optimization_level=optimization_level, device=device, presets=presets,
        )  # fmt: skip
        options = JobOptions(video, audio, output, checkpoint_dir, weights.lower(), loop.lower(), face.lower(),
                             mask_feather, crf, overwrite, None)  # fmt: skip
        finished = run_job(out, request, options, keep_output=output is not None)
        report = profile_json(finished)
        if trace is not None:
            write_trace(trace, finished.result.trace)
            report["trace"] = str(trace)
        if json_output:
            Output.print_json(report)
        else:
            print_profile_report(out, finished, report)


# --- running a job -------------------------------------------------------------------------------


def run_job(out: Output, request: SettingsRequest, options: JobOptions, keep_output: bool) -> FinishedJob:
    """Check, resolve, load, run. Nothing is written at the output path unless the job succeeds."""
    _check_choices(options)
    video = _existing_input(options.video, "video")
    audio = _existing_input(options.audio, "audio") if options.audio is not None else None
    output = None
    if keep_output:
        wanted = options.output if options.output is not None else default_output_path(video)
        output = check_output_path(wanted, [video, audio], options.overwrite)

    resolved = resolve_for_cli(
        request, duration_s=_speech_seconds(video, audio), pick_from_benchmark=_benchmark_picker(request)
    )
    for note in resolved.notes:
        out.warn(note)
    settings = resolved.settings

    # Imported here: torch and diffusers take seconds to import, and --help should not wait for them.
    from latentsync_cli.models.weights import load_models
    from latentsync_cli.optimizers.precision import dtype_for
    from latentsync_cli.pipeline.lipsync import LipsyncPipeline, SyncJob
    from latentsync_cli.timing import StageTimer

    models = load_models(
        options.weights, options.checkpoint_dir, settings.device, dtype_for(settings.precision), seed=0
    )
    weights = {
        "choice": options.weights,
        "id": models.weights_id,
        "description": models.description,
        "is_random": models.is_random,
    }
    if models.is_random:
        out.warn(models.description)  # e.g. "random weights (...): ..., the video is not a lip-sync"
    if options.work_dir is not None:
        out.warn("--work-dir is accepted but resuming is not implemented yet: every window is generated")

    with stop_on_signals(), ExitStack() as stack:
        if output is None:  # profile without -o: the MP4 is written to a temporary folder and dropped
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".latentsync-profile-")))
            target = scratch / f"{video.stem}_profile.mp4"
        else:
            scratch = stack.enter_context(job_scratch_dir(output))
            target = output
        job = SyncJob(
            video=video,
            audio=audio,
            output=target,
            scratch_dir=scratch,
            loop=options.loop,
            face=options.face,
            mask_feather_px=options.mask_feather,
            crf=options.crf,
        )
        progress = stack.enter_context(RichProgress(out))
        pipeline = LipsyncPipeline(models, settings, StageTimer(settings.device), progress)
        result = pipeline.run(job)
    return FinishedJob(result, resolved, weights, options, output_kept=output is not None)


def _check_choices(options: JobOptions) -> None:
    for flag, value, choices in (
        ("--weights", options.weights, WEIGHT_CHOICES),
        ("--loop", options.loop, LOOP_MODES),
        ("--face", options.face, FACE_CHOICES),
    ):
        if value not in choices:
            raise UsageError(f"unknown {flag} {value!r}: use one of {', '.join(choices)}")


def _existing_input(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise InputError(f"{path}: {what} file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass a {what} file")
    return path.absolute()


def _speech_seconds(video: Path, audio: Path | None) -> float | None:
    """The output's length (the speech sets it), for the length rule; the video's audio track without AUDIO."""
    from latentsync_cli.media.audio import audio_duration_s
    from latentsync_cli.media.video import probe_video

    if audio is None and not probe_video(video).has_audio:
        raise InputError(f"{video}: the video has no audio track; pass the speech as the AUDIO argument")
    return audio_duration_s(audio if audio is not None else video)


def _benchmark_picker(request: SettingsRequest):
    """What `--quality auto` asks the benchmark cache (only consulted for quality auto)."""
    from latentsync_cli.bench.auto import picker_for
    from latentsync_cli.presets import load_presets

    return picker_for(load_presets(request.presets_file), request.mode)


class RichProgress:
    """The pipeline's progress on stderr: one bar for the job, one per stage while it runs."""

    def __init__(self, out: Output):
        self.bars = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out.console,
            transient=True,
            disable=out.quiet,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.bars.stop()

    def start(self, task: str, total: int) -> None:
        self.tasks[task] = self.bars.add_task(task, total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        task_id = self.tasks[task]
        self.bars.advance(task_id, amount)
        if task != "job" and self.bars.tasks[task_id].finished:
            self.bars.update(task_id, visible=False)  # a finished stage leaves the screen


# --- reports -------------------------------------------------------------------------------------


def job_json(finished: FinishedJob) -> dict:
    """The one result object of `sync --json`."""
    result = finished.result.to_dict()
    output = result.pop("output")
    return {
        "output": output if finished.output_kept else None,
        "video": str(finished.options.video),
        "audio": str(finished.options.audio) if finished.options.audio is not None else None,
        "weights": finished.weights,
        "random_weights": finished.weights["is_random"],
        "random_weights_note": finished.weights["description"] if finished.weights["is_random"] else None,
        **result,
        "resolved_settings": finished.resolved.to_dict(),
    }


def profile_json(finished: FinishedJob) -> dict:
    """`sync --json` plus the stage table sorted by time with each stage's share of the wall time."""
    report = job_json(finished)
    wall = finished.result.wall_s
    ranked = sorted(finished.result.stage_seconds.items(), key=lambda item: item[1], reverse=True)
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
    out.console.print(_stage_table(result.stage_seconds, result.wall_s, "Stage timings"))
    _print_summary(out, finished)
    out.console.print(_optimization_table(result.optimizations))
    out.info(f"wrote {escape(str(result.output))}")


def print_profile_report(out: Output, finished: FinishedJob, report: dict) -> None:
    result = finished.result
    ranked = dict(sorted(result.stage_seconds.items(), key=lambda item: item[1], reverse=True))
    out.console.print(_stage_table(ranked, result.wall_s, "Stages by time"))
    _print_summary(out, finished)
    path = result.critical_path
    out.info(f"critical path: {' + '.join(path['lanes'])} lanes, {path['seconds']:.2f} s ({', '.join(path['stages'])})")
    out.info(f"peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB" + (
        f", peak GPU memory {result.peak_gpu_bytes / 2**30:.2f} GiB" if result.peak_gpu_bytes is not None else ""
    ))  # fmt: skip
    out.console.print(_optimization_table(result.optimizations))
    if "trace" in report:
        out.info(f"trace: {escape(report['trace'])} (open it in chrome://tracing or ui.perfetto.dev)")
    out.console.print(result.verdict, markup=False, highlight=False)


def _print_summary(out: Output, finished: FinishedJob) -> None:
    result = finished.result
    settings = finished.resolved.settings
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
    if finished.weights["is_random"]:
        out.warn(finished.weights["description"])


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

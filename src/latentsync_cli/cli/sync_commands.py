"""`latentsync sync` and `latentsync profile`: one lip-sync job, reported for people or as JSON.

Order of work, so that mistakes cost nothing: check the paths (refuse an output
that exists or equals an input), resolve the settings once (the speech length
feeds the length rule), load the weights, and only then touch the media.
Humans read stderr (progress, tables); `--json` prints one object on stdout.

Unattended use (see jobs.py): SIGINT/SIGTERM stop a job with its temporary
files removed (exit 130/143); every job works in its own scratch folder beside
its output; `--work-dir` keeps finished windows so that a killed job resumes;
`--batch` runs a CSV/JSON-lines manifest with the models loaded once.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
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
from latentsync_cli.errors import (
    BatchFailedError,
    ExitCode,
    InputError,
    Interrupted,
    LatentsyncError,
    OutputError,
    UsageError,
)
from latentsync_cli.hardware import probe_devices
from latentsync_cli.jobs import (
    check_output_path,
    default_output_path,
    job_scratch_dir,
    remove_stale_scratch,
    stop_on_signals,
)
from latentsync_cli.settings import ResolvedSettings, SettingsRequest

JOB_PANEL = "Input and output"
LOOP_MODES = ("pingpong", "loop", "freeze")
FACE_CHOICES = ("largest", "center")
WEIGHT_CHOICES = ("auto", "checkpoint", "random", "random-tiny")

VideoArgument = Annotated[Path, typer.Argument(help="Face video (or a still image).", show_default=False)]
OptionalVideoArgument = Annotated[
    Path | None, typer.Argument(help="Face video (or a still image); omitted with --batch.", show_default=False)
]
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
    typer.Option("--work-dir", help="Keep finished windows here; the same command run again resumes a killed job.",
                 rich_help_panel=JOB_PANEL, file_okay=False),
]  # fmt: skip
BatchOption = Annotated[
    Path | None,
    typer.Option("--batch", help="Run every row of a .csv or .jsonl manifest (columns video, audio, output and "
                 "sync options), loading the models once.", rich_help_panel=JOB_PANEL, dir_okay=False),
]  # fmt: skip
REQUEST_FIELDS = ("mode", "quality", "steps", "deepcache", "scheduler", "window", "guidance", "seed", "precision",
                  "compile", "optimization_level", "device", "presets")  # fmt: skip
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
        video: OptionalVideoArgument = None,
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
        batch: BatchOption = None,
        json_output: JsonOption = False,
    ) -> None:
        out = get_output(ctx)
        if batch is not None:
            given = [name for name, value in (("VIDEO", video), ("AUDIO", audio), ("--output", output),
                                              ("--work-dir", work_dir)) if value is not None]  # fmt: skip
            if given:
                raise UsageError(f"--batch runs the jobs of {batch}: do not also pass {given[0]}")
            defaults = {
                "mode": mode, "quality": quality, "steps": steps, "deepcache": deepcache, "scheduler": scheduler,
                "window": window, "guidance": guidance, "seed": seed, "precision": precision, "compile": compile,
                "optimization_level": optimization_level, "device": device, "presets": presets,
                "checkpoint_dir": checkpoint_dir, "weights": weights, "loop": loop, "face": face,
                "mask_feather": mask_feather, "crf": crf,
            }  # fmt: skip
            with stop_on_signals():
                run_batch(out, batch, defaults, overwrite, json_output)
            return
        if video is None:
            raise UsageError("missing VIDEO: pass a face video (or image) and the speech, or --batch FILE")
        request = make_request(
            mode=mode, quality=quality, steps=steps, deepcache=deepcache, scheduler=scheduler, window=window,
            guidance=guidance, seed=seed, precision=precision, compile=compile,
            optimization_level=optimization_level, device=device, presets=presets,
        )  # fmt: skip
        options = JobOptions(video, audio, output, checkpoint_dir, weights.lower(), loop.lower(), face.lower(),
                             mask_feather, crf, overwrite, work_dir)  # fmt: skip
        with stop_on_signals():
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
        with stop_on_signals():
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


@dataclass(frozen=True)
class PreparedJob:
    """A job whose inputs, output path and settings have been checked, before any model work."""

    video: Path
    audio: Path | None
    output: Path | None  # None: profile without -o (the MP4 is dropped)
    resolved: ResolvedSettings


class ModelCache:
    """The models of the last job, reused by the next one when weights, device and precision are the same."""

    def __init__(self):
        self.key: tuple | None = None
        self.models = None

    def get(self, options: JobOptions, settings):
        from latentsync_cli.models.weights import load_models
        from latentsync_cli.optimizers.precision import dtype_for

        checkpoint_dir = options.checkpoint_dir.expanduser().absolute() if options.checkpoint_dir else None
        key = (options.weights, checkpoint_dir, settings.device, settings.precision)
        if key != self.key:
            self.models = None  # free the previous job's models before loading others
            self.models = load_models(
                options.weights, checkpoint_dir, settings.device, dtype_for(settings.precision), seed=0
            )
            self.key = key
        return self.models


def run_job(
    out: Output, request: SettingsRequest, options: JobOptions, keep_output: bool, cache: ModelCache | None = None
) -> FinishedJob:
    """Check, resolve, load, run. Nothing is written at the output path unless the job succeeds."""
    prepared = prepare_job(out, request, options, keep_output)
    models = (cache or ModelCache()).get(options, prepared.resolved.settings)
    return execute_job(out, prepared, models, options)


def prepare_job(out: Output, request: SettingsRequest, options: JobOptions, keep_output: bool) -> PreparedJob:
    """Every check that needs no model: flags, input files, their streams, the output path, the settings."""
    _check_choices(options)
    # Flag errors first (a mistyped --mode is exit 2 whatever the files): resolve once without the
    # speech length and without the benchmark cache; the real resolution follows the media checks.
    hardware = probe_devices()
    resolve_for_cli(request, duration_s=None, pick_from_benchmark=lambda device, length_class: None, hardware=hardware)
    video = _existing_input(options.video, "video")
    audio = _existing_input(options.audio, "audio") if options.audio is not None else None
    output = None
    if keep_output:
        wanted = options.output if options.output is not None else default_output_path(video)
        output = check_output_path(wanted, [video, audio], options.overwrite)
    speech_seconds = _check_media(out, video, audio)
    resolved = resolve_for_cli(
        request, duration_s=speech_seconds, pick_from_benchmark=_benchmark_picker(request), hardware=hardware
    )
    for note in resolved.notes:
        out.warn(note)
    return PreparedJob(video, audio, output, resolved)


def execute_job(out: Output, prepared: PreparedJob, models, options: JobOptions) -> FinishedJob:
    """Run the pipeline in a private scratch folder; with --work-dir, finished windows are kept and reused."""
    from latentsync_cli.jobs import WorkDirStore, job_fingerprint
    from latentsync_cli.pipeline import LipsyncPipeline, NoStore, SyncJob
    from latentsync_cli.timing import StageTimer

    settings = prepared.resolved.settings
    weights = {
        "choice": options.weights,
        "id": models.weights_id,
        "description": models.description,
        "is_random": models.is_random,
    }
    if models.is_random:
        out.warn(models.description)  # e.g. "random weights (...): ..., the video is not a lip-sync"

    with ExitStack() as stack:
        if prepared.output is None:  # profile without -o: the MP4 is written to a temporary folder and dropped
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".latentsync-profile-")))
            target = scratch / f"{prepared.video.stem}_profile.mp4"
        else:
            remove_stale_scratch(prepared.output.parent)  # what SIGKILL-ed jobs of this host left behind
            scratch = stack.enter_context(job_scratch_dir(prepared.output))
            target = prepared.output
        store = NoStore()
        if options.work_dir is not None:
            fingerprint = job_fingerprint(
                [prepared.video, prepared.audio],
                prepared.resolved.to_dict()["settings"],
                # What else shapes the stored faces: the weights, which face, the paste-back edge, the loop.
                {"weights": weights, "face": options.face, "mask_feather": options.mask_feather, "loop": options.loop},
            )
            store = stack.enter_context(WorkDirStore(options.work_dir.expanduser(), fingerprint))
        job = SyncJob(
            video=prepared.video,
            audio=prepared.audio,
            output=target,
            scratch_dir=scratch,
            loop=options.loop,
            face=options.face,
            mask_feather_px=options.mask_feather,
            crf=options.crf,
            store=store,
        )
        progress = stack.enter_context(RichProgress(out))
        pipeline = LipsyncPipeline(models, settings, StageTimer(settings.device), progress)
        result = pipeline.run(job)
    if result.resumed_windows:
        out.info(f"resumed {result.resumed_windows} of {result.windows} windows from {options.work_dir}")
    return FinishedJob(result, prepared.resolved, weights, options, output_kept=prepared.output is not None)


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


def _check_media(out: Output, video: Path, audio: Path | None) -> float:
    """Probe the video and decode the speech (cheap next to the models); returns the speech length in seconds.

    A file that is not media, has no video/audio stream or no samples fails here
    with a line naming it; silent speech is valid and only warned about.
    """
    from latentsync_cli.media.audio import SAMPLE_RATE, is_silent, load_audio
    from latentsync_cli.media.video import probe_video, read_frames

    info = probe_video(video)
    frames = read_frames(video, 1, loop="freeze")  # a damaged stream fails here, not after the models load
    try:
        next(frames)
    finally:
        frames.close()
    if audio is None and not info.has_audio:
        raise InputError(f"{video}: the video has no audio track; pass the speech as the AUDIO argument")
    speech_file = audio if audio is not None else video
    speech = load_audio(speech_file)
    if is_silent(speech):
        out.warn(f"{speech_file}: the speech is silent (below -60 dBFS); the mouth will barely move")
    return speech.size / SAMPLE_RATE


def _benchmark_picker(request: SettingsRequest):
    """What `--quality auto` asks the benchmark cache (only consulted for quality auto)."""
    from latentsync_cli.bench.auto import picker_for
    from latentsync_cli.presets import load_presets

    return picker_for(load_presets(request.presets_file), request.mode)


# --- batch ---------------------------------------------------------------------------------------

# Manifest columns besides video/audio/output: `sync` options by their flag names (dashes as underscores).
BATCH_INTEGER_OPTIONS = ("steps", "window", "seed", "crf")
BATCH_NUMBER_OPTIONS = ("guidance", "mask_feather")
BATCH_SWITCH_OPTIONS = ("deepcache", "compile")
BATCH_TEXT_OPTIONS = ("mode", "quality", "scheduler", "precision", "optimization_level", "device", "weights",
                      "loop", "face", "checkpoint_dir")  # fmt: skip
BATCH_OPTIONS = set(BATCH_INTEGER_OPTIONS + BATCH_NUMBER_OPTIONS + BATCH_SWITCH_OPTIONS + BATCH_TEXT_OPTIONS)
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass
class BatchRecord:
    """What happened to one manifest row (one JSON line with --json)."""

    job: int
    status: str  # ok | skipped | failed
    video: str
    output: str | None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    frames: int = 0
    resumed_windows: int = 0


def run_batch(out: Output, manifest: Path, defaults: dict, overwrite: bool, json_output: bool) -> None:
    """Run every row of `manifest` in order, loading the models once; BatchFailedError if any row failed.

    `defaults` are the flags given on the command line (request fields and
    JobOptions fields); a row's columns override them for that row.
    """
    from latentsync_cli.jobs import read_batch

    jobs = read_batch(manifest, BATCH_OPTIONS)
    cache = ModelCache()
    records = []
    for job in jobs:
        started = time.monotonic()
        record = BatchRecord(job.number, "ok", str(job.video), None)
        try:
            request, options = _batch_job(job, defaults, overwrite, manifest)
            output = options.output if options.output is not None else default_output_path(options.video)
            record.output = str(output)
            if output.exists() and not overwrite:
                record.status = "skipped"
            else:
                out.info(f"job {job.number}/{len(jobs)}: {escape(str(job.video))} -> {escape(str(output))}")
                finished = run_job(out, request, options, keep_output=True, cache=cache)
                record.frames = finished.result.frames
                record.resumed_windows = finished.result.resumed_windows
        except Interrupted:
            raise  # SIGINT/SIGTERM stop the whole batch
        except LatentsyncError as error:
            record.status, record.error, record.exit_code = "failed", error.message, int(error.exit_code)
        except Exception as error:  # noqa: BLE001 - a bug in one job must not stop the others
            record.status, record.exit_code = "failed", int(ExitCode.INTERNAL)
            record.error = f"internal error: {type(error).__name__}: {error}"
        record.seconds = round(time.monotonic() - started, 3)
        if record.status == "failed":
            out.warn(f"job {job.number} failed: {record.error}")
        records.append(record)
        if json_output:
            sys.stdout.write(json.dumps(asdict(record)) + "\n")
            sys.stdout.flush()
    out.console.print(_batch_table(records))
    failed = [record for record in records if record.status == "failed"]
    if failed:
        rows = ", ".join(str(record.job) for record in failed)
        raise BatchFailedError(f"{manifest}: {len(failed)} of {len(records)} jobs failed (rows {rows}); see above")


def _batch_job(job, defaults: dict, overwrite: bool, manifest: Path) -> tuple[SettingsRequest, JobOptions]:
    """The request and options of one row: the command line's flags, overridden by the row's columns."""
    values = dict(defaults)
    for name, text in job.options.items():
        values[name] = _batch_value(job.number, name, text, manifest.parent.absolute())
    request = make_request(**{name: values.get(name) for name in REQUEST_FIELDS if values.get(name) is not None})
    options = JobOptions(
        video=job.video,
        audio=job.audio,
        output=job.output,
        checkpoint_dir=values.get("checkpoint_dir"),
        weights=str(values["weights"]).lower(),
        loop=str(values["loop"]).lower(),
        face=str(values["face"]).lower(),
        mask_feather=values["mask_feather"],
        crf=values["crf"],
        overwrite=overwrite,
        work_dir=None,
    )
    return request, options


def _batch_value(row: int, name: str, text: str, base: Path):
    text = text.strip()
    if name in BATCH_INTEGER_OPTIONS:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"row {row}: {name} {text!r} is not a whole number") from None
    if name in BATCH_NUMBER_OPTIONS:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"row {row}: {name} {text!r} is not a number") from None
    if name in BATCH_SWITCH_OPTIONS:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise UsageError(f"row {row}: {name} {text!r} must be true or false")
    if name == "checkpoint_dir":
        folder = Path(text).expanduser()
        return folder if folder.is_absolute() else base / folder
    return text


def _batch_table(records: list[BatchRecord]) -> Table:
    table = Table(title="Batch", box=box.SIMPLE, title_justify="left")
    for column in ("job", "status", "seconds", "output", "error"):
        table.add_column(column, justify="right" if column in ("job", "seconds") else "left")
    for record in records:
        table.add_row(str(record.job), record.status, f"{record.seconds:.1f}", escape(record.output or "-"),
                      escape(record.error or ""))  # fmt: skip
    return table


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

    def message(self, text: str) -> None:
        pass  # Progress protocol: what the job is doing now; the bars do not show it yet


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
    out.console.print(result.verdict, markup=False, highlight=False, soft_wrap=True)


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

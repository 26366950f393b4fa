"""The options `sync` and `profile` share, declared once, and the decorator that gives them to a command.

    @with_flags(JobFlags)
    def sync(ctx: typer.Context, video: ..., flags: JobFlags) -> None:
        job = flags.to_job(video, audio, output)

Typer reads a command's parameters from its signature; `with_flags` adds the
dataclass's fields (each typed `Annotated[..., typer.Option(...)]`) to it and
hands the command one `flags` object instead of twenty parameters. A batch
row overrides the same fields (see jobs/batch.py), so the three agree.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

from latentsync_cli.cli.output import get_output
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
)
from latentsync_cli.jobs.run import Job

JOB_PANEL = "Input and output"
OUTPUT_PANEL = "Messages"

CheckpointDirOption = Annotated[
    Path | None,
    typer.Option("--checkpoint-dir", help="Folder with the weights (see `latentsync models`).",
                 rich_help_panel=JOB_PANEL),
]  # fmt: skip
WeightsOption = Annotated[
    str,
    typer.Option("--weights", help="auto (the real weights), random or random-tiny (timing and tests only), or proxy "
                 "(a small model trained on three clips, shipped: mouths follow the speech, not at 1.6's quality).",
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
EncoderOption = Annotated[
    str,
    typer.Option("--encoder", help="H.264 encoder: auto (h264_nvenc where it opens, else libx264), libx264 or "
                 "h264_nvenc.", rich_help_panel=JOB_PANEL),
]  # fmt: skip
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output.", rich_help_panel=JOB_PANEL)
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors on stderr.", rich_help_panel=OUTPUT_PANEL)
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", rich_help_panel=OUTPUT_PANEL)]


@dataclass(frozen=True)
class JobFlags:
    """The flags of one job besides its files: run settings (as a request) and how the job is done."""

    mode: ModeOption = None
    quality: QualityOption = None
    steps: StepsOption = None
    deepcache: DeepcacheOption = None
    scheduler: SchedulerOption = None
    window: WindowOption = None
    guidance: GuidanceOption = None
    seed: SeedOption = None
    precision: PrecisionOption = None
    compile: CompileOption = None
    optimization_level: OptimizationLevelOption = None
    device: DeviceOption = "auto"
    presets: PresetsOption = None
    checkpoint_dir: CheckpointDirOption = None
    weights: WeightsOption = "auto"
    loop: LoopOption = "pingpong"
    face: FaceOption = "largest"
    mask_feather: FeatherOption = 0.0
    crf: CrfOption = 18
    encoder: EncoderOption = "auto"
    overwrite: OverwriteOption = False

    def to_job(
        self,
        video: Path,
        audio: Path | None = None,
        output: Path | None = None,
        work_dir: Path | None = None,
        keep_output: bool = True,
    ) -> Job:
        request = make_request(
            mode=self.mode, quality=self.quality, steps=self.steps, deepcache=self.deepcache,
            scheduler=self.scheduler, window=self.window, guidance=self.guidance, seed=self.seed,
            precision=self.precision, compile=self.compile, optimization_level=self.optimization_level,
            device=self.device, presets=self.presets,
        )  # fmt: skip
        return Job(
            video=video,
            audio=audio,
            output=output,
            settings=request,
            weights=self.weights.lower(),
            checkpoint_dir=self.checkpoint_dir,
            loop=self.loop.lower(),
            face=self.face.lower(),
            mask_feather=self.mask_feather,
            crf=self.crf,
            encoder=self.encoder.lower(),
            overwrite=self.overwrite,
            work_dir=work_dir,
            keep_output=keep_output,
        )


def with_flags(flag_class: type, parameter: str = "flags"):
    """Give a command the fields of `flag_class` as its typer options, passed to it as one object."""
    hints = typing.get_type_hints(flag_class, include_extras=True)
    flag_names = [f.name for f in fields(flag_class)]
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
             for f in fields(flag_class)]  # fmt: skip

    def decorate(command):
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != parameter]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in flag_names}
            return command(*args, **kwargs, **{parameter: flag_class(**values)})

        wrapper.__signature__ = inspect.Signature(own + extra)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's own
        return wrapper

    return decorate


def accepting_message_flags(command):
    """`command` with --quiet and --debug of its own, so that they work after the subcommand too."""
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    # typer hands the context to one parameter typed Context: the command's own, or one added here.
    context_name = next((p.name for p in own if p.annotation is typer.Context), None)
    extra = [
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOption),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOption),
    ]
    if context_name is None:
        context_name = "message_context"
        extra.append(inspect.Parameter(context_name, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    @functools.wraps(command)
    def wrapper(*args, quiet: bool = False, debug: bool = False, **kwargs):
        context = kwargs[context_name] if context_name != "message_context" else kwargs.pop(context_name)
        get_output(context).also(quiet, debug)
        return command(*args, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    del wrapper.__wrapped__
    return wrapper

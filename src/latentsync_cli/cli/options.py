"""Typer options from the core's declarations, and the decorators that give them to a command.

    @with_options(Job, "job_options")
    @with_options(SettingsRequest, "request")
    def sync(ctx: typer.Context, video: ..., *, job_options: dict, request: dict) -> None:
        job = build(Job, job_options, video=video, settings=build(SettingsRequest, request))

Each option is declared once, as a field of a core dataclass (options.py: its
name, type, default, help, panel, choices and range); `option_annotation` turns
it into the `Annotated[type, typer.Option(...)]` typer reads, and `with_options`
adds those to a command's signature and hands the command one dict of values.
`with_flags` does the same for CLI-only dataclasses whose fields are already
typer options (FarmFlags, BenchmarkFlags).
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import fields
from typing import Annotated, Any

import typer

from latentsync_cli.cli.output import get_output
from latentsync_cli.options import DeclaredOption, declared_options

OUTPUT_PANEL = "Messages"

QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors on stderr.", rich_help_panel=OUTPUT_PANEL)
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", rich_help_panel=OUTPUT_PANEL)]


def option_annotation(declared: DeclaredOption) -> Any:
    """`Annotated[type, typer.Option(...)]` for one declared option."""
    details = declared.option
    names = [declared.flag]
    if declared.kind is bool and declared.default is None:
        names = [f"{declared.flag}/--no-{declared.flag[2:]}"]  # on, off, or not given
    help_text = details.help
    if details.shown_default is not None:
        help_text += f" [default: {details.shown_default}]"
    extra: dict[str, Any] = {}
    if details.minimum is not None:
        extra["min"] = details.minimum
    if details.maximum is not None:
        extra["max"] = details.maximum
    metavar = details.metavar or ("[" + "|".join(details.choices) + "]" if details.choices else None)
    if metavar is not None:
        extra["metavar"] = metavar
    kind = declared.kind if declared.default is not None else declared.kind | None
    return Annotated[kind, typer.Option(*names, help=help_text, rich_help_panel=details.panel, **extra)]


def declared_annotation(cls: type, name: str) -> Any:
    """The typer annotation of one declared option of `cls`, for a command that takes it alone."""
    return option_annotation(next(declared for declared in declared_options(cls) if declared.name == name))


def options_of(cls: type, names: tuple[str, ...] | None = None) -> list[inspect.Parameter]:
    """Keyword-only typer parameters for the declared options of `cls` (all, or only `names`)."""
    return [
        inspect.Parameter(declared.name, inspect.Parameter.KEYWORD_ONLY, default=declared.default,
                          annotation=option_annotation(declared))
        for declared in declared_options(cls)
        if names is None or declared.name in names
    ]  # fmt: skip


def with_options(cls: type, parameter: str, names: tuple[str, ...] | None = None):
    """Give a command the declared options of `cls` (all, or only `names`) as typer options, passed to it
    as one dict `parameter`."""
    return _adding(options_of(cls, names), parameter, dict)


def with_flags(flag_class: type, parameter: str = "flags"):
    """Give a command the fields of `flag_class` (each typed `Annotated[..., typer.Option(...)]`) as its
    options, passed to it as one `flag_class` object."""
    hints = typing.get_type_hints(flag_class, include_extras=True)
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
             for f in fields(flag_class)]  # fmt: skip
    return _adding(extra, parameter, lambda values: flag_class(**values))


def _adding(extra: list[inspect.Parameter], parameter: str, make):
    """A decorator: the command's signature gains `extra`; their values reach it as `parameter` = make(values)."""
    names = [p.name for p in extra]

    def decorate(command):
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != parameter]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names}
            return command(*args, **kwargs, **{parameter: make(values)})

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

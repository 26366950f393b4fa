"""The `latentsync` command line: a thin layer over the core package.

Human output and progress go to stderr; machine output (`--json`) goes alone to
stdout. Errors the tool can diagnose are one line and a documented exit code
(see `latentsync_cli.errors`); --debug shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys

from latentsync_cli.cpu_threads import job_cpu_threads

# torch's OpenMP threads spin while waiting for work by default; next to the
# pipeline's own decode/encode threads on a small CPU that spinning made one
# UNet call 5x slower. And they leave the pipeline's lanes a core (cpu_threads.py).
# Both must be set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(job_cpu_threads()))

import click
import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click import exceptions as _typer_click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click_exceptions = click.exceptions

from latentsync_cli import __version__
from latentsync_cli.cli.native_logs import filtered_native_stderr
from latentsync_cli.cli.output import Output
from latentsync_cli.errors import BatchFailedError, ExitCode, LatentsyncError
from latentsync_cli.jobs.scratch import DISK_FULL_ERRNOS

app = typer.Typer(
    name="latentsync",
    help="Lip-sync a face video or portrait to speech with LatentSync 1.6, fast and measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"latentsync {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = Output(quiet=quiet, debug=debug)


def _register_commands() -> None:
    # Imported here so that each command module stays independent of the others.
    from latentsync_cli.cli import (
        bench_commands,
        model_commands,
        preset_commands,
        sync_commands,
    )
    from latentsync_cli.cli.options import accepting_message_flags

    app.add_typer(preset_commands.app, name="presets")
    app.add_typer(model_commands.app, name="models")
    sync_commands.register(app)
    bench_commands.register(app)
    for typer_app in [app] + [group.typer_instance for group in app.registered_groups]:
        for command in typer_app.registered_commands:
            command.callback = accepting_message_flags(command.callback)


_register_commands()


_CLICK_MODULES = (click.exceptions, _typer_click_exceptions)
_ABORT_ERRORS = (click.exceptions.Abort, typer.Abort)
_NO_ARGS_ERRORS = tuple(m.NoArgsIsHelpError for m in _CLICK_MODULES if hasattr(m, "NoArgsIsHelpError"))
_CLICK_ERRORS = tuple(m.ClickException for m in _CLICK_MODULES)
_EXIT_SIGNALS = (click.exceptions.Exit, typer.Exit)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn errors into exit codes."""
    with filtered_native_stderr():
        code = _run(argv)
    sys.exit(code)


JOB_COMMANDS = ("sync", "profile")  # their --json is one job's result object


def _prints_json_result(words: list[str]) -> bool:
    command = next((word for word in words if not word.startswith("-")), None)
    return command in JOB_COMMANDS and "--json" in words


def _run(argv: list[str] | None) -> int:
    """Run the app; every error becomes its one line and exit code. --debug adds the traceback above the
    line (on stderr) and changes nothing else: not the code, not the JSON error object on stdout."""
    words = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in words
    try:
        result = app(args=argv, standalone_mode=False)
    except LatentsyncError as error:
        if debug:
            Output.print_traceback(error)
        Output.print_error(error.message)
        if _prints_json_result(words) and not isinstance(error, BatchFailedError):  # a batch's rows are its JSON
            # A program reading stdout for the job's result gets the error instead, as one JSON line.
            print(json.dumps({"error": error.message, "exit_code": int(error.exit_code)}), flush=True)
        return int(error.exit_code)
    except (*_ABORT_ERRORS, KeyboardInterrupt):
        Output.print_error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except _NO_ARGS_ERRORS as error:
        error.show()  # the command's help, on stderr
        return int(ExitCode.USAGE)
    except _CLICK_ERRORS as error:
        command = error.ctx.command_path if getattr(error, "ctx", None) else "latentsync"
        Output.print_error(f"{error.format_message()} (see `{command} --help`)")
        return int(ExitCode.USAGE) if error.exit_code == 2 else error.exit_code
    except _EXIT_SIGNALS as done:
        return done.exit_code
    except Exception as error:  # a bug (or a full disk met where no code expected it): one line
        if debug:
            Output.print_traceback(error)
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            Output.print_error(f"{error.filename or 'a file'}: disk full ({error.strerror}); free some space")
            return int(ExitCode.OUTPUT)
        Output.print_error(f"internal error: {type(error).__name__}: {error} (rerun with --debug and report it)")
        return int(ExitCode.INTERNAL)
    return int(result) if isinstance(result, int) else 0

"""Where the CLI writes: humans on stderr, JSON alone on stdout."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

LOG_WIDTH = 1000  # columns of a console that is not a terminal: a log line is never wrapped


def _stderr_console(quiet: bool = False) -> Console:
    # emoji=False: a file named ":smile:.mp4" or "--device cuda:-1" must print as typed.
    console = Console(stderr=True, no_color="NO_COLOR" in os.environ, quiet=quiet, highlight=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console


@dataclass
class Output:
    quiet: bool = False
    debug: bool = False
    console: Console = field(init=False)

    def __post_init__(self) -> None:
        self.console = _stderr_console(self.quiet)

    def also(self, quiet: bool, debug: bool) -> None:
        """--quiet / --debug given after the subcommand: either place counts."""
        if quiet and not self.quiet:
            self.quiet = True
            self.console = _stderr_console(quiet=True)
        self.debug = self.debug or debug

    def info(self, text: str) -> None:
        # soft_wrap keeps long paths on one line, so they can be copied.
        self.console.print(text, soft_wrap=True)

    def table(self, table: Table) -> None:
        """A rich table; in a log (not a terminal) without the padding that rich adds to every line."""
        if self.console.is_terminal:
            self.console.print(table)
            return
        with self.console.capture() as captured:
            self.console.print(table)
        lines = "\n".join(line.rstrip() for line in captured.get().splitlines())
        self.console.print(lines, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", style="yellow", markup=False, soft_wrap=True)

    @staticmethod
    def print_error(text: str) -> None:
        _stderr_console().print(f"error: {text}", style="bold red", markup=False, soft_wrap=True)

    @staticmethod
    def print_traceback(error: BaseException) -> None:
        """The traceback of `error` on stderr, as Python prints it (for --debug)."""
        sys.stderr.write("".join(traceback.format_exception(error)))
        sys.stderr.flush()

    @staticmethod
    def print_json(obj) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()


def get_output(ctx) -> Output:
    """The Output made by the app callback (or a default one when a command runs alone)."""
    obj = getattr(ctx, "obj", None) if ctx is not None else None
    if obj is None and ctx is not None:
        root = ctx.find_root()
        obj = root.obj
    return obj if isinstance(obj, Output) else Output()

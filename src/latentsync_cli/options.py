"""Options declared once: a dataclass field that is also a command-line flag and a batch column.

    @dataclass(frozen=True)
    class JobOptions:
        crf: int = option(18, "x264 quality: lower is better and bigger.", OUTPUT, minimum=0, maximum=51)

The field's name gives the flag (`--crf`) and the batch column (`crf`); its type
annotation says how a manifest's text is read; its metadata holds the help, the
help panel, the allowed choices or range. The CLI builds its typer options from
these fields (cli/options.py), batch manifests read their columns through
`parse_column`, and `check_options` holds a command line and a manifest row to
the same choices and ranges. A leaf module: it imports nothing of the package.

Settings that a preset can also set (steps, window, ...) are range-checked
against settings/limits.py when they are resolved, not here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPTION_KEY = "latentsync_option"
# The --help panels options are listed in.
SPEED_AND_QUALITY = "Speed and quality"
INPUT_AND_OUTPUT = "Input and output"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class OptionError(ValueError):
    """A value an option does not accept; the message names the flag."""


@dataclass(frozen=True)
class Option:
    help: str
    panel: str  # the --help section it is listed in
    choices: tuple[str, ...] = ()  # allowed words (case-insensitive), shown as the flag's metavar
    minimum: float | None = None
    maximum: float | None = None
    shown_default: str | None = None  # the default --help shows when the field's default is None ("not given")
    batch: bool = True  # a batch manifest may set it per row
    metavar: str | None = None
    flag: str | None = None  # when it is not the field's name with dashes


def option(default: Any, help: str, panel: str, **details: Any) -> Any:
    """A dataclass field that is also a flag and a batch column (see Option for `details`)."""
    return dataclasses.field(default=default, metadata={OPTION_KEY: Option(help, panel, **details)})


@dataclass(frozen=True)
class DeclaredOption:
    name: str  # the field's name: the batch column, and the flag with dashes
    kind: type  # str, int, float, bool or Path (from the annotation, None removed)
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")


def declared_options(cls: type) -> list[DeclaredOption]:
    """The fields of dataclass `cls` declared with `option`, in order."""
    hints = typing.get_type_hints(cls)
    declared = []
    for field in dataclasses.fields(cls):
        if OPTION_KEY in field.metadata:
            declared.append(DeclaredOption(field.name, _plain_type(hints[field.name]), field.default,
                                           field.metadata[OPTION_KEY]))  # fmt: skip
    return declared


def _plain_type(hint: Any) -> type:
    """str | None -> str; the one non-None member of an optional type."""
    members = [member for member in typing.get_args(hint) if member is not type(None)] or [hint]
    return members[0]


def normalized(declared: DeclaredOption, value: Any) -> Any:
    """Words are case-insensitive and trimmed (`--mode Turbo` is `turbo`); other values are kept."""
    if declared.kind is str and isinstance(value, str):
        return value.strip().lower()
    return value


def build(cls: type, values: dict[str, Any], **others: Any) -> Any:
    """An instance of `cls` from option values (words normalized) and any other fields."""
    by_name = {declared.name: declared for declared in declared_options(cls)}
    return cls(**{name: normalized(by_name[name], value) for name, value in values.items()}, **others)


def option_problem(declared: DeclaredOption, value: Any) -> str | None:
    """Why `value` is not allowed for the option ("allowed: ..."), or None."""
    details = declared.option
    if value is None:
        return None
    if details.choices and value not in details.choices:
        return f"allowed: {', '.join(details.choices)}"
    low, high = details.minimum, details.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low:g} to {high:g}" if low is not None and high is not None else f"at least {low:g}"
        return f"allowed: {bounds}"
    return None


def check_options(instance: Any) -> None:
    """OptionError naming the first flag whose value is not allowed."""
    for declared in declared_options(type(instance)):
        value = getattr(instance, declared.name)
        problem = option_problem(declared, value)
        if problem:
            raise OptionError(f"unknown {declared.flag} {value!r}: use one of {', '.join(declared.option.choices)}"
                              if declared.option.choices else f"{declared.flag} {value}: {problem}")  # fmt: skip


def parse_column(declared: DeclaredOption, text: str, folder: Path) -> Any:
    """A manifest cell's text as the option's type; a relative path is taken from the manifest's `folder`."""
    text = text.strip()
    kind = declared.kind
    if kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise OptionError(f"{declared.name} {text!r} must be true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise OptionError(f"{declared.name} {text!r} is not a whole number") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise OptionError(f"{declared.name} {text!r} is not a number") from None
    if kind is Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else folder / path
    return normalized(declared, text)

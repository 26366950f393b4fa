"""The preset table: load presets.toml, merge the user's override file over it, validate.

The built-in table ships inside the package (the wheel force-includes the
repository's top-level presets.toml); an editable install reads it from the
repository root. One override file is merged over it, entry by entry:
`--presets FILE`, else $LATENTSYNC_PRESETS, else `latentsync/presets.toml` in
the user config dir (when it exists; a folder there is an error). Both files pass the same checks, and a
bad file fails with one line naming the file, the key and the allowed values.

The keys each section accepts are the fields of the dataclasses below; their
metadata (help, and the allowed values from limits.py, the same ones
resolve_settings checks flags against) drives the checks and the comment
header that `latentsync presets init` writes.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
import tomllib

from latentsync_cli.errors import ConfigError
from latentsync_cli.settings.device_record import BACKENDS
from latentsync_cli.settings.limits import LIMITS, NO_LIMIT, Limit

APP_NAME = "latentsync"
PRESETS_FILENAME = "presets.toml"
ENV_PRESETS = "LATENTSYNC_PRESETS"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _key(help: str, *, default: Any = MISSING, limit: Limit = NO_LIMIT):
    """A table key: its help text and the values it allows (see limits.py)."""
    metadata = {"help": help, "limit": limit, "choices": limit.choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Mode:
    name: str
    steps: int = _key("denoising steps at quality `balanced`", limit=LIMITS["steps"])
    min_steps: int = _key("quality presets never scale the steps below this", limit=LIMITS["min_steps"])
    scheduler: str = _key("sampler", limit=LIMITS["scheduler"])
    guidance: float = _key(
        "classifier-free guidance scale; 1.0 turns guidance off (half the UNet work)", limit=LIMITS["guidance"]
    )
    window: int = _key("frames per denoising window", limit=LIMITS["window"])
    deepcache: bool = _key("reuse deep UNet features between steps")
    deepcache_interval: int = _key(
        "a full UNet pass every this many steps, cached passes between", limit=LIMITS["deepcache_interval"]
    )
    deepcache_branch: int = _key(
        "skip connection whose consumer is the first recomputed layer", limit=LIMITS["deepcache_branch"]
    )
    face_detect_stride: int = _key(
        "run the face detector every this many frames, track between", limit=LIMITS["face_detect_stride"]
    )
    # The speed ideas of docs/PERFORMANCE.md; a mode that leaves them out keeps upstream's computation.
    cfg_cache: bool = _key("the unconditional pass every cfg_cache_interval steps only", default=False)
    cfg_cache_interval: int = _key(
        "with cfg_cache: the unconditional pass every this many steps", default=2, limit=LIMITS["cfg_cache_interval"]
    )
    step_skipping: bool = _key("reuse the last noise prediction while the UNet's input barely moves", default=False)
    step_skip_threshold: float = _key(
        "with step_skipping: the summed change of the UNet's input before a step runs again",
        default=0.1, limit=LIMITS["step_skip_threshold"],
    )  # fmt: skip
    multiscale: bool = _key("the first steps at half the latent resolution", default=False)
    multiscale_share: float = _key(
        "with multiscale: the share of the steps at half resolution", default=0.25, limit=LIMITS["multiscale_share"]
    )
    warm_start: bool = _key(
        "a window starts from the previous window's last frame, part-way through the steps (no shards)", default=False
    )
    warm_start_strength: float = _key(
        "with warm_start: the share of the steps a warm-started window runs",
        default=0.5, limit=LIMITS["warm_start_strength"],
    )  # fmt: skip
    window_overlap: int = _key(
        "frames each window also makes of the previous one, cross-faded at the border",
        default=0, limit=LIMITS["window_overlap"],
    )  # fmt: skip
    description: str = _key("one line shown by `presets list`", default="")

    def settings(self) -> dict[str, Any]:
        """The RunSettings fields this mode sets."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "min_steps", "description")
        }


@dataclass(frozen=True)
class QualityPreset:
    name: str
    step_scale: float = _key("multiplies the mode's steps (rounded half up)", limit=LIMITS["step_scale"])
    auto: bool = _key("choose settings from the benchmark cache or the length rule", default=False)
    description: str = _key("one line shown by `presets list`", default="")


@dataclass(frozen=True)
class OptimizationLevel:
    name: str
    precision: str = _key("weights and activations; auto = bf16, else fp16, else fp32", limit=LIMITS["precision"])
    tf32: bool = _key("TF32 matmuls on Ampere and newer")
    compile: bool = _key("torch.compile the UNet")
    compile_mode: str = _key("torch.compile mode", limit=LIMITS["compile_mode"])
    cuda_graphs: bool = _key("replay the UNet step as a CUDA graph")
    vae_slicing: bool = _key("VAE one frame at a time")
    vae_tiling: bool = _key("VAE in tiles")
    windows_per_call: int = _key("denoising windows batched into one UNet call", limit=LIMITS["windows_per_call"])
    memory_fraction: float = _key("share of device memory the run may use", limit=LIMITS["memory_fraction"])
    channels_last: bool = _key("channels-last memory format for the convolutions")
    smart_batching: bool = _key(
        "no CUDA-graph padding (a graph per window length); equal-length windows share a call in any order",
        default=False,
    )
    description: str = _key("one line shown by `presets list`", default="")

    def settings(self) -> dict[str, Any]:
        """The RunSettings fields this level sets (precision may still be "auto")."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "description")}


@dataclass(frozen=True)
class Tier:
    name: str
    backend: str = _key("device kind this tier is for", limit=Limit(choices=BACKENDS))
    level: str = _key("default optimization level (a name under [levels])")
    min_memory_gb: float = _key(
        "smallest total device memory, GB of 10^9 bytes", default=0.0, limit=LIMITS["min_memory_gb"]
    )
    precision: str | None = _key("pins the precision over the level's", default=None, limit=LIMITS["precision"])
    description: str = _key("one line shown by `presets list`", default="")


@dataclass(frozen=True)
class LengthRule:
    name: str
    quality: str = _key("quality preset whose step scale applies (a name under [quality])")
    max_seconds: float | None = _key(
        "longest video in this class; omit for the last class", default=None, limit=LIMITS["max_seconds"]
    )
    deepcache: bool | None = _key("overrides the mode's deepcache", default=None)
    deepcache_interval: int | None = _key(
        "overrides the mode's deepcache_interval", default=None, limit=LIMITS["deepcache_interval"]
    )
    face_detect_stride: int | None = _key(
        "overrides the mode's face_detect_stride", default=None, limit=LIMITS["face_detect_stride"]
    )
    compile: bool | None = _key("overrides the level's compile", default=None)
    cuda_graphs: bool | None = _key("overrides the level's cuda_graphs", default=None)
    description: str = _key("one line shown by `presets list`", default="")

    def settings(self) -> dict[str, Any]:
        """The RunSettings fields this rule overrides."""
        names = ("deepcache", "deepcache_interval", "face_detect_stride", "compile", "cuda_graphs")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class AutoPolicy:
    reference_mode: str = _key("mode whose output fidelity is measured against (a name under [modes])")
    default_length: str = _key("length class when the video length is unknown (a name under [length])")
    fidelity_floor: dict[str, float] = _key("metric name = lowest acceptable value against reference_mode", default={})


SECTIONS: dict[str, type] = {
    "modes": Mode,
    "quality": QualityPreset,
    "levels": OptimizationLevel,
    "tiers": Tier,
    "length": LengthRule,
}
ALL_SECTIONS = tuple(SECTIONS) + ("auto",)


@dataclass(frozen=True)
class PresetTable:
    modes: dict[str, Mode]
    quality: dict[str, QualityPreset]
    levels: dict[str, OptimizationLevel]
    tiers: dict[str, Tier]
    length: dict[str, LengthRule]
    auto: AutoPolicy
    files: tuple[str, ...] = ()  # the files merged, built-in first

    def length_class(self, duration_s: float | None) -> str:
        """The length class of a video (the default class when the length is unknown)."""
        if duration_s is None:
            return self.auto.default_length
        bounded = sorted((r for r in self.length.values() if r.max_seconds is not None), key=lambda r: r.max_seconds)
        for rule in bounded:
            if duration_s <= rule.max_seconds:
                return rule.name
        return next(r.name for r in self.length.values() if r.max_seconds is None)

    def to_dict(self) -> dict[str, Any]:
        """The merged table in the file's layout (loadable again as an override file)."""
        data: dict[str, Any] = {}
        for section in SECTIONS:
            data[section] = {name: _entry_dict(entry) for name, entry in getattr(self, section).items()}
        data["auto"] = _entry_dict(self.auto)
        return data


@dataclass(frozen=True)
class PresetFiles:
    """Which preset files are in effect, and why."""

    builtin: str  # where the built-in table is read from
    user: Path  # the user override file's place (it may not exist)
    explicit: Path | None = None  # --presets FILE or $LATENTSYNC_PRESETS
    explicit_from: str | None = None  # "--presets" or "LATENTSYNC_PRESETS"

    @property
    def override(self) -> Path | None:
        """The one override file merged over the built-in table, if any."""
        if self.explicit is not None:
            return self.explicit
        return self.user if self.user.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "builtin": self.builtin,
            "user": str(self.user),
            "user_exists": self.user.is_file(),
            "explicit": str(self.explicit) if self.explicit else None,
            "explicit_from": self.explicit_from,
            "in_effect": [self.builtin] + ([str(self.override)] if self.override else []),
        }


# ---------------------------------------------------------------------------
# Finding and reading the files


def user_presets_path() -> Path:
    """`latentsync/presets.toml` in the platform's user config dir."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False) / PRESETS_FILENAME


def locate_preset_files(cli_path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> PresetFiles:
    """--presets beats $LATENTSYNC_PRESETS beats the user config file."""
    environ = os.environ if environ is None else environ
    builtin = _builtin_location()
    user = user_presets_path()
    if cli_path is not None:
        return PresetFiles(str(builtin), user, Path(cli_path), "--presets")
    if environ.get(ENV_PRESETS):
        return PresetFiles(str(builtin), user, Path(environ[ENV_PRESETS]), ENV_PRESETS)
    return PresetFiles(str(builtin), user)


def load_presets(cli_path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> PresetTable:
    """The built-in table with the override file in effect merged over it."""
    return load_preset_files(locate_preset_files(cli_path, environ))


def load_preset_files(files: PresetFiles) -> PresetTable:
    if files.explicit is None and files.user.exists() and not files.user.is_file():
        raise ConfigError(
            f"{files.user}: the user presets path is a folder, not a file; remove the folder "
            "(`latentsync presets init` writes the file)"
        )
    layers = [(files.builtin, _parse_toml(_builtin_location().read_text(encoding="utf-8"), files.builtin))]
    if files.override is not None:
        layers.append((str(files.override), read_toml(files.override, files.explicit_from)))
    return build_table(layers)


def read_toml(path: Path, named_by: str | None = None) -> dict[str, Any]:
    by = f" (from {named_by})" if named_by else ""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a presets file{by}; name a .toml file")
    if not path.is_file():
        raise ConfigError(f"{path}: presets file not found{by}; check the path or run `latentsync presets init`")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the presets file ({error})") from None
    return _parse_toml(text, str(path))


def _parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin}: invalid TOML: {error}") from None


def _builtin_location():
    """The packaged presets.toml (wheel), else the repository's (editable install)."""
    packaged = resources.files("latentsync_cli").joinpath(PRESETS_FILENAME)
    if packaged.is_file():
        return packaged
    in_repository = Path(__file__).resolve().parents[3] / PRESETS_FILENAME  # src/latentsync_cli/settings/
    if in_repository.is_file():
        return in_repository
    raise ConfigError(
        f"built-in {PRESETS_FILENAME} not found in the package or at {in_repository}; reinstall latentsync"
    )


# ---------------------------------------------------------------------------
# Checking and merging


def build_table(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> PresetTable:
    """Check each (file name, data) layer, merge them in order, and build the table."""
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, str], str] = {}  # (section, entry) -> the last file that touched it
    for origin, data in layers:
        _check_layer(data, origin)
        merged = deep_merge(merged, data)
        for section, entries in data.items():
            names = [""] if section == "auto" else list(entries)
            for name in names:
                origins[(section, name)] = origin
    table = PresetTable(
        modes=_build_section(merged, "modes", origins),
        quality=_build_section(merged, "quality", origins),
        levels=_build_section(merged, "levels", origins),
        tiers=_build_section(merged, "tiers", origins),
        length=_build_section(merged, "length", origins),
        auto=_build_entry(AutoPolicy, None, merged.get("auto", {}), "auto", origins.get(("auto", ""), "presets")),
        files=tuple(origin for origin, _ in layers),
    )
    _check_references(table, origins)
    return table


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: tables merge key by key, any other value replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_layer(data: Mapping[str, Any], origin: str) -> None:
    for section, entries in data.items():
        if section not in ALL_SECTIONS:
            raise ConfigError(f"{origin}: unknown table [{section}]; allowed: {', '.join(ALL_SECTIONS)}")
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{origin}: {section} must be a table ([{section}]), got {_show(entries)}")
        if section == "auto":
            _check_entry(AutoPolicy, entries, "auto", origin)
            continue
        for name, entry in entries.items():
            if not NAME_PATTERN.match(name):
                raise ConfigError(f"{origin}: {section}.{name}: names use lowercase letters, digits, '-' and '_' only")
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{origin}: {section}.{name} must be a table ([{section}.{name}])")
            _check_entry(SECTIONS[section], entry, f"{section}.{name}", origin)


def _check_entry(cls: type, entry: Mapping[str, Any], where: str, origin: str) -> None:
    allowed = file_keys(cls)
    hints = typing.get_type_hints(cls)
    for key, value in entry.items():
        if key not in allowed:
            raise ConfigError(f"{origin}: {where}.{key} is not a known key; allowed: {', '.join(allowed)}")
        _check_value(allowed[key], _value_type(hints[key]), value, f"{where}.{key}", origin)


def file_keys(cls: type) -> dict[str, Any]:
    """The keys an entry of this kind accepts: its dataclass fields other than `name`."""
    return {f.name: f for f in fields(cls) if f.name != "name"}


def _check_value(spec, expected: type, value: Any, where: str, origin: str) -> None:
    if expected is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{origin}: {where} must be a table of name = number, got {_show(value)}")
        for metric, floor in value.items():
            if not _is_number(floor) or NO_LIMIT.problem(floor):
                raise ConfigError(f"{origin}: {where}.{metric} must be a finite number, got {_show(floor)}")
        return
    if not _has_type(value, expected):
        raise ConfigError(f"{origin}: {where} must be {_TYPE_WORDS[expected]}, got {_show(value)}")
    limit = spec.metadata["limit"]
    problem = limit.problem(value)
    if problem:
        verdict = "is not allowed" if limit.choices else "is out of range"
        raise ConfigError(f"{origin}: {where} = {_show(value)} {verdict}; {problem}")


def describe_range(spec) -> str:
    """A key's range in words: "1 to 24", ">= 0", "> 0 and <= 1", or "any"."""
    limit = spec.metadata["limit"]
    return "any" if limit.choices else limit.describe()


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _value_type(hint: Any) -> type:
    """int for `int`, str for `str | None`, dict for `dict[str, float]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def _has_type(value: Any, expected: type) -> bool:
    if expected is float:
        return _is_number(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as it would look in TOML, for error messages."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _build_section(merged: Mapping[str, Any], section: str, origins: Mapping) -> dict[str, Any]:
    cls = SECTIONS[section]
    entries = merged.get(section, {})
    if not entries:
        raise ConfigError(f"presets: the table has no [{section}.*] entries; restore the built-in presets.toml")
    return {
        name: _build_entry(cls, name, entry, f"{section}.{name}", origins[(section, name)])
        for name, entry in entries.items()
    }


def _build_entry(cls: type, name: str | None, entry: Mapping[str, Any], where: str, origin: str):
    for key, spec in file_keys(cls).items():
        if key not in entry and spec.default is MISSING and spec.default_factory is MISSING:
            raise ConfigError(f"{origin}: {where} is missing the key {key} ({spec.metadata['help']})")
    values = dict(entry)
    hints = typing.get_type_hints(cls)
    for key in values:
        if _value_type(hints[key]) is float:
            values[key] = float(values[key])  # TOML `guidance = 2` is an int
    if name is None:
        return cls(**values)
    return cls(name=name, **values)


def _check_references(table: PresetTable, origins: Mapping[tuple[str, str], str]) -> None:
    """Names that point into another section, and rules that span entries."""
    for mode in table.modes.values():
        if mode.min_steps > mode.steps:
            origin = origins[("modes", mode.name)]
            raise ConfigError(f"{origin}: modes.{mode.name}.min_steps = {mode.min_steps} is above steps = {mode.steps}")
    for tier in table.tiers.values():
        _check_reference(tier.level, table.levels, f"tiers.{tier.name}.level", origins[("tiers", tier.name)])
    for backend in BACKENDS:
        if not any(t.backend == backend for t in table.tiers.values()):
            raise ConfigError(f'presets: no tier has backend = "{backend}"; every backend needs one')
    for rule in table.length.values():
        _check_reference(rule.quality, table.quality, f"length.{rule.name}.quality", origins[("length", rule.name)])
    open_ended = [r.name for r in table.length.values() if r.max_seconds is None]
    if len(open_ended) != 1:
        raise ConfigError(
            f"presets: exactly one [length.*] class must have no max_seconds (the longest); found {len(open_ended)}"
        )
    origin = origins.get(("auto", ""), "presets")
    _check_reference(table.auto.reference_mode, table.modes, "auto.reference_mode", origin)
    _check_reference(table.auto.default_length, table.length, "auto.default_length", origin)


def _check_reference(name: str, entries: Mapping[str, Any], where: str, origin: str) -> None:
    if name not in entries:
        raise ConfigError(f"{origin}: {where} = {_show(name)} is not defined; allowed: {', '.join(entries)}")


def _entry_dict(entry: Any) -> dict[str, Any]:
    """An entry's file keys and values, leaving out unset (None) ones."""
    values = {}
    for key in file_keys(type(entry)):
        value = getattr(entry, key)
        if value is not None:
            values[key] = dict(value) if isinstance(value, Mapping) else value
    return values

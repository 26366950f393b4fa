"""Which configurations a benchmark level measures.

A case is a speed mode (resolved at this device's tier defaults) plus a few
changed settings. `quick` measures every mode with DeepCache on and off;
`full` adds, one setting at a time around each mode's own settings, the other
schedulers, guidance 1.0 or 1.5 (whichever the mode does not use), windows,
windows per UNet call, torch.compile, CUDA graphs and precisions this device can
run, and each speed idea of docs/PERFORMANCE.md
switched to the other side of the mode's own choice (CFG cache, step skipping,
multi-scale steps, warm start, window overlap, smart batching); `stress` is one
long run of one mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from latentsync_cli.constants import MAX_WINDOW, SCHEDULERS
from latentsync_cli.settings.device_record import Capabilities
from latentsync_cli.settings.run_settings import RunSettings, overlap_problem

LEVELS = ("quick", "full", "stress")
FULL_WINDOWS = (8, 12, 16, 20, 24)
FULL_GUIDANCES = (1.0, 1.5)  # without and with classifier-free guidance (upstream's 1.5)
FULL_WINDOWS_PER_CALL = (1, 2, 4)
SPEED_IDEAS = ("cfg_cache", "step_skipping", "multiscale", "warm_start", "smart_batching")  # switched on and off
FULL_OVERLAP = 4  # frames, for the window overlap case of a mode without overlap
STRESS_MODE = "normal"


@dataclass(frozen=True)
class BenchCase:
    name: str  # e.g. "turbo+deepcache", "normal+dpmpp_2m"
    mode: str
    changes: dict = field(default_factory=dict)  # RunSettings fields changed from the mode's own settings

    def settings(self, base: RunSettings) -> RunSettings:
        return replace(base, **self.changes)


def plan_cases(level: str, bases: dict[str, RunSettings], capabilities: Capabilities) -> list[BenchCase]:
    """The cases of `level`, given each mode's settings on this device (mode name -> RunSettings)."""
    if level == "quick":
        return _quick_cases(bases)
    if level == "full":
        return _unique(_quick_cases(bases) + _full_cases(bases, capabilities))
    if level == "stress":
        mode = STRESS_MODE if STRESS_MODE in bases else next(iter(bases))
        return [_case(mode, bases[mode], {})]
    raise ValueError(f"unknown benchmark level {level!r}")


def _quick_cases(bases: dict[str, RunSettings]) -> list[BenchCase]:
    cases = []
    for mode, base in bases.items():
        for deepcache in (False, True):
            cases.append(_case(mode, base, {"deepcache": deepcache}))
    return cases


def _full_cases(bases: dict[str, RunSettings], capabilities: Capabilities) -> list[BenchCase]:
    """One setting at a time, around each mode's own settings (DeepCache as the mode has it)."""
    precisions = ["fp32"] + (["fp16"] if capabilities.fp16 else []) + (["bf16"] if capabilities.bf16 else [])
    variations: list[dict] = []
    variations += [{"scheduler": scheduler} for scheduler in SCHEDULERS]
    variations += [{"guidance": guidance} for guidance in FULL_GUIDANCES]
    variations += [{"window": window} for window in FULL_WINDOWS if window <= MAX_WINDOW]
    variations += [{"windows_per_call": count} for count in FULL_WINDOWS_PER_CALL]
    if capabilities.compile:
        variations += [{"compile": True}, {"compile": False}]
    if capabilities.cuda_graphs:
        variations += [{"cuda_graphs": True}, {"cuda_graphs": False}]
    variations += [{"precision": precision} for precision in precisions]
    cases = []
    for mode, base in bases.items():
        for changes in variations + _speed_idea_variations(base):
            if overlap_problem(changes.get("window", base.window), base.window_overlap) is None:
                cases.append(_case(mode, base, changes))
    return cases


def _speed_idea_variations(base: RunSettings) -> list[dict]:
    """Each speed idea on where the mode has it off, off where the mode has it on."""
    ideas = [idea for idea in SPEED_IDEAS if idea != "cfg_cache" or base.uses_cfg]  # no guidance: nothing to cache
    variations: list[dict] = [{idea: not getattr(base, idea)} for idea in ideas]
    overlap = 0 if base.window_overlap else FULL_OVERLAP
    if overlap_problem(base.window, overlap) is None:
        variations.append({"window_overlap": overlap})
    return variations


def _case(mode: str, base: RunSettings, changes: dict) -> BenchCase:
    # Keep only what really differs from the mode's settings, so equal cases compare equal.
    changes = {key: value for key, value in changes.items() if getattr(base, key) != value}
    settings = replace(base, **changes)
    return BenchCase(name=case_name(mode, settings, changes), mode=mode, changes=changes)


def case_name(mode: str, settings: RunSettings, changes: dict) -> str:
    """The mode, "+deepcache" when it is on, then each other change: "fast+deepcache+w20"."""
    name = mode + ("+deepcache" if settings.deepcache else "")
    for key, value in changes.items():
        if key == "deepcache":
            continue
        if key == "window":
            name += f"+w{value}"
        elif key == "windows_per_call":
            name += f"+{value}/call"
        elif key in ("compile", "cuda_graphs"):
            name += f"+{key.replace('_', '')}" if value else f"+no-{key.replace('_', '')}"
        elif key == "guidance":
            name += f"+g{value:g}"
        elif key == "window_overlap":
            name += f"+overlap{value}"
        elif isinstance(value, bool):
            name += f"+{key.replace('_', '-')}" if value else f"+no-{key.replace('_', '-')}"
        else:
            name += f"+{value}"
    return name


def _unique(cases: list[BenchCase]) -> list[BenchCase]:
    seen = set()
    kept = []
    for case in cases:
        identity = (case.mode, tuple(sorted(case.changes.items())))
        if identity not in seen:
            seen.add(identity)
            kept.append(case)
    return kept

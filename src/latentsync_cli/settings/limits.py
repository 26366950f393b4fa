"""The values each setting allows, defined once.

The preset-file reader (presets.py) checks every key against these when a
file is read, and resolve_settings (settings.py) checks every flag and every
resolved value against the same ones, so a file, a flag, a batch row and a
benchmark pick are held to one range. Types are checked by the callers; a
`Limit` only says which values of the right type are allowed.

It imports only the constants and the UNet's dimensions, so presets.py and
settings.py both import it without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from latentsync_cli.constants import FPS, MAX_WINDOW, PRECISION_CHOICES, SCHEDULERS, TRAIN_TIMESTEPS
from latentsync_cli.models.unet_config import UNetConfig

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# DeepCache's branch names a skip tensor of the UNet: 0 .. num_skips - 1 (11 for LatentSync 1.6).
DEEPCACHE_BRANCHES = UNetConfig.latentsync_1_6().num_skips


@dataclass(frozen=True)
class Limit:
    """Allowed values: `choices`, or a range of finite numbers (minimum and maximum inclusive, above exclusive)."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    why: str = ""  # the reason for the range, shown after it

    def problem(self, value: Any) -> str | None:
        """Why `value` (of the right type) is not allowed, e.g. "allowed: 1 to 24 (...)"; None when it is."""
        if self.choices:
            return None if value in self.choices else f"allowed: {', '.join(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or self.contains(value):
            return None
        return f"allowed: {self.describe()}" + (f" ({self.why})" if self.why else "")

    def contains(self, number: float) -> bool:
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer too large for any float
            return False
        return (
            finite
            and (self.minimum is None or number >= self.minimum)
            and (self.maximum is None or number <= self.maximum)
            and (self.above is None or number > self.above)
        )

    def describe(self) -> str:
        """The range in words: "1 to 24", ">= 0", "> 0 and <= 1", or "any" (any finite number)."""
        if self.choices:
            return ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)} to {_number(self.maximum)}"
        parts = []
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.minimum is not None:
            parts.append(f">= {_number(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"<= {_number(self.maximum)}")
        return " and ".join(parts) or "any"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


# The schedulers know timesteps 0 .. TRAIN_TIMESTEPS - 1. With upstream's "leading" spacing and
# steps_offset 1, past half that many steps the first timestep is `steps` (DDIM) or `steps + 1`
# (DPM-Solver++ 2M, UniPC), so 998 steps is the most that every scheduler can place.
MAX_STEPS = TRAIN_TIMESTEPS - 2
STEPS = Limit(minimum=1, maximum=MAX_STEPS, why=f"the schedulers have {TRAIN_TIMESTEPS} training timesteps")
NO_LIMIT = Limit()  # any value of the right type (a number: any finite one)

# Keyed by RunSettings field, or by preset-table key where the table has keys RunSettings lacks.
LIMITS: dict[str, Limit] = {
    "steps": STEPS,
    "min_steps": STEPS,
    "scheduler": Limit(choices=SCHEDULERS),
    "guidance": Limit(minimum=1.0, why="1.0 turns classifier-free guidance off"),
    "window": Limit(
        minimum=1, maximum=MAX_WINDOW, why=f"frames; the temporal position encoding has {MAX_WINDOW} slots"
    ),
    "deepcache_interval": Limit(minimum=1, maximum=MAX_STEPS, why="a full UNet pass every this many steps"),
    "deepcache_branch": Limit(
        minimum=0, maximum=DEEPCACHE_BRANCHES - 1, why=f"the UNet leaves {DEEPCACHE_BRANCHES} skip tensors"
    ),
    "cfg_cache_interval": Limit(minimum=1, maximum=MAX_STEPS, why="the unconditional pass every this many steps"),
    "step_skip_threshold": Limit(
        minimum=0.0, maximum=10.0, why="summed relative change of the UNet's first block input before a step runs"
    ),
    "multiscale_share": Limit(above=0.0, maximum=1.0, why="the share of the steps at half resolution"),
    "warm_start_strength": Limit(above=0.0, maximum=1.0, why="the share of the steps a warm-started window runs"),
    "window_overlap": Limit(
        minimum=0, maximum=MAX_WINDOW - 1, why="frames; a window and its overlap fit the 24-frame position table"
    ),
    "face_detect_stride": Limit(
        minimum=1, maximum=60 * FPS, why="frames; the detector runs at least once a minute of video"
    ),
    "seed": Limit(minimum=0, maximum=2**32 - 1),
    "precision": Limit(choices=PRECISION_CHOICES),
    "compile_mode": Limit(choices=COMPILE_MODES),
    "windows_per_call": Limit(minimum=1, maximum=64, why="denoising windows batched into one UNet call"),
    "memory_fraction": Limit(above=0.0, maximum=1.0, why="a share of the device memory"),
    # preset-table keys only
    "step_scale": Limit(above=0.0, maximum=MAX_STEPS, why="a scale on the mode's steps"),
    "min_memory_gb": Limit(minimum=0.0),
    "max_seconds": Limit(above=0.0),
}

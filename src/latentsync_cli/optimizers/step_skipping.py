"""Adaptive step skipping (TeaCache's idea): reuse the last noise prediction while the UNet's input barely moves.

Every step, a cheap signal is taken from the UNet's input: the first block's
time-modulated input (conv_in's output plus the first ResNet's time shift,
`UNet3DConditionModel.first_block_input`; about 0.03 % of a full pass). Its
relative L1 change from the previous step is accumulated; while the sum stays
under the threshold the step reuses the previous step's noise prediction and
runs no UNet at all (counted as `skipped`); once it reaches the threshold the
step runs the UNet and the sum starts again from zero. The first step a loop
computes and its last step always run the UNet.

TeaCache fits a polynomial from the input's change to the output's change per
model; none is fitted here (the change is used as it is), so a threshold is
this model's own and is set per mode in presets.toml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings

# signal(sample (B, 13, F, h, w), timestep) -> any tensor that moves as the UNet's first block input moves
StepSignal = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepSkipPlan:
    enabled: bool = False
    threshold: float = 0.1
    signal: StepSignal | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: RunSettings, signal: StepSignal | None) -> StepSkipPlan:
        return cls(enabled=settings.step_skipping, threshold=settings.step_skip_threshold, signal=signal)

    def new_state(self) -> StepSkipState | None:
        """A fresh accumulator for one UNet call (None when skipping is off)."""
        return StepSkipState(self) if self.enabled and self.signal is not None else None


class StepSkipState:
    """The accumulated change of one UNet call's denoising loop."""

    def __init__(self, plan: StepSkipPlan):
        self.plan = plan
        self.previous: Tensor | None = None
        self.accumulated = 0.0

    def skips(self, sample: Tensor, timestep: Tensor, must_compute: bool) -> bool:
        """Whether this step may reuse the last prediction; call once per step, in order."""
        signal = self.plan.signal(sample, timestep).float()
        previous, self.previous = self.previous, signal
        if previous is not None:
            change = (signal - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
            self.accumulated += float(change)
        if must_compute or previous is None or self.accumulated >= self.plan.threshold:
            self.accumulated = 0.0
            return False
        return True


def step_skipping_entry(settings: RunSettings) -> LogEntry:
    name = "step skipping"
    if not settings.step_skipping:
        return LogEntry(name, OFF, "the UNet runs on every step")
    detail = (
        f"a step reuses the last noise prediction while the first block's input has changed by less than "
        f"{settings.step_skip_threshold:g} (relative L1, summed) since the last computed step"
    )
    return LogEntry(name, APPLIED, detail)

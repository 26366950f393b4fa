"""How much work one UNet call does: several windows per call, and no unconditional half at guidance 1."""

from __future__ import annotations

from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.settings import RunSettings


class WindowBatching:
    """Several windows along the batch dimension of one UNet call.

    The UNet's GroupNorms normalise each batch entry on its own, so a batch of
    windows gives the same result as one call per window. Only windows with
    the same number of frames share a call.
    """

    name = "windows per call"

    def apply(self, settings: RunSettings, log: OptimizationLog) -> int:
        count = max(1, settings.windows_per_call)
        if count == 1:
            log.off(self.name, "one window per UNet call")
        else:
            per_window = 2 if settings.uses_cfg else 1
            log.applied(self.name, f"{count} windows per UNet call (batch {count * per_window})")
        return count


class GuidanceSkip:
    """Guidance 1 means no classifier-free guidance: the unconditional half is never run."""

    name = "skip unconditional pass"

    def apply(self, settings: RunSettings, log: OptimizationLog) -> None:
        if settings.uses_cfg:
            log.off(
                self.name, f"guidance {settings.guidance:g}: conditional + unconditional pass (UNet batch 2 per window)"
            )
        else:
            log.applied(self.name, f"guidance {settings.guidance:g}: conditional pass only (UNet batch 1 per window)")

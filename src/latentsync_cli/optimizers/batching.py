"""How much work one UNet call does: several windows per call, and no unconditional half at guidance 1.

Both are plan fields, not optimizers: the denoise loop runs the unconditional
half only when `plan.guidance` > 1, and the memory ladder starts at
`plan.memory.windows_per_call`. These are their records.

Several windows go along the batch dimension of one UNet call. The UNet's
GroupNorms normalise each batch entry on its own, so a batch of windows gives
the same result as one call per window. Only windows with the same number of
frames share a call.
"""

from __future__ import annotations

from latentsync_cli.optimizers import APPLIED, OFF, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


def windows_per_call_entry(settings: RunSettings) -> LogEntry:
    count = max(1, settings.windows_per_call)
    if count == 1:
        return LogEntry("windows per call", OFF, "one window per UNet call")
    per_window = 2 if settings.uses_cfg else 1
    return LogEntry("windows per call", APPLIED, f"{count} windows per UNet call (batch {count * per_window})")


def guidance_entry(settings: RunSettings) -> LogEntry:
    name = "skip unconditional pass"
    if settings.uses_cfg:
        detail = f"guidance {settings.guidance:g}: conditional + unconditional pass (UNet batch 2 per window)"
        return LogEntry(name, OFF, detail)
    return LogEntry(name, APPLIED, f"guidance {settings.guidance:g}: conditional pass only (UNet batch 1 per window)")


def smart_batching_entry(settings: RunSettings) -> LogEntry:
    name = "smart batching"
    if not settings.smart_batching:
        padding = f"; CUDA graphs pad every window to {settings.window} frames" if settings.cuda_graphs else ""
        return LogEntry(name, OFF, "consecutive windows of equal length share a call" + padding)
    detail = "windows of equal length share a UNet call in any order"
    if settings.cuda_graphs:
        detail += "; no padding frames: one CUDA graph per window length"
    return LogEntry(name, APPLIED, detail)

"""channels_last memory format for the VAE's 4-D convolutions."""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


class ChannelsLast:
    name = "channels_last"

    def apply(self, vae: torch.nn.Module, settings: RunSettings, device: torch.device) -> LogEntry:
        if not settings.channels_last:
            return LogEntry(self.name, OFF, "contiguous (NCHW) tensors")
        vae.to(memory_format=torch.channels_last)
        return LogEntry(self.name, APPLIED, "VAE weights in channels_last (NHWC) for its 2-D convolutions")


def unet_layout_entry(settings: RunSettings) -> LogEntry | None:
    """Why channels_last, when asked for, leaves the UNet alone (None when it was not asked for)."""
    if not settings.channels_last:
        return None
    # The UNet takes 5-D (b, c, f, h, w) input and reshapes between frame-folded
    # convolutions and per-frame/temporal attention at every layer; neither
    # channels_last_3d nor channels_last survives those reshapes, so it is left alone.
    detail = "5-D UNet (b, c, f, h, w) with reshapes at every layer: layout left as is"
    return LogEntry("channels_last (UNet)", SKIPPED, detail)

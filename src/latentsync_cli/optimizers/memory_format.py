"""channels_last memory format for the VAE's 4-D convolutions."""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import OptimizationLog
from latentsync_cli.settings import RunSettings


class ChannelsLast:
    name = "channels_last"

    def apply(self, settings: RunSettings, vae: torch.nn.Module, log: OptimizationLog) -> None:
        if not settings.channels_last:
            log.off(self.name, "contiguous (NCHW) tensors")
            return
        vae.to(memory_format=torch.channels_last)
        log.applied(self.name, "VAE weights in channels_last (NHWC) for its 2-D convolutions")
        # The UNet takes 5-D (b, c, f, h, w) input and reshapes between frame-folded
        # convolutions and per-frame/temporal attention at every layer; neither
        # channels_last_3d nor channels_last survives those reshapes, so it is left alone.
        log.skipped("channels_last (UNet)", "5-D UNet (b, c, f, h, w) with reshapes at every layer: layout left as is")

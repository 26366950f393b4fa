"""VAE slicing (one frame at a time) and tiling (overlapping tiles), diffusers' own switches."""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings


def set_vae_memory(vae: torch.nn.Module, slicing: bool, tiling: bool) -> None:
    """Turn diffusers' AutoencoderKL slicing and tiling on or off (the memory ladder's VAE rungs)."""
    if slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    if tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


class VaeSlicing:
    name = "vae slicing"

    def apply(self, vae: torch.nn.Module, settings: RunSettings, device: torch.device) -> LogEntry:
        if not settings.vae_slicing:
            vae.disable_slicing()
            return LogEntry(self.name, OFF, "VAE runs all frames of a window at once")
        vae.enable_slicing()
        return LogEntry(self.name, APPLIED, "VAE encodes and decodes one frame at a time (less memory, same result)")


class VaeTiling:
    name = "vae tiling"

    def __init__(self, face_size: int):
        self.face_size = face_size  # pixels of the aligned face the VAE sees

    def apply(self, vae: torch.nn.Module, settings: RunSettings, device: torch.device) -> LogEntry:
        if not settings.vae_tiling:
            vae.disable_tiling()
            return LogEntry(self.name, OFF, "VAE works on whole faces")
        vae.enable_tiling()
        tile, face = vae.tile_sample_min_size, self.face_size
        if face <= tile:
            return LogEntry(
                self.name, SKIPPED, f"the {face} px faces fit in one {tile} px tile: tiling changes nothing"
            )
        return LogEntry(
            self.name, APPLIED, f"VAE works on overlapping {tile} px tiles of the {face} px faces (less memory)"
        )

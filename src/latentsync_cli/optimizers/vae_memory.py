"""VAE slicing (one frame at a time) and tiling (overlapping tiles), diffusers' own switches."""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import OptimizationLog


def set_vae_memory(vae: torch.nn.Module, slicing: bool, tiling: bool) -> None:
    """Turn diffusers' AutoencoderKL slicing and tiling on or off."""
    if slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    if tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


class VaeMemory:
    def apply(self, slicing: bool, tiling: bool, vae: torch.nn.Module, log: OptimizationLog, face_size: int) -> None:
        set_vae_memory(vae, slicing, tiling)
        if slicing:
            log.applied("vae slicing", "VAE encodes and decodes one frame at a time (less memory, same result)")
        else:
            log.off("vae slicing", "VAE runs all frames of a window at once")
        tile = vae.tile_sample_min_size
        if tiling and face_size <= tile:
            log.skipped("vae tiling", f"the {face_size} px faces fit in one {tile} px tile: tiling changes nothing")
        elif tiling:
            log.applied(
                "vae tiling", f"VAE works on overlapping {tile} px tiles of the {face_size} px faces (less memory)"
            )
        else:
            log.off("vae tiling", "VAE works on whole faces")

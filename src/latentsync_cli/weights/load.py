"""The models a run uses: the real LatentSync 1.6 weights, or seeded random ones.

Where the files are, and their download, is weights/files.py (no torch there, so
a missing file is reported before torch and diffusers are imported); checking a
folder without loading it is weights/verify.py.

Random weights ("random": full-size architecture, "random-tiny": tiny
architecture) are seeded and need no files; they are for timing and tests, and
their output is not a lip-sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from latentsync_cli.constants import WEIGHT_CHOICES
from latentsync_cli.errors import UsageError
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import load_vae, random_vae
from latentsync_cli.models.whisper import AudioEncoder, load_whisper_encoder, random_audio_encoder
from latentsync_cli.weights.checkpoint import build_random_unet, load_unet
from latentsync_cli.weights.files import REAL_WEIGHTS, locate_weights
from latentsync_cli.weights.proxy import PROXY_RESOLUTION, load_proxy
from latentsync_cli.weights.proxy_files import PROXY_WEIGHTS, proxy_description
from latentsync_cli.weights.verify import Architecture

FULL_RESOLUTION = 512
TINY_RESOLUTION = 256  # tiny VAE latents are 32x32


@dataclass
class ModelBundle:
    unet: UNet3DConditionModel
    vae: AutoencoderKL
    audio_encoder: AudioEncoder
    resolution: int  # face crop side in pixels; latents are resolution / 8
    weights_id: str  # identifies the weights in benchmark cache keys
    description: str  # what the weights are, in words, for every output and report
    is_random: bool
    is_proxy: bool = False  # the small model trained on three clips (weights/proxy.py)

    @property
    def note(self) -> str | None:
        """What every output and report made with these weights must say, when they are not LatentSync 1.6's."""
        return self.description if self.is_random or self.is_proxy else None


def load_models(
    weights: str = "auto",
    checkpoint_dir: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> ModelBundle:
    """Build the UNet, VAE and audio encoder for `weights` ("auto"/"checkpoint", "random", "random-tiny", "proxy")."""
    if weights in REAL_WEIGHTS:
        return _load_real_models(checkpoint_dir, device, dtype)
    if weights == PROXY_WEIGHTS:
        return _proxy_models(device, dtype)
    if weights == "random":
        return _random_models(Architecture.latentsync_1_6(), FULL_RESOLUTION, device, dtype, seed, tiny=False)
    if weights == "random-tiny":
        return _random_models(Architecture.tiny(), TINY_RESOLUTION, device, dtype, seed, tiny=True)
    raise UsageError(f"unknown --weights {weights!r}: choose one of {', '.join(WEIGHT_CHOICES)}")


def _load_real_models(checkpoint_dir: Path | None, device, dtype: torch.dtype) -> ModelBundle:
    paths = locate_weights(checkpoint_dir)
    unet = load_unet(paths.unet, UNetConfig.latentsync_1_6(), device, dtype)
    vae = load_vae(paths.vae, device, dtype)
    audio_encoder = load_whisper_encoder(paths.whisper, device, dtype)
    where = f"from {checkpoint_dir}" if checkpoint_dir is not None else "from the Hugging Face cache"
    return ModelBundle(
        unet=unet,
        vae=vae,
        audio_encoder=audio_encoder,
        resolution=FULL_RESOLUTION,
        weights_id="latentsync-1.6",
        description=f"LatentSync 1.6 weights ({where})",
        is_random=False,
    )


def _proxy_models(device, dtype: torch.dtype) -> ModelBundle:
    proxy = load_proxy(device, dtype)
    return ModelBundle(
        unet=proxy.unet,
        vae=proxy.vae,
        audio_encoder=proxy.audio_encoder,
        resolution=PROXY_RESOLUTION,
        weights_id=PROXY_WEIGHTS,
        description=proxy_description(),
        is_random=False,
        is_proxy=True,
    )


def _random_models(architecture: Architecture, resolution: int, device, dtype: torch.dtype, seed: int, tiny: bool):
    unet = build_random_unet(architecture.unet, device, dtype, seed)
    vae = random_vae(architecture.vae, seed, device, dtype)
    audio_encoder = random_audio_encoder(architecture.whisper, seed, device, dtype)
    purpose = "tests and demos only" if tiny else "timing only"
    size = "tiny architecture" if tiny else "full-size architecture"
    return ModelBundle(
        unet=unet,
        vae=vae,
        audio_encoder=audio_encoder,
        resolution=resolution,
        weights_id="random-tiny" if tiny else "random",
        description=f"random weights ({size}, seed {seed}): {purpose}, the video is not a lip-sync",
        is_random=True,
    )

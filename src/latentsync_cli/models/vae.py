"""The image autoencoder: diffusers' AutoencoderKL with the SD 1.x latent scale.

LatentSync uses `stabilityai/sd-vae-ft-mse` unchanged: a 512x512 RGB face in
[-1, 1] becomes a 4x64x64 latent, scaled by 0.18215 (no shift). Encoding draws
from the latent distribution (mean + std * noise), as upstream does, so it takes
a generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from latentsync_cli.errors import WeightsError
from latentsync_cli.weights.files import VAE_FILES

LATENT_SCALE = 0.18215
LATENT_CHANNELS = 4
DOWNSAMPLE_FACTOR = 8  # 2 ** (number of blocks - 1)


def sd_vae_ft_mse_config() -> dict:
    """The AutoencoderKL config of stabilityai/sd-vae-ft-mse (83.7 M parameters)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": LATENT_SCALE,
        "shift_factor": 0.0,
    }


def tiny_vae_config() -> dict:
    """Same 8x downsampling and 4 latent channels, tiny widths: a 256x256 frame codes in milliseconds on CPU."""
    config = sd_vae_ft_mse_config()
    config.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4)
    return config


def random_vae(
    config: dict, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """An AutoencoderKL built from `config` with seeded random weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**config)
    # nn.Module.to rather than diffusers' override, which warns about fp32-only modules this VAE does not have.
    torch.nn.Module.to(vae, device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


def load_vae(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """Load the VAE from a local folder (config.json + diffusion_pytorch_model.safetensors) or a Hub id."""
    folder = Path(source)
    if folder.exists() and not folder.is_dir():
        raise WeightsError(f"VAE source {source} is a file, expected a folder with {' and '.join(VAE_FILES)}")
    if folder.is_dir():
        for name in VAE_FILES:
            if not (folder / name).is_file():
                raise WeightsError(f"VAE folder {folder} has no {name}: run `latentsync models download`")
    try:
        vae = AutoencoderKL.from_pretrained(
            str(source), torch_dtype=dtype, use_safetensors=True, low_cpu_mem_usage=False
        )
    except Exception as error:  # diffusers raises OSError, ValueError, safetensors errors, ...
        raise WeightsError(
            f"cannot load the VAE from {source} ({type(error).__name__}: {error}); "
            "fetch it again with `latentsync models download`"
        ) from error
    # Upstream sets these two; the Hub config has neither key.
    vae.register_to_config(scaling_factor=LATENT_SCALE, shift_factor=0.0)
    return vae.to(device).eval().requires_grad_(False)


def to_vae_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values (any layout) -> float32 in [-1, 1], the range the VAE encodes."""
    return pixels.float() / 127.5 - 1.0


def encode_latents(
    vae: AutoencoderKL,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    sources: np.ndarray | None = None,
    draw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images (F, 3, H, W) in [-1, 1] -> scaled latents (F, 4, H/8, W/8), sampled from the latent distribution.

    The sample is mean + std * a standard normal draw: drawn from `generator`,
    or `draw` (F, 4, H/8, W/8) when given (see pipeline.windows.NoiseSource).

    `sources` (F,) says which rows repeat an image: row i is the same picture as
    row sources[i]. Each distinct picture is encoded once, and every row still
    draws its own sample with one draw of `generator`, as encoding all F rows
    would (the encoder's numbers may differ in the last float bits, since the
    batch is smaller).
    """
    if generator is not None and draw is not None:
        raise ValueError("pass a generator or a draw, not both")
    images = images.to(device=vae.device, dtype=vae.dtype)
    distinct, rows = np.unique(sources, return_inverse=True) if sources is not None else (None, None)
    with torch.no_grad():
        if distinct is None or len(distinct) == len(images):
            distribution = vae.encode(images).latent_dist
        else:
            parameters = vae.encode(images[torch.from_numpy(distinct)]).latent_dist.parameters  # mean, log-variance
            distribution = DiagonalGaussianDistribution(parameters[torch.from_numpy(rows).to(images.device)])
        if draw is None:
            latents = distribution.sample(generator=generator)
        else:
            latents = distribution.mean + distribution.std * draw.to(distribution.mean)
    return latents * LATENT_SCALE


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (F, 4, h, w) -> images (F, 3, 8h, 8w), nominally in [-1, 1] (not clamped)."""
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        return vae.decode(latents / LATENT_SCALE).sample

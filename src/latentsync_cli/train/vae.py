"""The proxy's VAE: trained on the aligned training faces, then its latent space rescaled and the latents cached.

Objective: squared error of the reconstruction, weighted `mouth_weight` times
more inside the mask's generated region (the only pixels the proxy's output
takes from the VAE), plus `kl_weight` x the KL divergence of the posterior to
N(0, I) (summed over the latent, as Stable Diffusion's VAE was trained).

`logvar_init` < 0 starts every latent channel's posterior narrow (quant_conv's
log-variance bias): with PyTorch's default initialisation the posterior starts
as wide as the prior, and in 1200 steps at the light KL weight the decoder came
to read one channel and left three mostly noise (docs/PERFORMANCE.md, "Where the
seed's hold comes from").

The pipeline multiplies latents by one constant, 0.18215 (models.vae.LATENT_SCALE).
Rather than give the proxy another, `rescale_latent_space` multiplies the
VAE's latent by a factor c (quant_conv's mean rows by c, its log-variance bias
by 2 ln c, post_quant_conv's input by 1/c): the same decoder output, and
0.18215 x latent then has unit standard deviation over the training faces.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.models.vae import LATENT_SCALE, to_vae_range
from latentsync_cli.train.data import Clip
from latentsync_cli.train.loop import Recipe, StepFunction

FINAL_FILE = "vae.safetensors"  # the trained VAE with its latent space rescaled, float32
SCALE_FILE = "latent_scale.json"


@dataclass(frozen=True)
class VaeRecipe(Recipe):
    steps: int = 1800
    batch: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 50
    decay_fraction: float = 0.3
    mouth_weight: float = 3.0
    kl_weight: float = 1e-6
    logvar_init: float = 0.0  # the posterior's initial log-variance; 0: PyTorch's default initialisation
    seed: int = 1


def build_vae(config: dict, seed: int, logvar_init: float = 0.0) -> AutoencoderKL:
    """A VAE with PyTorch's default initialisation from `seed` (the global RNG is left as it was); `logvar_init`
    other than 0 replaces the bias of quant_conv's log-variance rows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**config)
    if logvar_init:
        channels = config["latent_channels"]
        with torch.no_grad():
            vae.quant_conv.bias[channels:] = logvar_init  # rows [mean | log-variance]
    return vae


def to_pixels(faces: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, R, R, 3) -> float32 (n, 3, R, R) in [-1, 1], as the pipeline feeds the VAE."""
    faces = torch.as_tensor(faces)
    return to_vae_range(faces.permute(0, 3, 1, 2))


def generated_region(resolution: int) -> torch.Tensor:
    """(1, 1, R, R): 1 where the model generates, 0 where the input face is kept."""
    return 1.0 - torch.from_numpy(mouth_mask(resolution))[None, None]


def training_faces(clips: list[Clip]) -> torch.Tensor:
    """uint8 (n, R, R, 3): every training frame with a face, of every clip (held-out frames never)."""
    faces = [clip.faces[: clip.train_frames][clip.has_face[: clip.train_frames]] for clip in clips]
    return torch.from_numpy(np.concatenate(faces))


def vae_step_function(faces: torch.Tensor, recipe: VaeRecipe) -> StepFunction:
    """One step: a batch of training faces, reconstructed through a sample of the posterior."""
    weight = 1.0 + recipe.mouth_weight * generated_region(faces.shape[1])
    mouth = generated_region(faces.shape[1]).expand(-1, 3, -1, -1)

    def step(vae: AutoencoderKL, generator: torch.Generator) -> dict[str, float]:
        rows = torch.randint(0, len(faces), (recipe.batch,), generator=generator)
        pixels = to_pixels(faces[rows])
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        squared = (reconstruction - pixels).square()
        weighted = (squared * weight).mean() / weight.mean()
        kl = posterior.kl().mean()
        (weighted + recipe.kl_weight * kl).backward()
        mouth_error = squared.detach()[mouth.expand_as(squared) > 0.5].mean()
        return {"loss": float(weighted.detach()), "mse": float(squared.detach().mean()), "mouth_mse": float(mouth_error),
                "kl": float(kl.detach())}

    return step


@torch.no_grad()
def posterior(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent distribution's mean and standard deviation, (n, 4, h, w) each, unscaled."""
    means, stds = [], []
    for start in range(0, len(pixels), batch):
        distribution = vae.encode(pixels[start : start + batch]).latent_dist
        means.append(distribution.mean)
        stds.append(distribution.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def rescale_latent_space(vae: AutoencoderKL, factor: float) -> None:
    """Make the VAE's latent `factor` times its present one, with the same reconstructions."""
    channels = vae.quant_conv.out_channels // 2  # rows: [mean | log-variance]
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2.0 * math.log(factor)
    vae.post_quant_conv.weight /= factor


def finish_vae(vae: AutoencoderKL, clips: list[Clip], stage_dir: Path) -> float:
    """Rescale the trained VAE's latents to unit deviation under LATENT_SCALE; save it; returns the factor."""
    vae.eval()
    means, _ = posterior(vae, to_pixels(training_faces(clips)))
    factor = 1.0 / (LATENT_SCALE * float(means.std()))
    rescale_latent_space(vae, factor)
    means, _ = posterior(vae, to_pixels(training_faces(clips)))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, stage_dir / FINAL_FILE)
    summary = {"factor": factor, "latent_scale": LATENT_SCALE, "scaled_std_after": float(means.std() * LATENT_SCALE),
               "scaled_mean_after": float(means.mean() * LATENT_SCALE)}
    (stage_dir / SCALE_FILE).write_text(json.dumps(summary, indent=2))
    return factor


def load_trained_vae(config: dict, stage_dir: Path) -> AutoencoderKL:
    vae = AutoencoderKL(**config)
    vae.load_state_dict(load_file(stage_dir / FINAL_FILE))
    return vae.eval().requires_grad_(False)


def cache_latents(vae: AutoencoderKL, clips: list[Clip], latents_dir: Path) -> None:
    """<latents_dir>/<clip>.npz: the posterior mean and std, scaled by LATENT_SCALE, of every frame's
    whole face (`face_*`) and masked face (`masked_*`, the mouth blanked as the pipeline blanks it)."""
    latents_dir.mkdir(parents=True, exist_ok=True)
    keep = torch.from_numpy(mouth_mask(clips[0].faces.shape[1]))[None, None]
    for clip in clips:
        pixels = to_pixels(clip.faces)
        face_mean, face_std = posterior(vae, pixels)
        masked_mean, masked_std = posterior(vae, pixels * keep)
        arrays = {"face_mean": face_mean, "face_std": face_std, "masked_mean": masked_mean, "masked_std": masked_std}
        np.savez(latents_dir / f"{clip.name}.npz", **{k: (v * LATENT_SCALE).numpy() for k, v in arrays.items()})

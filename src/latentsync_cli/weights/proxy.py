"""The proxy model (`--weights proxy`): its architecture, and loading its shipped weights.

    UNet           UNetConfig.tiny() (the golden tiny architecture, 5.3 M parameters), 16x16 latents
    VAE            a small AutoencoderKL, 8x downsampling, 4 latent channels, 128 px faces
    audio encoder  the Whisper-tiny architecture with seeded random weights, rebuilt here from its
                   seed (its two stem convolutions scaled by AUDIO_STEM_GAIN); the digest of its
                   weights is checked against the one it was trained with

The VAE's latent space was rescaled after training (see latentsync_cli.train.vae)
so that the pipeline's one latent scale, 0.18215, gives unit-variance latents:
the pipeline needs no other constant for it. Files and words: weights/proxy_files.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from latentsync_cli.errors import WeightsError
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import sd_vae_ft_mse_config
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, random_audio_encoder
from latentsync_cli.weights.checkpoint import load_unet
from latentsync_cli.weights.proxy_files import MANIFEST_FILE, PROXY_DIR, UNET_FILE, VAE_FILE, check_proxy_files

PROXY_RESOLUTION = 128  # face crop side; latents are 16x16
AUDIO_ENCODER_SEED = 0  # the proxy's audio features come from Whisper tiny with these random weights
# PyTorch's default init shrinks the log-mel through the two stem convolutions to about a tenth of
# the sinusoidal positional embedding added after them: two different speeches then give features
# 6 % apart at the same frame, and the UNet sees a clock, not the speech. Both stem convolutions'
# weights times 4 put them 64 % apart (features' rms 0.75 -> 1.34); real Whisper learns this.
AUDIO_STEM_GAIN = 4.0
MANIFEST_FORMAT = 1


def proxy_unet_config() -> UNetConfig:
    return replace(UNetConfig.tiny(), sample_size=PROXY_RESOLUTION // 8)


def proxy_vae_config() -> dict:
    """sd-vae-ft-mse's layout with narrow blocks (about 1 M parameters): cheap enough to train on 2 CPU cores."""
    config = sd_vae_ft_mse_config()
    config.update(block_out_channels=[16, 32, 64, 64], layers_per_block=1, norm_num_groups=16)
    config.update(sample_size=PROXY_RESOLUTION)
    return config


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of every state-dict entry's name, shape and float32 bytes, in order."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def proxy_audio_encoder(expected_digest: str | None = None, stem_gain: float = AUDIO_STEM_GAIN) -> AudioEncoder:
    """The proxy's audio encoder, float32 on the CPU; WeightsError when it is not the one it was trained with.

    `stem_gain` 1 gives the first proxy run's encoder (PyTorch's default init unchanged)."""
    encoder = random_audio_encoder(WhisperDims.tiny(), AUDIO_ENCODER_SEED)
    with torch.no_grad():
        encoder.conv1.weight.mul_(stem_gain)
        encoder.conv2.weight.mul_(stem_gain)
    if expected_digest is not None and state_digest(encoder) != expected_digest:
        raise WeightsError(
            f"torch {torch.__version__} rebuilds the proxy's audio encoder (random Whisper tiny, seed "
            f"{AUDIO_ENCODER_SEED}, stem x{stem_gain:g}) with other numbers than the ones it was trained with: --weights proxy "
            "needs a torch whose default initialisation matches (it was made with the one in its manifest)"
        )
    return encoder


@dataclass
class ProxyModels:
    unet: UNet3DConditionModel
    vae: AutoencoderKL
    audio_encoder: AudioEncoder
    manifest: dict


def read_manifest(folder: Path = PROXY_DIR) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{folder / MANIFEST_FILE}: cannot read the proxy manifest ({error}); reinstall latentsync")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise WeightsError(f"{folder / MANIFEST_FILE}: not a format-{MANIFEST_FORMAT} proxy manifest; reinstall latentsync")
    return manifest


def check_manifest(manifest: dict, folder: Path) -> None:
    """The shipped files must be of the architecture this code builds."""
    expected = {
        "resolution": PROXY_RESOLUTION,
        "unet_config": json.loads(json.dumps(asdict(proxy_unet_config()))),
        "vae_config": proxy_vae_config(),
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise WeightsError(f"{folder / MANIFEST_FILE}: its {key} is not this version's proxy; reinstall latentsync")


def load_proxy_vae(path: Path, device, dtype: torch.dtype) -> AutoencoderKL:
    vae = AutoencoderKL(**proxy_vae_config())
    try:
        vae.load_state_dict(load_file(path, device="cpu"), strict=True)
    except Exception as error:  # safetensors and load_state_dict raise several types for a bad file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path}: cannot load the proxy VAE ({reason}); reinstall latentsync") from None
    torch.nn.Module.to(vae, device=device, dtype=dtype)  # not diffusers' override (it warns needlessly)
    return vae.eval().requires_grad_(False)


def load_proxy(device="cpu", dtype: torch.dtype = torch.float32, folder: Path = PROXY_DIR) -> ProxyModels:
    """The shipped proxy, in `dtype` on `device` (its files are fp16; they are cast on load)."""
    check_proxy_files(folder)
    manifest = read_manifest(folder)
    check_manifest(manifest, folder)
    audio_encoder = proxy_audio_encoder(manifest.get("audio_encoder", {}).get("sha256"))
    return ProxyModels(
        unet=load_unet(folder / UNET_FILE, proxy_unet_config(), device, dtype),
        vae=load_proxy_vae(folder / VAE_FILE, device, dtype),
        audio_encoder=audio_encoder.to(device=device, dtype=dtype),
        manifest=manifest,
    )

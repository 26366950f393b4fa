"""How the model weights are checked, and the models a run uses.

Where the files are, and their download, is models/weight_files.py (no torch
there, so a missing file is reported before torch and diffusers are imported).

Random weights ("random": full-size architecture, "random-tiny": tiny
architecture) are seeded and need no files; they are for timing and tests, and
their output is not a lip-sync. "proxy" is a small model trained on three clips
that ships inside the package (models/proxy.py): its mouths follow the speech,
but its quality is not LatentSync 1.6's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from latentsync_cli.constants import WEIGHT_CHOICES
from latentsync_cli.errors import UsageError, WeightsError
from latentsync_cli.models.checkpoint import build_random_unet, compare_state_shapes, expected_state_shapes, load_unet
from latentsync_cli.models.proxy import PROXY_RESOLUTION, load_proxy
from latentsync_cli.models.proxy_files import PROXY_WEIGHTS, proxy_description
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import load_vae, random_vae, sd_vae_ft_mse_config, tiny_vae_config
from latentsync_cli.models.weight_files import (
    DOWNLOAD_COMMAND,
    REAL_WEIGHTS,
    WeightFile,
    find_weight_files,
    locate_weights,
)
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, load_whisper_encoder, random_audio_encoder

FULL_RESOLUTION = 512
TINY_RESOLUTION = 256  # tiny VAE latents are 32x32


# --------------------------------------------------------------------------- checking the files


@dataclass(frozen=True)
class Architecture:
    """The model dimensions the weight files are checked against."""

    name: str
    unet: UNetConfig
    whisper: WhisperDims
    vae: dict

    @classmethod
    def latentsync_1_6(cls) -> Architecture:
        return cls("LatentSync 1.6", UNetConfig.latentsync_1_6(), WhisperDims.tiny(), sd_vae_ft_mse_config())

    @classmethod
    def tiny(cls) -> Architecture:
        """The random-tiny architecture (for tests: real file formats, small tensors)."""
        return cls("tiny", UNetConfig.tiny(), WhisperDims.tiny(), tiny_vae_config())


@dataclass
class FileCheck:
    file: WeightFile
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.file.present and not self.problems

    def to_dict(self) -> dict:
        return {**self.file.to_dict(), "ok": self.ok, "problems": self.problems}


@dataclass
class VerifyReport:
    architecture: str
    checks: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def failure_message(self) -> str:
        """One line: the missing files, then each mismatched file with its first problems."""
        missing = [check.file.describe() for check in self.checks if not check.file.present]
        mismatched = [check for check in self.checks if check.file.present and not check.ok]
        parts = [f"{check.file.path}: {'; '.join(check.problems[:3])}" for check in mismatched]
        if missing and not mismatched:  # nothing is wrong with what is there: it is simply absent
            return f"weights missing: {', '.join(missing)}; run `{DOWNLOAD_COMMAND}`"
        if missing:
            parts.insert(0, f"missing {', '.join(missing)} (run `{DOWNLOAD_COMMAND}`)")
        return f"weights do not match {self.architecture}: " + " | ".join(parts)

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "ok": self.ok, "files": [c.to_dict() for c in self.checks]}


def read_state_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a .safetensors (header only) or torch .pt checkpoint (memory-mapped, no data read).

    A .pt may hold the state dict itself or wrap it in "state_dict" (LatentSync) or
    "model_state_dict" (openai Whisper).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as reader:
                return {key: tuple(reader.get_slice(key).get_shape()) for key in reader.keys()}
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, foreign or pickled-code files raise many types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path}: cannot read the checkpoint ({first_line}); run `{DOWNLOAD_COMMAND}`") from error
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(isinstance(t, torch.Tensor) for t in checkpoint.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; run `{DOWNLOAD_COMMAND}`")
    return {key: tuple(tensor.shape) for key, tensor in checkpoint.items()}


def _meta_shapes(module_factory) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a module built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        module = module_factory()
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


# diffusers 0.4-era names of the VAE mid-block attention projections; diffusers renames them on load
_OLD_VAE_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _with_current_vae_names(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    renamed = {}
    for key, shape in shapes.items():
        for old, new in _OLD_VAE_ATTENTION_NAMES.items():
            key = key.replace(old, new)
        renamed[key] = shape
    return renamed


def _check_unet(path: Path, architecture: Architecture) -> list[str]:
    expected = expected_state_shapes(architecture.unet)
    return compare_state_shapes(expected, read_state_shapes(path), path.name)


def _check_whisper(path: Path, architecture: Architecture) -> list[str]:
    shapes = read_state_shapes(path)
    encoder_shapes = {key: shape for key, shape in shapes.items() if key.startswith("encoder.")}
    expected = {
        "encoder." + key: shape for key, shape in _meta_shapes(lambda: AudioEncoder(architecture.whisper)).items()
    }
    return _shape_problems(expected, encoder_shapes)


def _check_vae_config(path: Path, architecture: Architecture) -> list[str]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return [f"cannot read the VAE config ({error})"]
    if not isinstance(config, dict):
        return ["the VAE config is not a JSON object"]
    problems = []
    for key in ("block_out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
        expected, actual = architecture.vae[key], config.get(key)
        if actual != expected:
            problems.append(f"{key} {actual} != {expected}")
    return problems


def _check_vae_weights(path: Path, architecture: Architecture) -> list[str]:
    expected = _meta_shapes(lambda: AutoencoderKL(**architecture.vae))
    return _shape_problems(expected, _with_current_vae_names(read_state_shapes(path)))


def _shape_problems(expected: dict[str, tuple], actual: dict[str, tuple]) -> list[str]:
    """Missing, unexpected and mis-shaped keys, each named, mis-shaped first."""
    problems = [
        f"{key} {list(actual[key])} != {list(shape)}"
        for key, shape in expected.items()
        if key in actual and tuple(actual[key]) != tuple(shape)
    ]
    problems += [f"missing key {key}" for key in expected if key not in actual]
    problems += [f"unexpected key {key}" for key in actual if key not in expected]
    return problems


_CHECKS = {
    "unet": _check_unet,
    "whisper": _check_whisper,
    "vae-config": _check_vae_config,
    "vae-weights": _check_vae_weights,
}


def verify_weights(checkpoint_dir: Path | None = None, architecture: Architecture | None = None) -> VerifyReport:
    """Check presence and the key/shape layout of every weight file, without loading tensors into memory."""
    architecture = architecture or Architecture.latentsync_1_6()
    checks = []
    for weight_file in find_weight_files(Path(checkpoint_dir) if checkpoint_dir is not None else None):
        check = FileCheck(weight_file)
        if not weight_file.present:
            check.problems.append(f"missing: run `{DOWNLOAD_COMMAND}`")
        else:
            try:
                check.problems.extend(_CHECKS[weight_file.role](weight_file.path, architecture))
            except WeightsError as error:
                check.problems.append(error.message)
        checks.append(check)
    return VerifyReport(architecture.name, checks)


# --------------------------------------------------------------------------- the models a run uses


@dataclass
class ModelBundle:
    unet: UNet3DConditionModel
    vae: AutoencoderKL
    audio_encoder: AudioEncoder
    resolution: int  # face crop side in pixels; latents are resolution / 8
    weights_id: str  # identifies the weights in benchmark cache keys
    description: str  # what the weights are, in words, for every output and report
    is_random: bool
    is_proxy: bool = False  # the small model trained on three clips (models/proxy.py)

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

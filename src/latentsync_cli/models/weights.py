"""Where the model weights come from, how they are checked, and the models a run uses.

Real weights come from the Hugging Face Hub (downloaded once into its normal
cache, which honours HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE) or from a
`--checkpoint-dir DIR` laid out like the Hub repo:

    DIR/latentsync_unet.pt        (or DIR/latentsync_unet.safetensors)
    DIR/whisper/tiny.pt
    DIR/vae/config.json           optional: without DIR/vae/ the VAE comes
    DIR/vae/diffusion_pytorch_model.safetensors   from the Hub cache

Random weights ("random": full-size architecture, "random-tiny": tiny
architecture) are seeded and need no files; they are for timing and tests, and
their output is not a lip-sync.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download, try_to_load_from_cache
from safetensors import safe_open

from latentsync_cli.constants import WEIGHT_CHOICES
from latentsync_cli.errors import UsageError, WeightsError
from latentsync_cli.models.checkpoint import build_random_unet, compare_state_shapes, expected_state_shapes, load_unet
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import VAE_FILES, VAE_HUB_ID, load_vae, random_vae, sd_vae_ft_mse_config, tiny_vae_config
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, load_whisper_encoder, random_audio_encoder

LATENTSYNC_REPO = "ByteDance/LatentSync-1.6"
UNET_FILENAME = "latentsync_unet.pt"
UNET_SAFETENSORS_FILENAME = "latentsync_unet.safetensors"
WHISPER_FILENAME = "whisper/tiny.pt"
VAE_FOLDER = "vae"
DOWNLOAD_COMMAND = "latentsync models download"
HUB_PROBE_TIMEOUT_S = 10  # one request, no retries: a sandbox without network fails in well under a second

FULL_RESOLUTION = 512
TINY_RESOLUTION = 256  # tiny VAE latents are 32x32

SOURCE_HUB = "hub-cache"
SOURCE_CHECKPOINT_DIR = "checkpoint-dir"


# --------------------------------------------------------------------------- where the files are


@dataclass(frozen=True)
class WeightFile:
    """One weight file: which repo file it is and where it is (or would be) on this machine."""

    role: str  # "unet", "whisper", "vae-config", "vae-weights"
    repo_id: str
    filename: str  # path inside the Hub repo
    path: Path
    present: bool
    source: str  # SOURCE_HUB or SOURCE_CHECKPOINT_DIR

    def describe(self) -> str:
        """Its path in a checkpoint dir, or repo/filename on the Hub."""
        return str(self.path) if self.source == SOURCE_CHECKPOINT_DIR else f"{self.repo_id}/{self.filename}"

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.present else None

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "repo_id": self.repo_id,
            "filename": self.filename,
            "path": str(self.path),
            "present": self.present,
            "size_bytes": self.size_bytes,
            "source": self.source,
        }


@dataclass(frozen=True)
class WeightPaths:
    unet: Path
    whisper: Path
    vae: Path  # a folder with config.json and diffusion_pytorch_model.safetensors


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg_cache).expanduser() / "huggingface" / "hub"


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as set now (None: huggingface_hub's default, https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_file(role: str, repo_id: str, filename: str) -> WeightFile:
    cache_dir = hub_cache_dir()
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
    if isinstance(cached, str):
        return WeightFile(role, repo_id, filename, Path(cached), True, SOURCE_HUB)
    repo_folder = "models--" + repo_id.replace("/", "--")
    would_be = cache_dir / repo_folder / "snapshots" / "<revision>" / filename
    return WeightFile(role, repo_id, filename, would_be, False, SOURCE_HUB)


def _local_file(role: str, repo_id: str, folder: Path, filename: str) -> WeightFile:
    path = folder / filename
    return WeightFile(role, repo_id, filename, path, path.is_file(), SOURCE_CHECKPOINT_DIR)


def find_weight_files(checkpoint_dir: Path | None = None) -> list[WeightFile]:
    """Where each weight file is, or would be, on this machine. Never touches the network."""
    files = []
    if checkpoint_dir is None:
        files.append(_hub_file("unet", LATENTSYNC_REPO, UNET_FILENAME))
        files.append(_hub_file("whisper", LATENTSYNC_REPO, WHISPER_FILENAME))
    else:
        unet = _local_file("unet", LATENTSYNC_REPO, checkpoint_dir, UNET_FILENAME)
        safetensors_unet = _local_file("unet", LATENTSYNC_REPO, checkpoint_dir, UNET_SAFETENSORS_FILENAME)
        files.append(safetensors_unet if safetensors_unet.present and not unet.present else unet)
        files.append(_local_file("whisper", LATENTSYNC_REPO, checkpoint_dir, WHISPER_FILENAME))

    vae_dir = checkpoint_dir / VAE_FOLDER if checkpoint_dir is not None else None
    for role, filename in zip(("vae-config", "vae-weights"), VAE_FILES):
        if vae_dir is not None and vae_dir.is_dir():
            files.append(_local_file(role, VAE_HUB_ID, vae_dir, filename))
        else:
            files.append(_hub_file(role, VAE_HUB_ID, filename))
    return files


def _paths(files: list[WeightFile]) -> WeightPaths:
    by_role = {f.role: f.path for f in files}
    return WeightPaths(unet=by_role["unet"], whisper=by_role["whisper"], vae=by_role["vae-config"].parent)


def _missing_summary(files: list[WeightFile]) -> str:
    """e.g. 'ByteDance/LatentSync-1.6: latentsync_unet.pt, whisper/tiny.pt; stabilityai/sd-vae-ft-mse'."""
    parts = []
    for repo_id in dict.fromkeys(f.repo_id for f in files):
        names = [f.filename for f in files if f.repo_id == repo_id]
        parts.append(f"{repo_id}: {', '.join(names)}" if repo_id == LATENTSYNC_REPO else repo_id)
    return "; ".join(parts)


def _cannot_download(missing: list[WeightFile], reason: str) -> WeightsError:
    return WeightsError(
        f"model weights not found ({_missing_summary(missing)}) and they cannot be downloaded here ({reason}): "
        f"run `{DOWNLOAD_COMMAND}` on a machine with network access, or pass --checkpoint-dir DIR"
    )


def _hub_unreachable_reason(repo_id: str, filename: str) -> str | None:
    """Why the Hub cannot serve `filename` now, or None when it can. One request with a short timeout."""
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=hub_endpoint()), timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as error:  # httpx, requests and huggingface_hub each raise their own types
        first_line = str(error).splitlines()[0] if str(error) else ""
        return f"{repo_id} is unreachable: {type(error).__name__}: {first_line}".rstrip(": ")
    return None


def locate_weights(checkpoint_dir: Path | None = None, allow_download: bool = True) -> WeightPaths:
    """Find the real weights: in `checkpoint_dir`, or in the Hub cache, downloading what is missing.

    Raises WeightsError (one line: what is missing and the command that fetches it) when they
    are not here and cannot be downloaded (HF_HUB_OFFLINE, no network, allow_download False).
    """
    if checkpoint_dir is not None and not Path(checkpoint_dir).is_dir():
        raise WeightsError(f"--checkpoint-dir {checkpoint_dir} is not a folder")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    files = find_weight_files(checkpoint_dir)

    missing_local = [f for f in files if not f.present and f.source == SOURCE_CHECKPOINT_DIR]
    if missing_local:
        names = ", ".join(str(f.path) for f in missing_local)
        raise WeightsError(
            f"{names} not found: fetch the weights with `{DOWNLOAD_COMMAND} --checkpoint-dir {checkpoint_dir}` "
            "or pass the folder that holds them"
        )

    missing = [f for f in files if not f.present]
    if not missing:
        return _paths(files)
    if not allow_download:
        raise _cannot_download(missing, "downloads are disabled")
    if hub_offline():
        raise _cannot_download(missing, "HF_HUB_OFFLINE is set")
    reason = _hub_unreachable_reason(missing[0].repo_id, missing[0].filename)
    if reason is not None:
        raise _cannot_download(missing, reason)
    for weight_file in missing:
        _download_to_cache(weight_file)
    return _paths(find_weight_files(checkpoint_dir))


def _download_to_cache(weight_file: WeightFile) -> None:
    try:
        hf_hub_download(
            weight_file.repo_id, weight_file.filename, cache_dir=str(hub_cache_dir()), endpoint=hub_endpoint()
        )
    except Exception as error:  # network, disk and Hub errors all end the same way for the user
        raise WeightsError(
            f"downloading {weight_file.repo_id}/{weight_file.filename} failed ({type(error).__name__}: {error}); "
            f"run `{DOWNLOAD_COMMAND}` again"
        ) from error


def download_weights(checkpoint_dir: Path | None = None) -> WeightPaths:
    """`latentsync models download`: fetch every file into the Hub cache, or into `checkpoint_dir`."""
    if hub_offline():
        raise WeightsError(f"HF_HUB_OFFLINE is set: unset it to run `{DOWNLOAD_COMMAND}`")
    reason = _hub_unreachable_reason(LATENTSYNC_REPO, WHISPER_FILENAME)
    if reason is not None:
        raise WeightsError(
            f"cannot download the weights ({reason}): run `{DOWNLOAD_COMMAND}` on a machine with network access "
            "and copy the folder here (--checkpoint-dir DIR)"
        )
    downloads = [
        (LATENTSYNC_REPO, [UNET_FILENAME, WHISPER_FILENAME], checkpoint_dir),
        (VAE_HUB_ID, list(VAE_FILES), Path(checkpoint_dir) / VAE_FOLDER if checkpoint_dir else None),
    ]
    for repo_id, filenames, local_dir in downloads:
        try:
            if local_dir is None:
                snapshot_download(
                    repo_id, allow_patterns=filenames, cache_dir=str(hub_cache_dir()), endpoint=hub_endpoint()
                )
            else:
                snapshot_download(repo_id, allow_patterns=filenames, local_dir=str(local_dir), endpoint=hub_endpoint())
        except Exception as error:  # network, disk and Hub errors all end the same way for the user
            raise WeightsError(
                f"downloading {repo_id} failed ({type(error).__name__}: {error}); run `{DOWNLOAD_COMMAND}` again"
            ) from error
    return locate_weights(Path(checkpoint_dir) if checkpoint_dir else None, allow_download=False)


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


def load_models(
    weights: str = "auto",
    checkpoint_dir: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> ModelBundle:
    """Build the UNet, VAE and audio encoder for `weights` ("auto"/"checkpoint", "random", "random-tiny")."""
    if weights in ("auto", "checkpoint"):
        return _load_real_models(checkpoint_dir, device, dtype)
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

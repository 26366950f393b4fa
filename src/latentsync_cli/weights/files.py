"""Where the model weight files are, whether they are here, and how they are downloaded.

Real weights come from the Hugging Face Hub (downloaded once into its normal
cache, which honours HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE) or from a
`--checkpoint-dir DIR` laid out like the Hub repo:

    DIR/latentsync_unet.pt        (or DIR/latentsync_unet.safetensors)
    DIR/whisper/tiny.pt
    DIR/vae/config.json           optional: without DIR/vae/ the VAE comes
    DIR/vae/diffusion_pytorch_model.safetensors   from the Hub cache

This module imports only the standard library at import time, and
huggingface_hub inside the functions that need it, so a job can learn that its
weights are missing in a fraction of a second, before torch and diffusers are
imported. Loading and checking the tensors is models/weights.py.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from latentsync_cli.errors import WeightsError
from latentsync_cli.weights.proxy_files import PROXY_WEIGHTS, check_proxy_files

LATENTSYNC_REPO = "ByteDance/LatentSync-1.6"
UNET_FILENAME = "latentsync_unet.pt"
UNET_SAFETENSORS_FILENAME = "latentsync_unet.safetensors"
WHISPER_FILENAME = "whisper/tiny.pt"
VAE_HUB_ID = "stabilityai/sd-vae-ft-mse"
VAE_FOLDER = "vae"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
DOWNLOAD_COMMAND = "latentsync models download"

# The --weights choices that need the real files (the others are seeded random weights).
REAL_WEIGHTS = ("auto", "checkpoint")

# The reachability probe is one HEAD request, no retries, and gets this long in all, DNS included.
HUB_PROBE_TIMEOUT_S = 2.0

SOURCE_HUB = "hub-cache"
SOURCE_CHECKPOINT_DIR = "checkpoint-dir"


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


# --------------------------------------------------------------------------- the environment


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
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value.

    Read from the environment now: huggingface_hub reads it once, when it is imported.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# --------------------------------------------------------------------------- where the files are


def _hub_file(role: str, repo_id: str, filename: str) -> WeightFile:
    from huggingface_hub import try_to_load_from_cache

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


# --------------------------------------------------------------------------- can the Hub serve them


def _probe_into(url: str, outcome: list) -> None:
    """HEAD `url` once and append None (it answered) or the exception it raised to `outcome`."""
    from huggingface_hub import get_hf_file_metadata

    try:
        get_hf_file_metadata(url, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as error:  # httpx, requests and huggingface_hub each raise their own types
        outcome.append(error)
    else:
        outcome.append(None)


def _hub_unreachable_reason(repo_id: str, filename: str) -> str | None:
    """Why the Hub cannot serve `filename` now, or None when it can.

    get_hf_file_metadata does not retry, but its timeout does not cover the DNS lookup: with a
    resolver that never answers, getaddrinfo blocks for resolv.conf's timeout x attempts, for
    each address family (tens of seconds). So the request runs in a daemon thread that is left
    behind when HUB_PROBE_TIMEOUT_S is up.
    """
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, filename, endpoint=hub_endpoint())
    outcome: list = []
    probe = threading.Thread(target=_probe_into, args=(url, outcome), name="hub-probe", daemon=True)
    probe.start()
    probe.join(HUB_PROBE_TIMEOUT_S)
    if not outcome:
        return f"{repo_id} is unreachable: no answer within {HUB_PROBE_TIMEOUT_S:g} s"
    error = outcome[0]
    if error is None:
        return None
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"{repo_id} is unreachable: {type(error).__name__}: {first_line}".rstrip(": ")


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


# --------------------------------------------------------------------------- finding or fetching them


def _checkpoint_folder(checkpoint_dir: Path | None) -> Path | None:
    if checkpoint_dir is None:
        return None
    if not Path(checkpoint_dir).is_dir():
        raise WeightsError(f"--checkpoint-dir {checkpoint_dir} is not a folder")
    return Path(checkpoint_dir)


def _files_and_downloads(checkpoint_dir: Path | None, allow_download: bool) -> tuple[list[WeightFile], list]:
    """Every weight file, and the missing ones the Hub will serve now.

    Raises WeightsError when a file is missing and cannot be downloaded: absent from the
    checkpoint dir, downloads disabled, HF_HUB_OFFLINE (checked before any network call),
    or the Hub unreachable.
    """
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
        return files, []
    if not allow_download:
        raise _cannot_download(missing, "downloads are disabled")
    if hub_offline():
        raise _cannot_download(missing, "HF_HUB_OFFLINE is set")
    reason = _hub_unreachable_reason(missing[0].repo_id, missing[0].filename)
    if reason is not None:
        raise _cannot_download(missing, reason)
    return files, missing


def check_weights_available(weights: str, checkpoint_dir: Path | None) -> None:
    """Raise the WeightsError that loading `weights` would raise for absent files, without loading anything.

    For "auto"/"checkpoint": returns when the files are here or the Hub can serve them now; raises
    when they are missing and HF_HUB_OFFLINE is set, the Hub is unreachable (one probe of at most
    HUB_PROBE_TIMEOUT_S), or the checkpoint dir lacks them. Random weights need no files; the
    proxy's ship inside the package.
    """
    if weights == PROXY_WEIGHTS:
        check_proxy_files()
    if weights not in REAL_WEIGHTS:
        return
    _files_and_downloads(_checkpoint_folder(checkpoint_dir), allow_download=True)


def locate_weights(checkpoint_dir: Path | None = None, allow_download: bool = True) -> WeightPaths:
    """Find the real weights: in `checkpoint_dir`, or in the Hub cache, downloading what is missing.

    Raises WeightsError (one line: what is missing and the command that fetches it) when they
    are not here and cannot be downloaded (HF_HUB_OFFLINE, no network, allow_download False).
    """
    checkpoint_dir = _checkpoint_folder(checkpoint_dir)
    files, downloads = _files_and_downloads(checkpoint_dir, allow_download)
    if not downloads:
        return _paths(files)
    for weight_file in downloads:
        _download_to_cache(weight_file)
    return _paths(find_weight_files(checkpoint_dir))


def _download_to_cache(weight_file: WeightFile) -> None:
    from huggingface_hub import hf_hub_download

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
    from huggingface_hub import snapshot_download

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

"""The facts of the shipped proxy model that need no torch: where its files are, and what it is.

`--weights proxy` is a small LatentSync trained on this project's three demo
clips (scripts/train_proxy.py, latentsync_cli.train): the tiny UNet
architecture, a small VAE and the Whisper-tiny architecture with seeded random
weights, at 128 px faces. Its weights ship inside the package (fp16 safetensors,
a few MB); the audio encoder is not shipped but rebuilt from its seed.

This module imports only the standard library, so a job learns that the proxy's
files are missing before torch is imported (as models/weight_files.py does for
the real weights). Loading them is weights/proxy.py.
"""

from __future__ import annotations

from pathlib import Path

from latentsync_cli.errors import WeightsError

PROXY_WEIGHTS = "proxy"  # the --weights choice
PROXY_DIR = Path(__file__).resolve().parent / "proxy_weights"
UNET_FILE = "unet.safetensors"
VAE_FILE = "vae.safetensors"
MANIFEST_FILE = "proxy.json"  # configs, the audio encoder's seed and digest, how it was trained
PROXY_FILES = (UNET_FILE, VAE_FILE, MANIFEST_FILE)

# Said by every output and report made with the proxy.
PROXY_CAVEAT = "a small model trained on three clips; its quality is not LatentSync 1.6's"


def proxy_description() -> str:
    return f"proxy weights ({PROXY_CAVEAT})"


def check_proxy_files(folder: Path = PROXY_DIR) -> None:
    """WeightsError naming the proxy files this installation lacks (a damaged install)."""
    missing = [name for name in PROXY_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(
            f"the proxy model's {', '.join(missing)} not found in {folder}: "
            "reinstall latentsync (`pip install --force-reinstall latentsync`)"
        )

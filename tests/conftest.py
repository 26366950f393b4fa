"""Shared test fixtures, the one place where a fixture used by more than one test module is declared.

Golden fixtures (outputs of upstream LatentSync run on CPU) are read from
`../shared/reference/golden`, beside the repository, and never copied in. When
they are absent the golden tests skip, unless LATENTSYNC_REQUIRE_GOLDEN=1 (set
by .ci/run), in which case they fail.

Helpers that are not fixtures: `FrameList` and `differing` here, the ways to
run the CLI (in this process, or as a subprocess) in clitools.py. No test module
imports another test module.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from latentsync_cli.cpu_threads import available_cores

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
GOLDEN_DIR = SHARED_DIR / "reference" / "golden"
REFERENCE_DIR = SHARED_DIR / "reference"
MEDIA_DIR = SHARED_DIR / "media"


def _require_or_skip(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("LATENTSYNC_REQUIRE_GOLDEN") == "1":
        pytest.fail(message + " (LATENTSYNC_REQUIRE_GOLDEN=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The upstream golden fixtures folder."""
    return _require_or_skip(GOLDEN_DIR, "golden fixtures")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference folder with the state-dict manifests."""
    return _require_or_skip(REFERENCE_DIR / "unet_stage2_512_state_dict.tsv", "reference manifests").parent


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The demo clips; optional (tests that need them skip without them)."""
    if not (MEDIA_DIR / "demo1_video.mp4").exists():
        pytest.skip(f"demo media not found at {MEDIA_DIR}")
    return MEDIA_DIR


# --- the cores each test process takes -----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    share_the_cores()


def share_the_cores() -> None:
    """In each of N parallel test processes (pytest-xdist), torch and the CLI processes a test starts use
    1/N of the cores. Two processes each running torch on every core spend most of their time waiting for
    each other: a test that takes 9 s on one thread beside a busy process took 24 s on two.

    A kernel's numbers can depend on its thread count, so every run a test compares gets the same count:
    set here before any test runs, also with one process (-n 0), it is the one the CLI processes inherit
    and the in-process runs use (test_cluster makes its reference with the Ray workers' count)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = str(max(1, available_cores() // workers))
    os.environ["OMP_NUM_THREADS"] = threads  # read by torch when it is imported, here and in every process started
    torch = sys.modules.get("torch")  # not imported here: the xdist controller, which runs no test, never needs it
    if torch is not None:
        torch.set_num_threads(int(threads))


# --- the order the test processes take the files in --------------------------------------------

# The e2e golden file's model runs take about 6 minutes, longer than any other file: taken
# first, no test process waits for it at the end (pyproject.toml: a file's tests stay on one process).
LONGEST_FILE = "test_golden_e2e.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name != LONGEST_FILE)  # a stable sort: the rest keep their order


# --- the user's files stay out of every test ---------------------------------------------------


def isolate_user_dirs(patch: pytest.MonkeyPatch, home: Path) -> None:
    """Config, cache and data folders under `home`, no $LATENTSYNC_PRESETS: no user file is read or written."""
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        patch.setenv(name, str(home / name.lower()))
    patch.setenv("LATENTSYNC_CACHE_DIR", str(home / "latentsync-cache"))
    patch.delenv("LATENTSYNC_PRESETS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def isolated_session_dirs(tmp_path_factory):
    """For the whole session, so that module fixtures (set up before any function-scoped fixture, and some
    of them run the CLI) never see the real ~/.config or $LATENTSYNC_PRESETS either."""
    with pytest.MonkeyPatch.context() as patch:
        isolate_user_dirs(patch, tmp_path_factory.mktemp("session-user-dirs"))
        yield


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Each test its own empty user folders (a test may write a preset override or a benchmark cache)."""
    isolate_user_dirs(monkeypatch, tmp_path_factory.mktemp("user-dirs"))


# --- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models():
    """`--weights random-tiny`'s bundle (UNet, VAE, Whisper encoder), seeded; one per test module, because
    tests change the models' state (slicing, the memory ladder)."""
    import torch

    from latentsync_cli.weights.load import load_models

    return load_models("random-tiny", None, "cpu", torch.float32, seed=0)


@pytest.fixture(scope="module")
def tiny_unet():
    """The golden fixtures' tiny architecture with seeded random weights."""
    import torch

    from latentsync_cli.models.unet_config import UNetConfig
    from latentsync_cli.weights.checkpoint import build_random_unet

    return build_random_unet(UNetConfig.tiny(), "cpu", torch.float32, seed=0)


@pytest.fixture(scope="module")
def small_unet():
    """Two levels instead of four: the same kinds of blocks (cross-attention, motion modules, skips) with a
    quarter of the Python work, which is what torch.compile tracing and CPU tests pay for. Every weight is
    nudged off its initial value (conv_out etc. start at zero, and every step would look alike)."""
    import torch

    from latentsync_cli.models.unet import UNet3DConditionModel
    from latentsync_cli.models.unet_config import UNetConfig

    config = replace(
        UNetConfig.tiny(),
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        motion_module_resolutions=(1, 2),
    )
    torch.manual_seed(0)
    unet = UNet3DConditionModel(config).eval()
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return unet


@pytest.fixture(scope="module")
def golden_unet(golden_dir):
    """The golden fixtures' tiny UNet, loaded from upstream's checkpoint (README section 1)."""
    import json

    import torch

    from latentsync_cli.models.unet_config import UNetConfig
    from latentsync_cli.weights.checkpoint import load_unet

    config = UNetConfig.from_dict(json.loads((golden_dir / "unet_tiny_config.json").read_text()))
    return load_unet(golden_dir / "unet_tiny_checkpoint.pt", config, "cpu", torch.float32)


@pytest.fixture(scope="module")
def align_golden(golden_dir) -> dict[str, np.ndarray]:
    """Upstream's AlignRestore on five demo frames (README section 4)."""
    from safetensors.numpy import load_file

    return load_file(str(golden_dir / "align_restore.safetensors"))


# --- weight folders ----------------------------------------------------------------------------

UNET_KEY = "conv_in.weight"  # a key every UNet checkpoint has


def write_tiny_checkpoint_dir(folder: Path) -> Path:
    """A folder laid out like the Hub repo, holding tiny-architecture weights in the real file formats."""
    import torch

    from latentsync_cli.models.unet import UNet3DConditionModel
    from latentsync_cli.models.unet_config import UNetConfig
    from latentsync_cli.models.vae import random_vae, tiny_vae_config
    from latentsync_cli.models.whisper import AudioEncoder, WhisperDims

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet3DConditionModel(UNetConfig.tiny())
    torch.save({"global_step": 0, "state_dict": unet.state_dict()}, folder / "latentsync_unet.pt")

    encoder = AudioEncoder(WhisperDims.tiny())
    whisper_state = {"encoder." + key: value.half() for key, value in encoder.state_dict().items()}
    whisper_state["decoder.token_embedding.weight"] = torch.zeros(4, 384, dtype=torch.float16)  # ignored by verify
    (folder / "whisper").mkdir(exist_ok=True)
    torch.save({"dims": WhisperDims.tiny().to_dict(), "model_state_dict": whisper_state}, folder / "whisper" / "tiny.pt")

    random_vae(tiny_vae_config(), seed=0).save_pretrained(folder / "vae")
    return folder


@pytest.fixture(scope="module")
def tiny_dir_template(tmp_path_factory) -> Path:
    return write_tiny_checkpoint_dir(tmp_path_factory.mktemp("weights") / "checkpoints")


@pytest.fixture
def tiny_dir(tiny_dir_template, tmp_path) -> Path:
    """A fresh copy that a test may break."""
    return Path(shutil.copytree(tiny_dir_template, tmp_path / "checkpoints"))


@pytest.fixture
def offline_empty_hub(monkeypatch, tmp_path) -> Path:
    """HF_HUB_OFFLINE=1 and an empty HF_HOME."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# --- helpers -----------------------------------------------------------------------------------


class FrameList:
    """A frame sink (pipeline.windows.FrameSink) that keeps the output frames in memory, before any encoding."""

    def __init__(self):
        self.frames: list = []
        self.finished = self.aborted = False

    def write(self, frame) -> None:
        self.frames.append(frame.copy())

    def end_of_frames(self) -> None:
        pass

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


def differing(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, float]:
    """Max abs difference and fraction of values that differ (uint8 images)."""
    diff = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
    return int(diff.max()), float((diff > 0).mean())

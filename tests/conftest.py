"""Shared test fixtures.

Golden fixtures (outputs of upstream LatentSync run on CPU) are read from
`../shared/reference/golden`, beside the repository, and never copied in. When
they are absent the golden tests skip, unless LATENTSYNC_REQUIRE_GOLDEN=1 (set
by .ci/run), in which case they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's real config, cache and benchmark files."""
    home = tmp_path_factory.mktemp("user-dirs")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("LATENTSYNC_CACHE_DIR", str(home / "latentsync-cache"))
    monkeypatch.delenv("LATENTSYNC_PRESETS", raising=False)


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

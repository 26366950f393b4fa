"""Windows of frames, the randomness of each window, and where finished windows are kept.

A window is `settings.window` consecutive output frames (the last one may be
shorter). Its randomness depends only on (seed, window index), so a resumed
job that skips finished windows generates the later ones exactly as an
uninterrupted job would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class WindowInput:
    """One window after decoding and alignment (made by the producer thread)."""

    index: int
    first_frame: int  # output frame number of frames[0]
    frames: list[np.ndarray]  # RGB uint8 (H, W, 3), every frame of the window
    has_face: np.ndarray  # bool (F,), which frames have a face
    faces: torch.Tensor  # uint8 (n, 3, R, R): the aligned faces of those frames (n = has_face.sum())
    affines: list[np.ndarray]  # (2, 3) frame -> face matrices, one per face
    # int (n,): for each face, the first face of the window with the same crop (a repeated picture,
    # VAE-encoded once); arange(n) when every face is new; None: not known, every face is encoded.
    face_sources: np.ndarray | None = None

    @property
    def face_count(self) -> int:
        return int(self.has_face.sum())

    @property
    def face_frame_numbers(self) -> np.ndarray:
        """Output frame numbers of the frames with a face (the audio rows they take)."""
        return self.first_frame + np.flatnonzero(self.has_face)


@dataclass
class WindowOutput:
    """One window's generated faces, on the way to restore and encode."""

    window: WindowInput
    faces: torch.Tensor  # float16 (n, 3, R, R) in [-1, 1], on the CPU (or the model's device, see below)
    ready: torch.cuda.Event | None = None  # set when `faces` or `restored` is still being copied from the GPU
    # The faces already pasted back on the model's device: uint8 (n, H, W, 3) frames, on the CPU.
    restored: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.faces


@runtime_checkable
class WindowStore(Protocol):
    """Finished windows kept between runs (see jobs.WorkDirStore); the pipeline asks before generating."""

    def has(self, index: int) -> bool: ...

    def load(self, index: int) -> dict[str, np.ndarray]:  # {"faces": float16 (n, 3, R, R), "flags": bool (F,)}
        ...

    def save(self, index: int, faces: np.ndarray, flags: np.ndarray) -> None: ...


class NoStore:
    """The default: nothing is kept, nothing is resumed."""

    def has(self, index: int) -> bool:
        return False

    def load(self, index: int) -> dict[str, np.ndarray]:
        raise KeyError(index)

    def save(self, index: int, faces: np.ndarray, flags: np.ndarray) -> None:
        pass


def window_ranges(num_frames: int, window: int) -> list[range]:
    """Output frame numbers of each window: [0, window), [window, 2 window), ..., the last one shorter."""
    return [range(start, min(start + window, num_frames)) for start in range(0, num_frames, window)]


def window_seed(seed: int, index: int) -> int:
    """A 63-bit seed for window `index`, the same on every platform and in every process."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def window_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator that draws window `index`'s VAE samples."""
    return torch.Generator("cpu").manual_seed(window_seed(seed, index))


def shared_noise(seed: int, latent_size: int) -> torch.Tensor:
    """The one initial noise (1, 4, 1, h, w) that every frame of the video starts from, as upstream."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, 4, 1, latent_size, latent_size), generator=generator)


def batches_of_equal_length(windows: list[WindowInput], size: int) -> list[list[WindowInput]]:
    """Consecutive windows with the same face count, at most `size` per batch (they share a UNet call)."""
    batches: list[list[WindowInput]] = []
    for window in windows:
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and last[0].face_count == window.face_count:
            last.append(window)
        else:
            batches.append([window])
    return batches

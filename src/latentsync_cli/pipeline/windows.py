"""What goes into the pipeline and comes out of it: windows of frames, the plan of what to do with
each window, the randomness of each window, and the sink the finished frames go to.

A window is `settings.window` consecutive output frames (the last one may be
shorter). Its randomness depends only on (seed, window index), so a resumed
job that skips finished windows generates the later ones exactly as an
uninterrupted job would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class WindowInput:
    """One window after decoding and alignment (made by the producer thread)."""

    index: int
    first_frame: int  # output frame number of frames[0]
    frames: list[np.ndarray]  # RGB (H, W, 3) uint8, uint16 or float32 (media/pixels.py), every frame of the window
    has_face: np.ndarray  # bool (F,), which frames have a face
    faces: torch.Tensor  # uint8 (n, 3, R, R): the aligned faces of those frames (n = has_face.sum())
    affines: list[np.ndarray]  # (2, 3) frame -> face matrices, one per face
    # int (n,): for each face, the first face of the window with the same crop (a repeated picture,
    # VAE-encoded once); arange(n) when every face is new; None: not known, every face is encoded.
    face_sources: np.ndarray | None = None
    # With window overlap: the first `lead` frames are the previous window's last frames, made again
    # by this window and cross-faded with the previous window's faces (pipeline/overlap_blend.py).
    lead: int = 0

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
    # The faces already pasted back on the model's device: (n, H, W, 3) frames of the frames' dtype, on the CPU.
    restored: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.faces


@dataclass(frozen=True)
class WindowPlan:
    """What the pipeline does with each window, decided by the job layer before it runs.

    A window in `generate` is made by the models; one in `finished` is taken as it
    is (its loader returns float16 (n, 3, R, R) faces, e.g. from a work dir); any
    other window is decoded past and not output (another shard's). Without frames
    (`make_frames` False, a shard) the windows are only made: nothing is pasted back.
    """

    ranges: list[range]  # every window's output frame numbers (window_ranges)
    generate: frozenset[int]
    finished: Mapping[int, Callable[[], np.ndarray]] = field(default_factory=dict)
    make_frames: bool = True
    resumed: int = 0  # windows of this task found already finished (taken, or left as they are)
    overlap: int = 0  # frames each window (but the first) also makes of the previous window

    @classmethod
    def everything(cls, ranges: list[range], overlap: int = 0) -> WindowPlan:
        """Generate every window and make every frame: a job without a work dir."""
        return cls(ranges, frozenset(range(len(ranges))), overlap=overlap)

    @property
    def num_frames(self) -> int:
        return self.ranges[-1].stop if self.ranges else 0

    def made_range(self, index: int) -> range:
        """The frames window `index` is made from: its own, and with overlap the previous window's last ones."""
        own = self.ranges[index]
        return range(max(0, own.start - self.overlap), own.stop)

    def wanted(self, index: int) -> bool:
        return index in self.generate or index in self.finished

    @property
    def last_wanted(self) -> int:
        """The last window with work to do (-1: none); decoding stops after it."""
        return max((index for index in range(len(self.ranges)) if self.wanted(index)), default=-1)


class FrameSink(Protocol):
    """Where the output frames go, in order (media.outputs.OutputWriter writes them with the speech).

    `write` and `end_of_frames` are called from the pipeline's consumer thread,
    `finish` from the calling thread once every frame is written; `abort` on failure.
    """

    def write(self, frame: np.ndarray) -> None: ...

    def end_of_frames(self) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


# on_generated(window index, float16 faces (n, 3, R, R), has_face (F,)): a window the models just made
GeneratedListener = Callable[[int, np.ndarray, np.ndarray], None]


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


@runtime_checkable
class NoiseSource(Protocol):
    """Every random draw of a run: the initial noise, and each window's two VAE posterior draws.

    A posterior sample is mean + std * draw (before the latent scale). Upstream
    draws, per window, the masked faces' draw first, then the whole faces'.
    The tool uses SeededNoise; a test can inject draws recorded from upstream.
    """

    def initial_noise(self, latent_size: int) -> torch.Tensor:
        """float32 (1, 4, 1, h, w) on the CPU, shared by every frame."""
        ...

    def posterior_draws(
        self, window_index: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard normal (masked, reference) draws of `shape` (n, 4, h, w) for window `window_index`."""
        ...


@dataclass(frozen=True)
class SeededNoise:
    """The tool's randomness: the initial noise from `seed`, window k's draws from window_generator(seed, k).

    A window's draws depend only on the seed and its index, so resumed jobs and
    shards make the same video as one uninterrupted run.
    """

    seed: int

    def initial_noise(self, latent_size: int) -> torch.Tensor:
        return shared_noise(self.seed, latent_size)

    def posterior_draws(
        self, window_index: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn on the CPU and moved, as diffusers' DiagonalGaussianDistribution.sample does with a CPU generator.
        generator = window_generator(self.seed, window_index)
        masked = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        reference = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        return masked, reference


def batches_of_equal_length(windows: list[WindowInput], size: int, any_order: bool = False) -> list[list[WindowInput]]:
    """Windows with the same face count, at most `size` per batch (they share a UNet call).

    Consecutive windows only, unless `any_order` (smart batching): then a window joins the
    first open batch of its face count, wherever it stands.
    """
    batches: list[list[WindowInput]] = []
    for window in windows:
        candidates = batches if any_order else batches[-1:]
        fitting = [batch for batch in candidates if len(batch) < size and batch[0].face_count == window.face_count]
        if fitting:
            fitting[0].append(window)
        else:
            batches.append([window])
    return batches

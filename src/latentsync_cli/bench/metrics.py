"""Plain numbers the benchmark reports: speed, cost and fidelity to a reference output.

Frames are uint8 (or float) arrays of shape (H, W, 3) or (H, W); a clip is a
sequence of frames of one shape. Fidelity compares a configuration's output
with the reference output (`normal` mode) of the same input and seed.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

SECONDS_PER_HOUR = 3600.0


# --- speed and cost --------------------------------------------------------------------------


def seconds_per_output_second(wall_s: float, output_s: float) -> float:
    """Wall-clock seconds spent per second of output video (lower is faster)."""
    return wall_s / output_s


def realtime_factor(wall_s: float, output_s: float) -> float:
    """Seconds of output made per wall-clock second (above 1 is faster than real time)."""
    return output_s / wall_s if wall_s > 0 else math.inf


def cost_per_output_minute(seconds_per_second: float, price_per_hour: float) -> float:
    """Dollars of machine time to make one minute of output."""
    return seconds_per_second * 60.0 / SECONDS_PER_HOUR * price_per_hour


def cost_per_videos(seconds_per_second: float, price_per_hour: float, video_s: float, count: int = 100) -> float:
    """Dollars of machine time to make `count` videos of `video_s` seconds each."""
    return seconds_per_second * video_s * count / SECONDS_PER_HOUR * price_per_hour


# --- fidelity --------------------------------------------------------------------------------


def psnr(reference: np.ndarray, candidate: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all values; inf when identical."""
    mse = _mse(reference, candidate)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(reference: np.ndarray, candidate: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two images (colour or grey); 1 when identical."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    _check_same_shape(reference, candidate)
    channel_axis = 2 if reference.ndim == 3 else None
    # skimage's default 7x7 window does not fit very small crops.
    smallest_side = min(reference.shape[0], reference.shape[1])
    window = min(7, smallest_side if smallest_side % 2 == 1 else smallest_side - 1)
    if window < 3:
        raise ValueError(f"images of {reference.shape[:2]} are too small for SSIM (need at least 3x3)")
    return float(
        structural_similarity(reference, candidate, data_range=data_range, channel_axis=channel_axis, win_size=window)
    )


def clip_psnr(reference_frames, candidate_frames, data_range: float = 255.0) -> float:
    """PSNR of two clips from the mean squared error over every frame (not a mean of per-frame dB).

    Summed frame by frame: a clip of 1080p frames in float64 at once would take gigabytes.
    """
    reference_frames, candidate_frames = list(reference_frames), list(candidate_frames)
    if len(reference_frames) != len(candidate_frames) or not reference_frames:
        raise ValueError(f"clips differ in length ({len(reference_frames)} vs {len(candidate_frames)}) or are empty")
    squared_error, values = 0.0, 0
    for reference, candidate in zip(reference_frames, candidate_frames):
        reference = np.asarray(reference, dtype=np.float64)
        candidate = np.asarray(candidate, dtype=np.float64)
        _check_same_shape(reference, candidate)
        squared_error += float(np.sum((reference - candidate) ** 2))
        values += reference.size
    if squared_error == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / (squared_error / values))


def clip_ssim(reference_frames, candidate_frames, data_range: float = 255.0) -> float:
    """Mean per-frame SSIM of two clips of the same length."""
    reference_frames = list(reference_frames)
    candidate_frames = list(candidate_frames)
    if len(reference_frames) != len(candidate_frames) or not reference_frames:
        raise ValueError(f"clips differ in length ({len(reference_frames)} vs {len(candidate_frames)}) or are empty")
    scores = [ssim(a, b, data_range) for a, b in zip(reference_frames, candidate_frames)]
    return float(np.mean(scores))


def temporal_consistency(reference_frames, candidate_frames) -> float:
    """Correlation of frame-to-frame changes between two clips, in [-1, 1].

    1 means the candidate moves exactly when and where the reference moves
    (flicker or lost motion lower it). Two clips that are both completely
    still count as 1.
    """
    reference = np.stack([np.asarray(f, dtype=np.float64) for f in reference_frames])
    candidate = np.stack([np.asarray(f, dtype=np.float64) for f in candidate_frames])
    _check_same_shape(reference, candidate)
    if len(reference) < 2:
        raise ValueError("temporal consistency needs at least two frames")
    reference_changes = np.diff(reference, axis=0).ravel()
    candidate_changes = np.diff(candidate, axis=0).ravel()
    reference_spread = reference_changes.std()
    candidate_spread = candidate_changes.std()
    if reference_spread == 0.0 or candidate_spread == 0.0:
        # No motion in one clip: consistent only if neither moves.
        return 1.0 if reference_spread == candidate_spread else 0.0
    covariance = np.mean(
        (reference_changes - reference_changes.mean()) * (candidate_changes - candidate_changes.mean())
    )
    return float(covariance / (reference_spread * candidate_spread))


def _mse(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    _check_same_shape(reference, candidate)
    return float(np.mean((reference - candidate) ** 2))


def _check_same_shape(reference: np.ndarray, candidate: np.ndarray) -> None:
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")

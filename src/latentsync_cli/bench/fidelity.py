"""How close a configuration's output is to the reference output, measured where the model works: the mouth.

Both videos come from the same input and seed, so the face is in the same
place in both. We find it once, in the reference output, align every frame
of both videos with the same transform (no smoothing, so the transforms are
identical), and compare the aligned faces inside the bounding box of the
generated region of the mouth mask.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from latentsync_cli.bench import metrics
from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.media.video import probe_video, read_frames

COMPARE_RESOLUTION = 256  # aligned face side; enough for the metrics, 4x cheaper than 512


def mouth_box(resolution: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), end-exclusive, of the mask's generated (0) region in an aligned face."""
    rows, columns = np.nonzero(mouth_mask(resolution) < 0.5)
    return int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1


def face_points(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """The three alignment points of the face in each frame (None where no face is found)."""
    points = []
    with MediapipeLandmarks(stride=1) as detector:
        for frame in frames:
            found = detector.detect(frame)
            points.append(None if found is None else found.points)
    return points


def mouth_crops(frames: list[np.ndarray], points: list[np.ndarray | None], resolution: int = COMPARE_RESOLUTION):
    """The mouth box of each aligned face, for the frames that have points."""
    aligner = FaceAligner(resolution, smooth=False)
    top, bottom, left, right = mouth_box(resolution)
    crops = []
    for frame, frame_points in zip(frames, points):
        if frame_points is not None:
            crops.append(aligner.align(frame, frame_points).face[top:bottom, left:right])
    return crops


def read_video_frames(path: Path) -> list[np.ndarray]:
    info = probe_video(path)
    return list(read_frames(path, info.frame_count))


def compare_mouths(reference_crops: list[np.ndarray], candidate_crops: list[np.ndarray]) -> dict:
    """Mouth PSNR (dB, None when identical), SSIM and temporal consistency of two aligned crop sequences."""
    if len(reference_crops) != len(candidate_crops) or not reference_crops:
        raise ValueError(f"cannot compare {len(candidate_crops)} mouth crops with {len(reference_crops)}")
    psnr = metrics.clip_psnr(reference_crops, candidate_crops)
    consistency = metrics.temporal_consistency(reference_crops, candidate_crops) if len(reference_crops) > 1 else 1.0
    return {
        # JSON has no infinity: an identical output is marked as such instead.
        "mouth_psnr": None if math.isinf(psnr) else round(psnr, 3),
        "mouth_ssim": round(metrics.clip_ssim(reference_crops, candidate_crops), 4),
        "temporal_consistency": round(consistency, 4),
        "identical": math.isinf(psnr),
        "frames": len(reference_crops),
    }


class ReferenceOutput:
    """The reference video's frames, face points and mouth crops, computed once and compared against many."""

    def __init__(self, path: Path, resolution: int = COMPARE_RESOLUTION):
        self.resolution = resolution
        frames = read_video_frames(path)
        self.points = face_points(frames)
        if all(points is None for points in self.points):
            raise ValueError(f"no face found in the reference output {path}")
        self.frame_count = len(frames)
        self.crops = mouth_crops(frames, self.points, resolution)

    def compare(self, candidate_path: Path, match_length: bool = False) -> dict:
        """Mouth scores of `candidate_path` against this reference; `match_length`: over the frames both have
        (an input video against an output whose length its speech set)."""
        frames = read_video_frames(candidate_path)
        count = min(len(frames), self.frame_count) if match_length else len(frames)
        if count != self.frame_count and not match_length:
            raise ValueError(f"{candidate_path} has {len(frames)} frames, the reference {self.frame_count}")
        crops = mouth_crops(frames[:count], self.points[:count], self.resolution)
        return compare_mouths(self.crops[:count], crops)

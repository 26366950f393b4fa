"""Face alignment, as upstream's AlignRestore does it.

Three points (left brow, right brow, nose) are mapped onto a fixed template by
a similarity transform (rotation, uniform scale, translation). The frame is
warped into a 420 x 560 crop (at resolution 512), which is then squeezed to
512 x 512. A smoothed nose offset is added to the translation so the crop does
not jitter from frame to frame; that state lasts the whole video.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from latentsync_cli.media.pixels import display_float

# The template lives on a 75 x 100 grid (width x height) and is scaled by
# resolution / 256 * 2.8, giving a 420 x 560 crop at resolution 512.
TEMPLATE_GRID_SIZE = (75, 100)
TEMPLATE_POINTS = ((17.0, 20.0), (58.0, 20.0), (37.5, 40.0))  # left brow, right brow, nose (x, y)
FILL_VALUE = 127.0  # grey where the crop reaches past the frame
NOSE = 2  # index of the nose point
BIAS_KEEP = 0.2  # smoothing: b = 0.2 * b_previous + 0.8 * b_current


@dataclass(frozen=True)
class AlignedFace:
    face: np.ndarray  # uint8 (R, R, 3) RGB, the squeezed crop the model sees
    affine: np.ndarray  # float64 (2, 3): frame pixel (x, y, 1) -> crop pixel


def template_scale(resolution: int) -> float:
    return resolution / 256 * 2.8


def crop_size(resolution: int) -> tuple[int, int]:
    """(width, height) of the crop before the squeeze: (420, 560) at 512.

    Truncated like upstream, so 384 gives (314, 419), not (315, 420).
    """
    scale = template_scale(resolution)
    return int(TEMPLATE_GRID_SIZE[0] * scale), int(TEMPLATE_GRID_SIZE[1] * scale)


def face_template(resolution: int) -> np.ndarray:
    """The three target points in crop pixels, float64 (3, 2)."""
    return np.array(TEMPLATE_POINTS, dtype=np.float64) * template_scale(resolution)


def similarity_transform(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity transform taking `points` onto `template` (Procrustes).

    Returns the (2, 3) matrix and the nose offset used for smoothing: the
    template's nose minus the points' nose, both in normalised coordinates.
    """
    points_centre = points.mean(axis=0)
    template_centre = template.mean(axis=0)
    points_centred = points - points_centre
    template_centred = template - template_centre
    # Unbiased std over all six coordinates, as torch.std computes it upstream.
    points_std = points_centred.std(ddof=1)
    template_std = template_centred.std(ddof=1)
    points_normalised = points_centred / points_std
    template_normalised = template_centred / template_std

    u, _, v_transposed = np.linalg.svd(points_normalised.T @ template_normalised)
    v = v_transposed.T
    rotation = v @ u.T
    if np.linalg.det(rotation) < 0:  # a reflection: flip the last singular direction
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T

    scaled_rotation = (template_std / points_std) * rotation
    translation = template_centre - scaled_rotation @ points_centre
    matrix = np.concatenate([scaled_rotation, translation[:, None]], axis=1)
    nose_offset = template_normalised[NOSE] - points_normalised[NOSE]
    return matrix, nose_offset


def warp_into_crop(frame_rgb: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp the frame into a crop of `size` (width, height): bilinear, grey outside, truncated to uint8.

    OpenCV's pixel-centre convention (pixel i sits at coordinate i) is the one
    kornia uses with align_corners=True, and a constant grey border gives the
    same blend at the frame edge as kornia's fill mode. Only the part of the
    frame the crop can sample is converted to float: a uint16 or float32 frame
    (media/pixels.py) is warped at its own precision, on the 8-bit scale.
    """
    width, height = size
    top, bottom, left, right = _source_region(affine, size, frame_rgb.shape[:2])
    if bottom <= top or right <= left:
        return np.full((height, width, 3), int(FILL_VALUE), dtype=np.uint8)
    region = display_float(frame_rgb[top:bottom, left:right])
    region_affine = affine.copy()
    region_affine[:, 2] += affine[:, :2] @ np.array([left, top], dtype=np.float64)
    crop = cv2.warpAffine(
        region,
        region_affine,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FILL_VALUE, FILL_VALUE, FILL_VALUE),
    )
    return crop.astype(np.uint8)  # truncation, like upstream's .astype(np.uint8) on floats


def _source_region(affine: np.ndarray, size: tuple[int, int], frame_shape: tuple[int, int]):
    """Rows [top, bottom) and columns [left, right) of the frame that the crop samples, with a margin."""
    width, height = size
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    inverse = cv2.invertAffineTransform(affine)
    source = corners @ inverse[:, :2].T + inverse[:, 2]
    margin = 2  # bilinear reads one pixel beyond each sample
    frame_height, frame_width = frame_shape
    left = max(int(np.floor(source[:, 0].min())) - margin, 0)
    right = min(int(np.ceil(source[:, 0].max())) + margin + 1, frame_width)
    top = max(int(np.floor(source[:, 1].min())) - margin, 0)
    bottom = min(int(np.ceil(source[:, 1].max())) + margin + 1, frame_height)
    return top, bottom, left, right


class FaceAligner:
    """Aligns the faces of one video, frame by frame (keeps the smoothing state).

    `align(frame, points)` takes the three points (left brow, right brow, nose
    centre; (x, y) frame pixels) and returns the squeezed face and the affine
    matrix that `restore_face` needs to paste it back. Call `reset()` before
    the frames of another video.
    """

    def __init__(self, resolution: int = 512, smooth: bool = True):
        self.resolution = resolution
        self.smooth = smooth
        self.crop_size = crop_size(resolution)
        self.template = face_template(resolution)
        self.nose_bias: np.ndarray | None = None

    def reset(self) -> None:
        self.nose_bias = None

    def transform(self, points: np.ndarray) -> np.ndarray:
        """The (2, 3) frame -> crop matrix for these points; updates the smoothing state."""
        points = np.asarray(points, dtype=np.float64)
        if points.shape != (3, 2) or not np.isfinite(points).all():
            raise ValueError(f"face points must be a finite (3, 2) array, got shape {points.shape}")
        matrix, nose_offset = similarity_transform(points, self.template)
        if self.smooth:
            if self.nose_bias is not None:
                nose_offset = BIAS_KEEP * self.nose_bias + (1 - BIAS_KEEP) * nose_offset
            self.nose_bias = nose_offset
            # Upstream adds the normalised-coordinate offset to the pixel translation as is.
            matrix[:, 2] += nose_offset
        return matrix

    def align(self, frame_rgb: np.ndarray, points: np.ndarray) -> AlignedFace:
        return self.warp(frame_rgb, self.transform(points))

    def warp(self, frame_rgb: np.ndarray, affine: np.ndarray) -> AlignedFace:
        """The squeezed face for a frame -> crop matrix already found (e.g. read from a stored face track)."""
        crop = warp_into_crop(frame_rgb, affine, self.crop_size)
        face = cv2.resize(crop, (self.resolution, self.resolution), interpolation=cv2.INTER_LANCZOS4)
        return AlignedFace(face=face, affine=affine)

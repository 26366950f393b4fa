"""Paste generated faces back into their frames with torch, on the model's device.

The same steps as restore.py (the OpenCV path), written with tensor ops so
they run where the faces already are and the frames leave the GPU finished:

1. resize each 512 x 512 face to the 420 x 560 crop (bicubic, antialias);
2. sample the crop at every frame pixel of a box around the face, through
   the alignment matrix (bilinear; grey past the crop, as cv2.remap's border);
3. the soft mask: the sampled crop outline, eroded 2 x 2, eroded again by
   2w x 2w and blurred with a (2w + 1) Gaussian, w = sqrt(outline area) // 20;
4. soft * (edge * face) + (1 - soft) * frame, truncated to the frame's integers
   (uint8 or uint16; float32 frames keep floats), written only where soft > 0.

All faces of a batch share one box size, so the warp is one grid_sample
call; faces with the same edge width share the erosion and the blur. Outside
the box the mask is zero, so the frame is copied as it is.

The results differ from the OpenCV path by rounding only: cv2.remap places
its samples on a 1/32 px grid, grid_sample does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentsync_cli.face.align import FILL_VALUE
from latentsync_cli.face.restore import covered_region, resize_faces

# Measured on the 2-core CPU box, 16 faces of 1080 x 1920 frames per call, both in the same
# run: OpenCV 16-27 ms per frame, this code 110-150 ms (5-7x slower; scripts/gpu_check.sh's
# restore_parity step prints both). So the CPU keeps the OpenCV paste.
CPU_RESTORE_BACKEND = "opencv"
TORCH_WHITE = {torch.uint8: 255.0, torch.uint16: 65535.0}  # the largest sample of an integer frame


def restore_backend_for(device_type: str) -> str:
    """"torch" where the faces come from a GPU (CUDA, MPS), "opencv" on the CPU (faster there)."""
    return CPU_RESTORE_BACKEND if device_type == "cpu" else "torch"


@dataclass(frozen=True)
class Boxes:
    """One box size (height, width) for all faces of a batch, and where each box sits in its frame."""

    height: int
    width: int
    origins: np.ndarray  # int64 (n, 2): (left, top) of each box, in frame pixels
    has_face: np.ndarray  # bool (n,): False where the crop does not touch the frame at all


def restore_faces_torch(frames: torch.Tensor, faces: torch.Tensor, affines) -> torch.Tensor:
    """Blend faces (n, 3, R, R) in [-1, 1] into frames (n, H, W, 3) uint8, uint16 or float32; returns new frames.

    `affines` are the aligner's (2, 3) frame -> crop matrices: an (n, 2, 3)
    array or tensor, or a list of arrays (kept on the host: they only shape
    the sampling grid). The result is on the frames' device.
    """
    affines = np.asarray(affines.cpu() if isinstance(affines, torch.Tensor) else affines, dtype=np.float64)
    affines = affines.reshape(-1, 2, 3)
    if not (len(frames) == len(faces) == len(affines)):
        raise ValueError(f"need as many frames, faces and affines, got {len(frames)}, {len(faces)}, {len(affines)}")
    result = frames.clone()
    if len(frames) == 0:
        return result
    crops = resize_faces(faces.to(frames.device))
    boxes = face_boxes(affines, tuple(crops.shape[-2:]), tuple(frames.shape[1:3]))
    if not boxes.has_face.any():
        return result
    kept = np.flatnonzero(boxes.has_face)
    face, outline = warp_crops(crops[torch.from_numpy(kept).to(crops.device)], affines[kept], boxes, kept)
    originals = torch.stack([_box_of(frames[index], boxes, index) for index in kept]).permute(0, 3, 1, 2)
    blended = blend(face_samples(face, frames.dtype), outline, originals)
    for position, index in enumerate(kept):
        _box_of(result[index], boxes, index)[...] = blended[position].permute(1, 2, 0)
    return result


def face_boxes(affines: np.ndarray, crop_shape: tuple[int, int], frame_shape: tuple[int, int]) -> Boxes:
    """The smallest box that holds every face's covered region, placed over each one inside its frame."""
    regions = np.array([covered_region(affine, crop_shape, frame_shape) for affine in affines])
    top, bottom, left, right = regions.T
    has_face = (bottom > top) & (right > left)
    height = int((bottom - top)[has_face].max(initial=1))
    width = int((right - left)[has_face].max(initial=1))
    frame_height, frame_width = frame_shape
    # A box larger than its region only adds zero mask, so the result is the same.
    origins = np.stack([np.minimum(left, frame_width - width), np.minimum(top, frame_height - height)], axis=1)
    return Boxes(height, width, origins.astype(np.int64), has_face)


def warp_crops(crops: torch.Tensor, affines: np.ndarray, boxes: Boxes, indices: np.ndarray):
    """Sample the crops (n, 3, h, w) at the box pixels.

    Returns the face (n, 3, bh, bw) as display values in [0, 1] and the crop outline (n, 1, bh, bw).
    """
    crop_height, crop_width = crops.shape[-2:]
    # grid_sample with align_corners=True puts pixel i at i, as OpenCV does, in coordinates
    # normalised to [-1, 1]; the box origin is folded into the offset in float64.
    scale = np.array([2.0 / (crop_width - 1), 2.0 / (crop_height - 1)])
    origins = boxes.origins[indices].astype(np.float64)
    offsets = (affines[:, :, :2] @ origins[:, :, None])[:, :, 0] + affines[:, :, 2]
    coefficients = np.concatenate([affines[:, :, :2], offsets[:, :, None]], axis=2) * scale[None, :, None]
    coefficients[:, :, 2] -= 1.0
    coefficients = torch.tensor(coefficients, dtype=torch.float32, device=crops.device)
    columns = torch.arange(boxes.width, dtype=torch.float32, device=crops.device)[None, None, :, None]
    rows = torch.arange(boxes.height, dtype=torch.float32, device=crops.device)[None, :, None, None]
    grid = (
        coefficients[:, None, None, :, 0] * columns
        + coefficients[:, None, None, :, 1] * rows
        + coefficients[:, None, None, :, 2]
    )
    ones = torch.ones_like(crops[:, :1])
    crops_and_ones = torch.cat([crops, ones], dim=1)
    sampled = F.grid_sample(crops_and_ones, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    face, outline = sampled[:, :3], sampled[:, 3:]
    # Zero padding weighted by the outline; the rest of each sample is the grey border.
    face = face + (1.0 - outline) * FILL_VALUE
    face = (face * 0.5 + 0.5).clamp_(0.0, 1.0)
    return face, outline


def face_samples(face: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Display values in [0, 1] as samples of frames of `dtype` (media/pixels.py's from_display, in torch)."""
    if dtype == torch.float32:  # linear light through the sRGB curve
        return torch.where(face <= 0.04045, face / 12.92, ((face + 0.055) / 1.055) ** 2.4)
    return face * TORCH_WHITE[dtype]


def blend(face: torch.Tensor, outline: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """soft * (edge * face) + (1 - soft) * original, per box (n, 3, bh, bw), in the originals' dtype:
    truncated for integers, like upstream; where soft is 0 the original is kept as it is."""
    edge = erode(outline, 1, 0)  # 2 x 2 anchored at its centre: itself and its upper/left neighbours
    areas = edge.double().sum(dim=(1, 2, 3)).tolist()  # the one host sync of a batch
    edge_widths = np.array([int(area**0.5) // 20 for area in areas])
    soft = edge.clone()
    for width in np.unique(edge_widths):
        if width == 0:
            continue
        group = torch.from_numpy(np.flatnonzero(edge_widths == width)).to(edge.device)
        centre = erode(edge[group], int(width), int(width) - 1)
        soft[group] = gaussian_blur(centre, int(width))
    blended = face * edge * soft + originals.float() * (1.0 - soft)
    return torch.where(soft > 0, blended.to(originals.dtype), originals)


def erode(mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Minimum over the window [-before, after] in both axes; pixels past the edge are ignored, as by cv2.erode."""
    size = before + after + 1
    negated = F.pad(-mask, (before, after, before, after), value=float("-inf"))
    negated = F.max_pool2d(negated, (1, size), stride=1)  # a rectangle is separable: rows, then columns
    return -F.max_pool2d(negated, (size, 1), stride=1)


def gaussian_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """cv2.GaussianBlur with a (2r + 1) square kernel, OpenCV's sigma for that size and reflect-101 borders."""
    size = 2 * radius + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    taps = np.exp(-((np.arange(size) - radius) ** 2) / (2 * sigma**2))
    taps = torch.tensor(taps / taps.sum(), dtype=torch.float32, device=mask.device)
    # torch's "reflect" is OpenCV's reflect-101; it needs a box larger than the radius,
    # which any face whose edge is this wide has (tiny slivers fall back to replicate).
    mode = "reflect" if min(mask.shape[-2:]) > radius else "replicate"
    padded = F.pad(mask, (radius, radius, radius, radius), mode=mode)
    padded = F.conv2d(padded, taps.view(1, 1, 1, size))
    return F.conv2d(padded, taps.view(1, 1, size, 1))


def _box_of(frame: torch.Tensor, boxes: Boxes, index: int) -> torch.Tensor:
    left, top = boxes.origins[index]
    return frame[top : top + boxes.height, left : left + boxes.width]

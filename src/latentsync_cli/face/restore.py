"""Paste a generated face back into its frame, as upstream's restore_img does.

The 512 x 512 face is resized back to the crop shape (560 x 420 at 512),
warped into the frame with the inverse of the alignment matrix and blended
with a soft mask: the warped crop outline, eroded and blurred so the seam
fades out over about 1/20 of the face size.

All the work happens on the frame region the crop covers (plus a margin);
outside it the mask is zero, so the result equals working on the whole frame.
Frames are uint8, uint16 or float32 RGB (media/pixels.py): the face is blended in
at the frame's own precision, and a pixel whose blend weight is 0 is never
written, so it keeps its stored value bit for bit.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from latentsync_cli.face.align import FILL_VALUE, crop_size
from latentsync_cli.media.pixels import from_display, store

REGION_MARGIN = 4  # px of zero mask kept around the crop so erosion and blur see the same borders
MAX_PASTE_THREADS = 8  # a window holds at most 24 faces; more threads would mostly wait


def paste_thread_count(cpu_count: int | None = None) -> int:
    """Threads worth giving `restore_faces(pool=...)` on a machine with `cpu_count` cores (default: this one).

    Half the cores: the other half decode, find landmarks and run x264 at the
    same time. On 2 cores that is 1 (no pool): there a pool only made the
    paste slower (OpenCV already splits each remap and blur over both cores).
    """
    cores = cpu_count or os.cpu_count() or 1
    return max(1, min(MAX_PASTE_THREADS, cores // 2))


def resize_faces(faces: torch.Tensor) -> torch.Tensor:
    """(N, 3, R, R) -> (N, 3, crop_h, crop_w) float32 on the same device, bicubic with antialias like upstream."""
    width, height = crop_size(faces.shape[-1])
    return F.interpolate(faces.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def faces_to_crops(faces: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, R, R) floats in [-1, 1] -> (N, crop_h, crop_w, 3) float32 on the CPU."""
    crops = resize_faces(torch.as_tensor(faces))
    return crops.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def restore_face(frame_rgb: np.ndarray, face: torch.Tensor | np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Blend one face (3, R, R) in [-1, 1] back into the (H, W, 3) frame it was aligned from."""
    crop = faces_to_crops(torch.as_tensor(face)[None])[0]
    return paste_crop(frame_rgb, crop, affine)


def restore_faces(
    frames_rgb, faces: torch.Tensor | np.ndarray, affines, pool: Executor | None = None
) -> list[np.ndarray]:
    """Batched `restore_face`: one resize call for all faces (N, 3, R, R), then one paste per frame.

    With a `pool` the pastes run on its threads (OpenCV and numpy release the
    GIL); the list keeps the order of the frames either way.
    """
    crops = faces_to_crops(faces)
    if pool is None:
        return [paste_crop(frame, crop, affine) for frame, crop, affine in zip(frames_rgb, crops, affines)]
    return list(pool.map(paste_crop, frames_rgb, crops, affines))


def paste_crop(
    frame_rgb: np.ndarray, crop: np.ndarray, affine: np.ndarray, region: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Blend a (crop_h, crop_w, 3) float crop in [-1, 1] into a copy of the frame (uint8, uint16 or float32).

    `region` (top, bottom, left, right) limits the work to part of the frame;
    by default it is the part the crop covers. Only pixels with a blend weight
    above 0 are written.
    """
    frame_height, frame_width = frame_rgb.shape[:2]
    top, bottom, left, right = region or covered_region(affine, crop.shape[:2], (frame_height, frame_width))
    result = frame_rgb.copy()
    if bottom <= top or right <= left:
        return result

    sample_map = _sample_map(affine, top, bottom, left, right)
    face = cv2.remap(
        crop, *sample_map, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FILL_VALUE, FILL_VALUE, FILL_VALUE),
    )
    # (face / 2 + 0.5).clamp(0, 1) * 255 (for 8-bit frames), in place: these regions are large.
    face *= 0.5
    face += 0.5
    np.clip(face, 0.0, 1.0, out=face)
    face = from_display(face, frame_rgb.dtype)

    # soft * (edge * face) + (1 - soft) * original, the order upstream computes it in.
    soft_mask, edge_mask = _blend_masks(crop.shape[:2], sample_map)
    blended = face
    blended *= edge_mask
    blended *= soft_mask
    original = frame_rgb[top:bottom, left:right].astype(np.float32)
    original *= 1.0 - soft_mask
    blended += original
    # Truncated to integers like upstream; weight-0 pixels are left as stored (even -0.0 and NaN in a float frame).
    np.copyto(result[top:bottom, left:right], store(blended, frame_rgb.dtype), where=soft_mask > 0)
    return result


def _sample_map(affine: np.ndarray, top: int, bottom: int, left: int, right: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop coordinates sampled by frame pixels [top, bottom) x [left, right).

    Computed from absolute frame coordinates, so a pixel samples the same point
    whichever region it is processed in.
    """
    affine = np.asarray(affine, dtype=np.float64)
    columns = np.arange(left, right, dtype=np.float64)
    rows = np.arange(top, bottom, dtype=np.float64)
    maps = []
    for coefficient_x, coefficient_y, offset in affine:
        # float32 sum of a per-column and a per-row term: one pass over the region.
        column_term = (coefficient_x * columns).astype(np.float32)
        row_term = (coefficient_y * rows + offset).astype(np.float32)
        maps.append(row_term[:, None] + column_term[None, :])
    return maps[0], maps[1]


def _blend_masks(crop_shape, sample_map) -> tuple[np.ndarray, np.ndarray]:
    """The soft blend mask and the 2x2-eroded crop outline, both float32 (h, w, 1).

    At the frame border OpenCV's erosion ignores pixels past the edge, as
    upstream's (kornia's geodesic erosion, then cv2.erode) does.
    """
    outline = cv2.remap(
        np.ones(crop_shape, dtype=np.float32), *sample_map, cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    # A 2x2 erosion anchored at its centre: each pixel takes the minimum of itself
    # and its upper/left neighbours, as kornia's erosion does.
    edge_mask = cv2.erode(outline, np.ones((2, 2), np.uint8))
    edge_width = int(float(edge_mask.sum(dtype=np.float64)) ** 0.5) // 20
    centre = edge_mask
    if edge_width > 0:
        centre = cv2.erode(edge_mask, np.ones((2 * edge_width, 2 * edge_width), np.uint8))
        blur_size = 2 * edge_width + 1
        sigma = 0.3 * ((blur_size - 1) * 0.5 - 1) + 0.8  # OpenCV's rule for sigma from kernel size
        centre = cv2.GaussianBlur(centre, (blur_size, blur_size), sigma, borderType=cv2.BORDER_REFLECT_101)
    return centre[..., None], edge_mask[..., None]


def covered_region(affine: np.ndarray, crop_shape: tuple[int, int], frame_shape: tuple[int, int]):
    """Rows [top, bottom) and columns [left, right) of the frame the warped crop can touch, with a margin."""
    crop_height, crop_width = crop_shape
    corners = np.array(
        [[-1, -1], [crop_width, -1], [-1, crop_height], [crop_width, crop_height]], dtype=np.float64
    )
    inverse = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))
    frame_points = corners @ inverse[:, :2].T + inverse[:, 2]
    frame_height, frame_width = frame_shape
    left = max(int(np.floor(frame_points[:, 0].min())) - REGION_MARGIN, 0)
    right = min(int(np.ceil(frame_points[:, 0].max())) + REGION_MARGIN + 1, frame_width)
    top = max(int(np.floor(frame_points[:, 1].min())) - REGION_MARGIN, 0)
    bottom = min(int(np.ceil(frame_points[:, 1].max())) + REGION_MARGIN + 1, frame_height)
    return top, bottom, left, right

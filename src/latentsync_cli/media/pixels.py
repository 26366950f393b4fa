"""How frames are held between the decoder and the encoder: RGB at the source's own precision.

    uint8    (H, W, 3)  8-bit sources, decoded as rgb24: what every frame was before plates
    uint16   (H, W, 3)  9- to 16-bit sources (10-bit ProRes or HEVC, 16-bit PNG or TIFF, DPX), rgb48le;
                        a d-bit RGB sample v arrives as ffmpeg scales it, v << (16 - d) | v >> (2d - 16),
                        and goes back to d bits exactly
    float32  (H, W, 3)  floating-point sources (OpenEXR): the stored values as they are (scene-linear,
                        half or single precision, nothing clipped)

The model sees 8-bit display pictures: the face detector gets `display_8bit(frame)`, the
aligner warps `display_float(region)`. Only where a generated face is pasted back
(face/restore.py) does a frame change: `from_display(face)` turns the face's [0, 1]
display values into the frame's samples, blended and stored with `store`; a pixel whose
blend weight is 0 is not written at all, so it keeps its stored value bit for bit.

Float frames are taken as linear light (OpenEXR's convention) and shown to the model
through the sRGB curve; integer frames are taken as display values, as ffmpeg decodes them.
"""

from __future__ import annotations

import cv2
import numpy as np

# What a frame is held as, by the largest sample value it can hold (the float one: 1.0 is white).
DTYPE_WHITE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
SAMPLE_BYTES = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.float32): 4}


def check_frame_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in DTYPE_WHITE:
        raise ValueError(f"frames are uint8, uint16 or float32 RGB, got {dtype}")
    return dtype


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded [0, 1] (IEC 61966-2-1), float32."""
    linear = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear light, float32 (the inverse of srgb_encode)."""
    encoded = np.asarray(encoded, dtype=np.float32)
    return np.where(encoded <= 0.04045, encoded / 12.92, np.power((encoded + 0.055) / 1.055, 2.4)).astype(np.float32)


def display_float(pixels: np.ndarray) -> np.ndarray:
    """Any frame (or part of one) as float32 display values on the 8-bit scale, 0..255.

    For uint8 this is a plain conversion, so the 8-bit path computes exactly what it always did.
    """
    dtype = check_frame_dtype(pixels.dtype)
    if dtype == np.uint8:
        return pixels.astype(np.float32)
    if dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(255.0 / 65535.0)
    return srgb_encode(pixels) * np.float32(255.0)


def display_8bit(frame: np.ndarray) -> np.ndarray:
    """The frame as the face detector sees it: RGB uint8, rounded (the frame itself when it is uint8)."""
    dtype = check_frame_dtype(frame.dtype)
    if dtype == np.uint8:
        return frame
    if dtype == np.uint16:
        return cv2.convertScaleAbs(frame, alpha=255.0 / 65535.0)  # rounds and saturates, on all cores
    return np.rint(display_float(frame)).astype(np.uint8)


def from_display(face: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A generated face's display values in [0, 1] (float32, changed in place where it can be) as samples of `dtype`.

    The 8-bit case is the one multiplication upstream does, so its frames stay bit for bit the same.
    """
    dtype = check_frame_dtype(dtype)
    if dtype == np.float32:
        return srgb_decode(face)
    face *= np.float32(DTYPE_WHITE[dtype])
    return face


def store(blended: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Blended float32 samples as `dtype`: truncated for integers (as upstream's astype), kept for floats."""
    return blended if np.dtype(dtype) == np.float32 else blended.astype(dtype)

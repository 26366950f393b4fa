"""Pasting the generated face back into the frame, against upstream's restore_img."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from conftest import differing
from skimage import data

from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.restore import faces_to_crops, paste_crop, paste_thread_count, restore_face, restore_faces
from latentsync_cli.face.restore_torch import restore_backend_for, restore_faces_torch


def restore_one_with_torch(frame: np.ndarray, face, affine) -> np.ndarray:
    restored = restore_faces_torch(torch.from_numpy(frame)[None], torch.as_tensor(face)[None], [affine])
    return restored[0].numpy()


def to_model_range(face_uint8_hwc: np.ndarray) -> np.ndarray:
    """uint8 (R, R, 3) -> float32 (3, R, R) in [-1, 1], as the pipeline feeds faces to the VAE."""
    return (face_uint8_hwc.transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5


def test_golden_restore_own_face(align_golden):
    face = to_model_range(align_golden["faces_512"][0].transpose(1, 2, 0))
    restored = restore_face(align_golden["frames"][0], face, align_golden["affine_matrices"][0])
    assert restored.shape == align_golden["frames"][0].shape and restored.dtype == np.uint8
    max_diff, fraction = differing(restored, align_golden["restored_own_face"])
    assert max_diff <= 3 and fraction <= 0.02


def test_golden_restore_grey_face(align_golden):
    grey = torch.zeros(3, 512, 512)
    restored = restore_face(align_golden["frames"][0], grey, align_golden["affine_matrices"][0])
    max_diff, fraction = differing(restored, align_golden["restored_grey_face"])
    assert max_diff <= 3 and fraction <= 0.02


def test_golden_restore_torch_own_face(align_golden):
    face = to_model_range(align_golden["faces_512"][0].transpose(1, 2, 0))
    restored = restore_one_with_torch(align_golden["frames"][0], face, align_golden["affine_matrices"][0])
    assert restored.shape == align_golden["frames"][0].shape and restored.dtype == np.uint8
    max_diff, fraction = differing(restored, align_golden["restored_own_face"])
    assert max_diff <= 3 and fraction <= 0.02


def test_golden_restore_torch_grey_face(align_golden):
    restored = restore_one_with_torch(align_golden["frames"][0], torch.zeros(3, 512, 512), align_golden["affine_matrices"][0])
    max_diff, fraction = differing(restored, align_golden["restored_grey_face"])
    assert max_diff <= 3 and fraction <= 0.02


@pytest.fixture(scope="module")
def big_frame_and_face():
    frame = cv2.resize(data.astronaut(), (1080, 1920), interpolation=cv2.INTER_CUBIC)
    affine = np.array([[1.1, 0.08, -260.5], [-0.08, 1.1, -610.25]])  # a face about 380 px wide
    rng = np.random.default_rng(0)
    face = rng.uniform(-1.1, 1.1, (3, 512, 512)).astype(np.float32)  # a little past [-1, 1], like VAE output
    return frame, affine, face


def test_working_on_the_covered_region_equals_the_whole_frame(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    crop = faces_to_crops(face[None])[0]
    whole = paste_crop(frame, crop, affine, region=(0, frame.shape[0], 0, frame.shape[1]))
    np.testing.assert_array_equal(paste_crop(frame, crop, affine), whole)
    assert (whole != frame).any(axis=2).mean() > 0.03  # the face really was pasted


def test_face_near_the_frame_edge_equals_the_whole_frame():
    frame = data.astronaut()
    affine = np.array([[0.9, 0.0, 150.0], [0.0, 0.9, 30.0]])  # the crop hangs off the top-left corner
    crop = faces_to_crops(torch.zeros(1, 3, 512, 512))[0]
    whole = paste_crop(frame, crop, affine, region=(0, 512, 0, 512))
    np.testing.assert_array_equal(paste_crop(frame, crop, affine), whole)


def test_pixels_away_from_the_face_are_untouched(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    before = frame.copy()
    restored = restore_face(frame, face, affine)
    np.testing.assert_array_equal(frame, before)  # the input is not modified
    np.testing.assert_array_equal(restored[:200], frame[:200])
    np.testing.assert_array_equal(restored[1500:], frame[1500:])


def test_batched_restore_equals_one_by_one(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    faces = torch.from_numpy(np.stack([face, -face]))
    shifted = affine + [[0, 0, 7.0], [0, 0, -3.0]]
    batched = restore_faces([frame, frame], faces, [affine, shifted])
    np.testing.assert_array_equal(batched[0], restore_face(frame, face, affine))
    np.testing.assert_array_equal(batched[1], restore_face(frame, -face, shifted))


def test_align_then_restore_gives_the_frame_back():
    frame = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    points = np.array([[370.0, 300.0], [510.0, 290.0], [445.0, 400.0]])  # brows and nose of the astronaut
    aligned = FaceAligner(512).align(frame, points)
    restored = restore_face(frame, to_model_range(aligned.face), aligned.affine)
    changed = (restored != frame).any(axis=2)
    assert changed.mean() > 0.05
    # The face went through two bilinear warps and two resizes; it should land where it came from.
    error = np.abs(restored.astype(np.float32) - frame.astype(np.float32))[changed].mean()
    assert error < 4.0


def test_restore_with_a_pool_keeps_the_frame_order(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    faces = torch.from_numpy(np.stack([face, -face, face * 0.5]))
    affines = [affine + [[0, 0, 9.0 * index], [0, 0, -4.0 * index]] for index in range(3)]
    serial = restore_faces([frame] * 3, faces, affines)
    with ThreadPoolExecutor(2) as pool:
        pooled = restore_faces([frame] * 3, faces, affines, pool=pool)
    for one, other in zip(serial, pooled):
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(serial[0], serial[1])


def test_paste_thread_count_leaves_cores_for_the_other_lanes():
    assert paste_thread_count(1) == paste_thread_count(2) == 1
    assert paste_thread_count(4) == 2 and paste_thread_count(16) == 8
    assert paste_thread_count(256) == paste_thread_count(16)  # capped: a window has few faces


def test_torch_restore_matches_opencv_on_a_large_frame(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    # Three faces of different sizes in one batch: different box sizes and edge widths.
    affines = [affine, affine * [[0.7], [0.7]], affine * [[1.5], [1.5]] + [[0, 0, 120.0], [0, 0, 300.0]]]
    faces = torch.from_numpy(np.stack([face, -face, np.zeros_like(face)]))
    expected = restore_faces([frame] * 3, faces, affines)
    restored = restore_faces_torch(torch.from_numpy(np.stack([frame] * 3)), faces, affines).numpy()
    for ours, theirs in zip(restored, expected):
        assert (theirs != frame).any(axis=2).mean() > 0.02  # a face really was pasted
        max_diff, fraction = differing(ours, theirs)
        # Measured: off by 1 in under 0.01 % of values (cv2.remap rounds sample positions to 1/32 px).
        assert max_diff <= 2 and fraction <= 0.002


def test_torch_restore_at_the_frame_edge_and_off_the_frame():
    frame = data.astronaut()
    corner = np.array([[0.9, 0.0, 150.0], [0.0, 0.9, 30.0]])  # the crop hangs off the top-left corner
    away = np.array([[0.9, 0.0, 2000.0], [0.0, 0.9, 2000.0]])  # the crop does not touch the frame
    faces = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 512, 512)).astype(np.float32))
    frames = torch.from_numpy(np.stack([frame, frame]))
    restored = restore_faces_torch(frames, faces, np.stack([corner, away])).numpy()
    max_diff, fraction = differing(restored[0], restore_face(frame, faces[0], corner))
    assert max_diff <= 2 and fraction <= 0.002
    np.testing.assert_array_equal(restored[1], frame)
    np.testing.assert_array_equal(frames[0].numpy(), frame)  # the input is not modified


def test_torch_restore_refuses_mismatched_counts(big_frame_and_face):
    frame, affine, face = big_frame_and_face
    with pytest.raises(ValueError, match="as many"):
        restore_faces_torch(torch.from_numpy(frame)[None], torch.from_numpy(np.stack([face, face])), [affine])


def test_the_cpu_keeps_the_faster_opencv_restore():
    assert restore_backend_for("cpu") == "opencv"
    assert restore_backend_for("cuda") == "torch"


# --- deeper frames: 16-bit and float plates --------------------------------------------------------


def paste_weights(frame: np.ndarray, face: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """bool (H, W): where the paste's soft mask is above 0 (everything else must stay as stored)."""
    from latentsync_cli.face.restore import _blend_masks, _sample_map, covered_region

    crop = faces_to_crops(face[None])[0]
    top, bottom, left, right = covered_region(affine, crop.shape[:2], frame.shape[:2])
    soft, _edge = _blend_masks(crop.shape[:2], _sample_map(affine, top, bottom, left, right))
    weights = np.zeros(frame.shape[:2], dtype=bool)
    weights[top:bottom, left:right] = soft[..., 0] > 0
    return weights


@pytest.fixture(scope="module")
def deep_frames(big_frame_and_face):
    """The big frame as a 16-bit plate (with low bits of its own) and as linear floats with -0.0, NaN, inf."""
    frame, affine, face = big_frame_and_face
    rng = np.random.default_rng(2)
    frame16 = (frame.astype(np.int32) * 257 + rng.integers(-100, 101, frame.shape)).clip(0, 65535).astype(np.uint16)
    frame_float = (frame.astype(np.float32) / 255) ** 2.2 * 3.0  # highlights above 1.0
    frame_float[:5, :5] = [-0.0, np.nan, np.inf]  # values a naive blend would not keep bit for bit
    return frame16, frame_float


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_deep_frames_change_only_where_the_paste_weighs(big_frame_and_face, deep_frames, backend):
    frame8, affine, face = big_frame_and_face
    weights = paste_weights(frame8, face, affine)
    for frame in deep_frames:
        if backend == "opencv":
            restored = restore_face(frame, face, affine)
        else:
            restored = restore_one_with_torch(frame, face, affine)
        assert restored.dtype == frame.dtype
        changed = (restored.view(np.uint8) != frame.view(np.uint8)).reshape(*frame.shape[:2], -1).any(axis=2)
        assert changed.any() and not (changed & ~weights).any()  # bit for bit where the weight is 0


def test_a_16bit_frame_gets_the_8bit_frames_face_at_16_bits(big_frame_and_face):
    frame8, affine, face = big_frame_and_face
    restored8 = restore_face(frame8, face, affine).astype(np.int64)
    restored16 = restore_face(frame8.astype(np.uint16) * 257, face, affine).astype(np.int64)
    assert np.abs(restored16 - restored8 * 257).max() <= 257  # the same blend, truncated at another depth
    assert (restored16 % 257 != 0).any()  # and the 16-bit one keeps its finer values


def test_a_float_frame_gets_the_face_in_linear_light(big_frame_and_face):
    """The model's face is display-referred: pasted into a linear frame through the sRGB curve."""
    frame8, affine, face = big_frame_and_face
    from latentsync_cli.media.pixels import srgb_decode

    linear = srgb_decode(frame8.astype(np.float32) / 255)
    restored = restore_face(linear, face, affine)
    weights = paste_weights(frame8, face, affine)
    back = restore_face(frame8, face, affine)
    display = np.round(np.clip(restored, 0, 1) ** (1 / 2.2) * 255)  # near enough to sRGB for a tolerance
    assert np.abs(display[weights] - back[weights]).mean() < 6

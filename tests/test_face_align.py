"""Face alignment: upstream's similarity transform, smoothing, warp and squeeze."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import differing
from skimage import data

from latentsync_cli.face import align
from latentsync_cli.face.align import (
    FaceAligner,
    crop_size,
    face_template,
    similarity_transform,
    warp_into_crop,
)


def align_fixture_frames(align_golden) -> tuple[FaceAligner, list]:
    aligner = FaceAligner(512)
    results = []
    for frame, points in zip(align_golden["frames"], align_golden["landmarks"]):
        aligned = aligner.align(frame, points)
        results.append((aligned, aligner.nose_bias.copy()))
    return aligner, results


def test_golden_align_matrices_and_smoothing(align_golden):
    _, results = align_fixture_frames(align_golden)
    for index, (aligned, nose_bias) in enumerate(results):
        expected = align_golden["affine_matrices"][index]
        np.testing.assert_allclose(aligned.affine[:, :2], expected[:, :2], atol=1e-5, rtol=0)
        np.testing.assert_allclose(aligned.affine[:, 2], expected[:, 2], atol=5e-4, rtol=0)
        np.testing.assert_allclose(nose_bias, align_golden["p_bias"][index], atol=1e-5, rtol=0)


def test_golden_align_warped_crops(align_golden):
    _, results = align_fixture_frames(align_golden)
    for index, (aligned, _) in enumerate(results):
        crop = warp_into_crop(align_golden["frames"][index], aligned.affine, (420, 560))
        assert crop.shape == align_golden["warped_crops"][index].shape
        max_diff, fraction = differing(crop, align_golden["warped_crops"][index])
        assert max_diff <= 1 and fraction <= 0.01


def test_golden_align_faces_512(align_golden):
    _, results = align_fixture_frames(align_golden)
    for index, (aligned, _) in enumerate(results):
        expected = align_golden["faces_512"][index].transpose(1, 2, 0)
        assert aligned.face.shape == (512, 512, 3) and aligned.face.dtype == np.uint8
        max_diff, fraction = differing(aligned.face, expected)
        assert max_diff <= 2 and fraction <= 0.015


def test_golden_align_squeeze_of_upstreams_crops_is_exact(align_golden, monkeypatch):
    """The aligner's squeeze (the 420 x 560 crop -> the 512 x 512 face), fed upstream's own crops,
    gives upstream's faces exactly (the README: exact when computed from the fixture's crops)."""
    crops = iter(align_golden["warped_crops"])
    sizes = []

    def upstreams_crop(frame, affine, size):
        sizes.append(size)
        return next(crops)

    monkeypatch.setattr(align, "warp_into_crop", upstreams_crop)
    aligner = FaceAligner(512)
    for frame, affine, expected in zip(align_golden["frames"], align_golden["affine_matrices"], align_golden["faces_512"]):
        face = aligner.warp(frame, affine).face
        np.testing.assert_array_equal(face, expected.transpose(1, 2, 0))
    assert sizes == [(420, 560)] * 5


def test_crop_size_truncates_like_upstream():
    assert crop_size(512) == (420, 560)
    assert crop_size(256) == (210, 280)
    assert crop_size(384) == (314, 419)
    np.testing.assert_allclose(face_template(512), [[95.2, 112.0], [324.8, 112.0], [210.0, 224.0]])


def test_similarity_transform_recovers_a_known_similarity():
    template = face_template(512)
    angle, scale, shift = np.deg2rad(12.0), 0.37, np.array([512.0, 803.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = template @ rotation.T + shift  # template -> frame
    matrix, _ = similarity_transform(points, template)
    np.testing.assert_allclose(matrix[:, :2] @ points.T + matrix[:, 2:], template.T, atol=1e-9)
    # The nose offset compares normalised (centred, std-scaled, unrotated) points,
    # so it is zero only without rotation.
    _, nose_offset = similarity_transform(template * scale + shift, template)
    np.testing.assert_allclose(nose_offset, 0.0, atol=1e-12)


def test_similarity_transform_never_mirrors():
    template = face_template(512)
    mirrored = template.copy()
    mirrored[:, 0] = 500.0 - mirrored[:, 0]  # left and right brow swapped sides
    matrix, _ = similarity_transform(mirrored, template)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_points_on_the_template_give_the_identity_crop():
    frame = np.ascontiguousarray(np.tile(data.astronaut(), (2, 1, 1)))  # 1024 x 512
    aligner = FaceAligner(512)
    aligned = aligner.align(frame, face_template(512))
    np.testing.assert_allclose(aligned.affine, np.eye(2, 3), atol=1e-9)
    crop = warp_into_crop(frame, aligned.affine, (420, 560))
    np.testing.assert_array_equal(crop, frame[:560, :420])
    expected_face = cv2.resize(frame[:560, :420], (512, 512), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(aligned.face, expected_face)


def test_crop_past_the_frame_edge_is_grey():
    frame = np.full((300, 300, 3), 200, dtype=np.uint8)
    shifted = np.array([[1.0, 0.0, 200.0], [0.0, 1.0, 0.0]])  # frame x=0 lands at crop x=200
    crop = warp_into_crop(frame, shifted, (420, 560))
    assert (crop[:, :199] == 127).all()
    assert (crop[:299, 201:] == 200).all()
    assert (crop[301:] == 127).all()


def test_crop_of_a_frame_region_matches_the_whole_frame_warp():
    frame = cv2.resize(data.astronaut(), (1080, 1920), interpolation=cv2.INTER_CUBIC)
    affine = np.array([[0.6, 0.05, -150.25], [-0.05, 0.6, -500.75]])
    whole = cv2.warpAffine(
        frame.astype(np.float32), affine, (420, 560), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(127, 127, 127),
    ).astype(np.uint8)
    max_diff, fraction = differing(warp_into_crop(frame, affine, (420, 560)), whole)
    # OpenCV rounds sample positions to 1/32 px from the matrix, so a shifted origin may flip a few values by 1.
    assert max_diff <= 1 and fraction < 0.01


def test_smoothing_state_and_reset():
    template = face_template(512)
    aligner = FaceAligner(512)
    first = template + [[3.0, 1.0], [3.0, 1.0], [0.0, 0.0]]  # nose off the template's place
    second = template + [[-2.0, 0.0], [-2.0, 0.0], [4.0, 5.0]]
    aligner.transform(first)
    bias_first = aligner.nose_bias.copy()
    _, offset_second = similarity_transform(second, template)
    aligner.transform(second)
    np.testing.assert_allclose(aligner.nose_bias, 0.2 * bias_first + 0.8 * offset_second)
    aligner.reset()
    assert aligner.nose_bias is None
    np.testing.assert_allclose(aligner.transform(first), FaceAligner(512).transform(first))


def test_bad_points_are_rejected():
    with pytest.raises(ValueError):
        FaceAligner(512).transform(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        FaceAligner(512).transform(np.full((3, 2), np.nan))

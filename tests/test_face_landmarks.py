"""MediaPipe landmarks on a real face photo (skimage's astronaut), moved and tiled."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from latentsync_cli.errors import UsageError
from latentsync_cli.face.landmarks import LandmarkDetector, MediapipeLandmarks, alignment_points
from latentsync_cli.media.synthetic import face_photo

ASTRONAUT_NOSE = np.array([224.0, 125.0])  # where the detector puts the nose centre in the 512 x 512 photo


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_finds_the_astronaut_and_plausible_points(astronaut):
    with MediapipeLandmarks() as detector:
        assert isinstance(detector, LandmarkDetector)
        found = detector.detect(astronaut)
    assert found is not None
    left_brow, right_brow, nose = found.points
    assert found.points.shape == (3, 2) and found.points.dtype == np.float64
    assert left_brow[0] < nose[0] < right_brow[0]
    assert left_brow[1] < nose[1] and right_brow[1] < nose[1]  # brows above the nose
    assert 30 < right_brow[0] - left_brow[0] < 90  # her brows are about 55 px apart
    x0, y0, x1, y1 = found.box
    assert x0 < left_brow[0] and right_brow[0] < x1 and y0 < left_brow[1] and nose[1] < y1
    assert 150 < nose[0] < 300 and 60 < nose[1] < 200  # the face is in the upper left-centre
    assert found.score >= 0.5


@pytest.mark.parametrize("kind", ["grey", "noise", "tiny face"])
def test_no_face_gives_none(kind, astronaut):
    if kind == "grey":
        frame = np.full((480, 640, 3), 128, dtype=np.uint8)
    elif kind == "noise":
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:  # a face far under 50 px wide is no face
        frame = np.full((480, 640, 3), 90, dtype=np.uint8)
        frame[200:264, 300:364] = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)
    with MediapipeLandmarks() as detector:
        assert detector.detect(frame) is None


def test_a_moving_face_is_tracked_between_detections(astronaut):
    frames, noses = [], []
    for index in range(8):
        scale, shift = 1 + 0.03 * index, np.array([40.0 + 12 * index, 30.0 + 5 * index])
        move = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
        frames.append(cv2.warpAffine(astronaut, move, (720, 720), borderValue=(60, 60, 60)))
        noses.append(ASTRONAUT_NOSE * scale + shift)
    with MediapipeLandmarks(stride=2) as detector:
        found = [detector.detect(frame) for frame in frames]
        detector_runs = detector.detector_runs
    assert all(face is not None for face in found)
    assert detector_runs < len(frames)  # the mesh alone handled some frames
    for face, nose in zip(found, noses):
        assert np.linalg.norm(face.points[2] - nose) < 4.0


def two_faces(astronaut) -> np.ndarray:
    """A big astronaut at the left and a half-size one in the middle of a wide frame."""
    head = astronaut[10:240, 120:330]
    big = cv2.resize(head, None, fx=2.2, fy=2.2, interpolation=cv2.INTER_AREA)
    small = cv2.resize(head, None, fx=1.1, fy=1.1, interpolation=cv2.INTER_AREA)
    frame = np.full((600, 1400, 3), 90, dtype=np.uint8)
    frame[50 : 50 + big.shape[0], 20 : 20 + big.shape[1]] = big
    top, left = 300 - small.shape[0] // 2, 700 - small.shape[1] // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame


@pytest.mark.parametrize("choose,nose_x_range", [("largest", (20, 500)), ("center", (600, 800))])
def test_choose_largest_or_centre_face(astronaut, choose, nose_x_range):
    with MediapipeLandmarks(choose=choose) as detector:
        found = detector.detect(two_faces(astronaut))
    assert found is not None
    assert nose_x_range[0] < found.points[2][0] < nose_x_range[1]


def test_alignment_points_are_means_of_the_mesh_points():
    mesh = np.zeros((468, 2))
    mesh[[71, 63, 105, 66, 107]] = [[1.0, 2.0]] * 5
    mesh[[336, 296, 334, 293, 301]] = [[10.0, 2.0], [12.0, 2.0], [10.0, 2.0], [12.0, 2.0], [11.0, 2.0]]
    mesh[[168, 197, 5, 4, 75, 97, 2, 326, 305]] = [[6.0, 9.0]] * 9
    np.testing.assert_allclose(alignment_points(mesh), [[1.0, 2.0], [11.0, 2.0], [6.0, 9.0]])


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="stride"):
        MediapipeLandmarks(stride=0)
    with pytest.raises(UsageError, match="largest"):
        MediapipeLandmarks(choose="biggest")


def test_a_repeated_picture_is_found_and_aligned_once():
    """Identical frames (a still's, or a frozen stretch of a video, even as separate arrays) share one
    detection, one matrix and one crop; a changed frame is detected and cut again."""
    from concurrent.futures import ThreadPoolExecutor

    from latentsync_cli.face.detectors import LandmarkSource
    from latentsync_cli.face.track import FaceLocator

    photo = face_photo()
    moved = np.roll(photo, 3, axis=1)
    moved[:, :3] = 0
    pictures = [photo, photo.copy(), photo.copy(), moved, moved, photo]
    locate = FaceLocator(256, LandmarkSource("mediapipe", stride=1, choose="largest"))
    try:
        affines = [locate.affine(number, picture) for number, picture in enumerate(pictures)]
        assert locate.detector.detector_runs == 3  # stride 1: once per new picture, not once per frame
        faces, sources = locate.faces(pictures, affines)
        with ThreadPoolExecutor(3) as pool:
            pooled, pooled_sources = locate.faces(pictures, affines, pool)
    finally:
        locate.close()
    assert affines[1] is affines[0] and affines[2] is affines[0] and affines[4] is affines[3]
    assert faces[1] is faces[0] and faces[2] is faces[0] and faces[4] is faces[3]
    assert faces[3] is not faces[0] and faces[5] is not faces[4]
    assert sources == pooled_sources == [0, 0, 0, 3, 3, 5]  # each face's first face of its run
    # the moved picture's face sits 3 px further right in the frame, so its matrix moved with it
    assert affines[3][0, 2] != affines[0][0, 2]
    # cut on threads: the same crops, the same sharing
    assert all(np.array_equal(a, b) for a, b in zip(faces, pooled)) and pooled[1] is pooled[0]
    assert not np.array_equal(faces[0], faces[3])
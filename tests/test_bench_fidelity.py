import cv2
import numpy as np
import pytest

from latentsync_cli.bench import fidelity
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.media.encode import VideoEncoder
from latentsync_cli.media.synthetic import face_frames


def test_mouth_box_covers_exactly_the_generated_region():
    top, bottom, left, right = fidelity.mouth_box(256)
    mask = mouth_mask(256)
    generated = mask < 0.5
    assert generated[top:bottom, left:right].sum() == generated.sum()
    # Every edge of the box touches the generated region.
    assert generated[top].any() and generated[bottom - 1].any()
    assert generated[:, left].any() and generated[:, right - 1].any()


def test_compare_mouths_identical_and_degraded():
    frames = list(face_frames(0.3, size=(320, 240)))
    crops = [frame[60:180, 100:220] for frame in frames]
    same = fidelity.compare_mouths(crops, [crop.copy() for crop in crops])
    assert same["identical"] is True and same["mouth_psnr"] is None
    assert same["mouth_ssim"] == pytest.approx(1.0)
    blurred = fidelity.compare_mouths(crops, [cv2.GaussianBlur(crop, (9, 9), 3) for crop in crops])
    assert blurred["identical"] is False
    assert 10 < blurred["mouth_psnr"] < 60
    assert blurred["mouth_ssim"] < 0.99
    with pytest.raises(ValueError):
        fidelity.compare_mouths(crops, crops[:-1])


def test_reference_output_finds_the_face_and_scores_videos(tmp_path):
    frames = list(face_frames(0.4, size=(320, 240)))
    reference_path = tmp_path / "reference.mp4"
    blurred_path = tmp_path / "blurred.mp4"
    with VideoEncoder(reference_path, 320, 240, fps=25) as encoder:
        for frame in frames:
            encoder.write(frame)
    with VideoEncoder(blurred_path, 320, 240, fps=25) as encoder:
        for frame in frames:
            encoder.write(cv2.GaussianBlur(frame, (11, 11), 4))

    reference = fidelity.ReferenceOutput(reference_path)
    assert reference.frame_count == len(frames)
    assert sum(points is not None for points in reference.points) == len(frames)
    assert reference.compare(reference_path)["identical"] is True
    blurred = reference.compare(blurred_path)
    assert blurred["mouth_ssim"] < 0.95 and blurred["frames"] == len(frames)


def test_reference_output_without_a_face_is_an_error(tmp_path):
    path = tmp_path / "empty.mp4"
    with VideoEncoder(path, 160, 120, fps=25) as encoder:
        for _ in range(3):
            encoder.write(np.full((120, 160, 3), 90, dtype=np.uint8))
    with pytest.raises(ValueError, match="no face"):
        fidelity.ReferenceOutput(path)

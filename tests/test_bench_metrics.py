import math

import numpy as np
import pytest
from skimage import data

from latentsync_cli.bench import metrics


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    return data.astronaut()[40:200, 160:320]  # (160, 160, 3) uint8


def _moving_clip(image: np.ndarray, frames: int = 6) -> list[np.ndarray]:
    return [np.roll(image, shift=3 * i, axis=1) for i in range(frames)]


def test_identical_images_give_infinite_psnr_and_unit_ssim(face_crop):
    assert metrics.psnr(face_crop, face_crop.copy()) == math.inf
    assert metrics.ssim(face_crop, face_crop.copy()) == pytest.approx(1.0)


def test_psnr_of_a_known_mse():
    reference = np.zeros((8, 8), dtype=np.uint8)
    candidate = np.full((8, 8), 10, dtype=np.uint8)  # MSE = 100
    expected = 10 * math.log10(255**2 / 100)
    assert metrics.psnr(reference, candidate) == pytest.approx(expected)
    assert metrics.psnr(reference, candidate, data_range=1.0) == pytest.approx(10 * math.log10(1 / 100))


def test_noise_lowers_psnr_and_ssim_more_as_it_grows(face_crop):
    rng = np.random.default_rng(0)
    light = np.clip(face_crop + rng.normal(0, 5, face_crop.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(face_crop + rng.normal(0, 40, face_crop.shape), 0, 255).astype(np.uint8)
    assert math.isfinite(metrics.psnr(face_crop, light))
    assert metrics.psnr(face_crop, heavy) < metrics.psnr(face_crop, light)
    assert metrics.ssim(face_crop, heavy) < metrics.ssim(face_crop, light) < 1.0


def test_ssim_works_on_small_and_grey_crops(face_crop):
    grey = face_crop[..., 0]
    assert metrics.ssim(grey, grey) == pytest.approx(1.0)
    small = face_crop[:4, :4]
    assert metrics.ssim(small, small) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.ssim(face_crop[:2, :2], face_crop[:2, :2])


def test_shape_mismatch_is_an_error(face_crop):
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(face_crop, face_crop[:10])


def test_clip_metrics(face_crop):
    clip = _moving_clip(face_crop)
    assert metrics.clip_psnr(clip, clip) == math.inf
    assert metrics.clip_ssim(clip, clip) == pytest.approx(1.0)
    darker = [(frame * 0.9).astype(np.uint8) for frame in clip]
    assert metrics.clip_ssim(clip, darker) < 1.0
    with pytest.raises(ValueError):
        metrics.clip_ssim(clip, clip[:-1])
    # Frame by frame, the clip's PSNR is the PSNR of all its values at once.
    assert metrics.clip_psnr(clip, darker) == pytest.approx(metrics.psnr(np.stack(clip), np.stack(darker)))
    with pytest.raises(ValueError, match="length"):
        metrics.clip_psnr(clip, clip[:-1])


def test_temporal_consistency_is_one_for_the_same_motion_and_drops_for_flicker(face_crop):
    clip = _moving_clip(face_crop)
    assert metrics.temporal_consistency(clip, clip) == pytest.approx(1.0)
    # A constant brightness offset does not change frame-to-frame differences much.
    brighter = [np.clip(frame.astype(int) + 10, 0, 255) for frame in clip]
    assert metrics.temporal_consistency(clip, brighter) > 0.95
    rng = np.random.default_rng(1)
    flicker = [np.clip(frame + rng.normal(0, 60, frame.shape), 0, 255) for frame in clip]
    assert metrics.temporal_consistency(clip, flicker) < 0.8
    frozen = [clip[0]] * len(clip)
    assert metrics.temporal_consistency(clip, frozen) == 0.0
    assert metrics.temporal_consistency(frozen, frozen) == 1.0


def test_speed_and_cost_arithmetic():
    assert metrics.seconds_per_output_second(30.0, 10.0) == 3.0
    assert metrics.realtime_factor(5.0, 10.0) == 2.0
    # 0.5 s per output second at $3/h: 30 s per output minute = $0.025.
    assert metrics.cost_per_output_minute(0.5, 3.0) == pytest.approx(0.025)
    # 100 videos of 30 s at 2 s/s = 6000 s = 5/3 h at $3/h = $5.
    assert metrics.cost_per_videos(2.0, 3.0, video_s=30.0, count=100) == pytest.approx(5.0)

"""The procedural mouth mask against upstream's mask.png (golden) and its own geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from latentsync_cli.face.mask import draw_mask_256, latent_mask, mouth_mask


@pytest.fixture(scope="module")
def golden_mask(golden_dir):
    return load_file(str(golden_dir / "mask_512.safetensors"))


def test_golden_mask_512_matches_upstream(golden_mask):
    ours = mouth_mask(512)
    theirs = golden_mask["mask_512"][0]
    generate_ours, generate_theirs = ours < 0.5, theirs < 0.5
    iou = (generate_ours & generate_theirs).sum() / (generate_ours | generate_theirs).sum()
    assert iou >= 0.995
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_golden_mask_64_latent_channel_is_exact(golden_mask):
    ours = latent_mask(mouth_mask(512), 64)
    np.testing.assert_allclose(ours, golden_mask["mask_64"][0], atol=1e-6, rtol=0)


def black_runs(mask_256: np.ndarray) -> dict[int, list[list[int]]]:
    """Row -> [first, last] column of each run of black (0 = generate) pixels, for the rows that have any."""
    runs = {}
    for row, values in enumerate(mask_256 == 0):
        padded = np.concatenate([[False], values, [False]]).astype(np.int8)
        starts, ends = np.flatnonzero(np.diff(padded) == 1), np.flatnonzero(np.diff(padded) == -1)
        if len(starts):
            runs[row] = [[int(start), int(end) - 1] for start, end in zip(starts, ends)]
    return runs


def test_golden_mask_drawn_at_256_is_upstreams_png(golden_mask):
    np.testing.assert_array_equal(draw_mask_256(), golden_mask["mask_256_png"])


def test_golden_mask_black_runs_row_by_row(golden_dir):
    geometry = json.loads((golden_dir / "mask_geometry.json").read_text())
    expected = {int(row): runs for row, runs in geometry["black_runs_per_row_inclusive"].items()}
    assert black_runs(draw_mask_256()) == expected
    assert int((draw_mask_256() == 0).sum()) == geometry["black_pixels_256"]


def test_mask_geometry_as_the_golden_readme_describes_it():
    """The README's words about mask.png (golden/README.md, section 5), checked on the drawn mask."""
    runs = black_runs(draw_mask_256())
    assert min(runs) == 95 and max(runs) == 242  # first and last black rows
    for row in range(95, 128):  # a white notch at the nose, columns 78-177; column 247 white
        assert runs[row] == [[9, 77], [178, 246]], row
    for row in range(128, 135):
        assert runs[row] == [[9, 247]], row
    # One run per row from 135 on, narrowing steadily; the chin tip off-centre to the right.
    assert {row: runs[row] for row in (140, 170, 200, 230, 242)} == {
        140: [[10, 246]], 170: [[12, 243]], 200: [[33, 223]], 230: [[76, 185]], 242: [[131, 152]],
    }  # fmt: skip
    widths = [runs[row][0][1] - runs[row][0][0] for row in range(135, 243)]
    assert all(len(runs[row]) == 1 for row in range(135, 243))
    assert all(later <= earlier for earlier, later in zip(widths, widths[1:]))
    assert int((draw_mask_256() == 0).sum()) == 26673  # 40.70 % of 256 x 256


def test_mask_values_and_shape_at_other_resolutions():
    for resolution in (256, 384):
        mask = mouth_mask(resolution)
        assert mask.shape == (resolution, resolution) and mask.dtype == np.float32
        assert mask.min() == 0.0 and mask.max() == 1.0
        assert 0.38 < (mask < 0.5).mean() < 0.43


def test_feather_softens_only_near_the_edge():
    hard = mouth_mask(512)
    soft = mouth_mask(512, feather_px=6)
    edge_fraction = lambda m: ((m > 0.01) & (m < 0.99)).mean()
    assert edge_fraction(soft) > 3 * edge_fraction(hard)
    assert soft[360, 256] == pytest.approx(0.0, abs=1e-6)  # middle of the mouth region
    assert soft[40, 256] == pytest.approx(1.0, abs=1e-6)  # forehead
    assert 0.0 <= soft.min() and soft.max() <= 1.0


@pytest.mark.parametrize("size,latent_size", [(512, 64), (256, 32), (96, 64)])
def test_latent_mask_equals_torch_nearest(size, latent_size):
    values = np.random.default_rng(0).random((size, size), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(values)[None, None], size=(latent_size, latent_size), mode="nearest")
    np.testing.assert_array_equal(latent_mask(values, latent_size), expected[0, 0].numpy())

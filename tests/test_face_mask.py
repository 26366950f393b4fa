"""The procedural mouth mask against upstream's mask.png (golden) and its own geometry."""

from __future__ import annotations

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


def test_mask_regions_follow_the_described_geometry():
    mask = draw_mask_256()
    assert set(np.unique(mask)) == {0, 255}
    assert (mask[:95] == 255).all() and (mask[243:] == 255).all()
    assert (mask[:, :9] == 255).all() and (mask[:, 248:] == 255).all()
    assert (mask[95:128, 78:178] == 255).all()  # the notch around the nose stays
    assert (mask[95:128, 9:78] == 0).all() and (mask[95:128, 178:247] == 0).all()
    assert (mask[128:135, 9:248] == 0).all()  # full-width band under the notch
    assert mask[242, 131] == 0 and mask[242, 130] == 255  # the off-centre chin tip
    assert (mask == 0).sum() == 26673


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

"""The VAE wrapper: configs, seeded random weights, loading, encode/decode scaling."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from latentsync_cli.errors import WeightsError
from latentsync_cli.models.vae import (
    LATENT_SCALE,
    decode_latents,
    encode_latents,
    load_vae,
    random_vae,
    sd_vae_ft_mse_config,
    tiny_vae_config,
)
from latentsync_cli.pipeline.windows import SeededNoise, window_generator


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    return random_vae(tiny_vae_config(), seed=0)


def _frames(count: int, size: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


def _read_manifest(path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(ast.literal_eval(shape))
    return shapes


def test_full_config_matches_the_reference_state_dict(reference_dir):
    with torch.device("meta"):
        vae = AutoencoderKL(**sd_vae_ft_mse_config())
    actual = {key: tuple(value.shape) for key, value in vae.state_dict().items()}
    assert actual == _read_manifest(reference_dir / "vae_sd_ft_mse_state_dict.tsv")
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_tiny_vae_keeps_the_latent_geometry(tiny_vae):
    latents = encode_latents(tiny_vae, _frames(2), torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 32, 32)
    images = decode_latents(tiny_vae, latents)
    assert images.shape == (2, 3, 256, 256)
    assert sum(p.numel() for p in tiny_vae.parameters()) < 200_000


def test_seeded_draws_are_the_generator_draws_bit_for_bit(tiny_vae):
    """The NoiseSource seam changes nothing for users: SeededNoise's two draws of window k give the latents
    that window k's generator gave when encode_latents drew from it (masked first, then reference)."""
    masked_faces, faces = _frames(3) * 0.5, _frames(3)
    generator = window_generator(1247, 2)
    before = [encode_latents(tiny_vae, images, generator) for images in (masked_faces, faces)]
    draws = SeededNoise(1247).posterior_draws(2, (3, 4, 32, 32), tiny_vae.device, tiny_vae.dtype)
    after = [encode_latents(tiny_vae, images, draw=draw) for images, draw in zip((masked_faces, faces), draws)]
    assert all(torch.equal(old, new) for old, new in zip(before, after))
    with pytest.raises(ValueError):
        encode_latents(tiny_vae, faces, generator, draw=draws[0])


def test_encode_samples_the_distribution_and_scales(tiny_vae):
    frames = _frames(2)
    latents = encode_latents(tiny_vae, frames, torch.Generator().manual_seed(7))
    with torch.no_grad():
        distribution = tiny_vae.encode(frames).latent_dist
    noise = torch.randn(distribution.mean.shape, generator=torch.Generator().manual_seed(7))
    expected = (distribution.mean + distribution.std * noise) * LATENT_SCALE
    torch.testing.assert_close(latents, expected)
    # a sample, not the mode: another seed gives other latents
    other = encode_latents(tiny_vae, frames, torch.Generator().manual_seed(8))
    assert not torch.allclose(latents, other)


def test_decode_unscales(tiny_vae):
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_vae.decode(latents / 0.18215).sample
    torch.testing.assert_close(decode_latents(tiny_vae, latents), expected)


def test_random_vae_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = random_vae(tiny_vae_config(), seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    again = random_vae(tiny_vae_config(), seed=3).state_dict()
    other = random_vae(tiny_vae_config(), seed=4).state_dict()
    key = "encoder.conv_in.weight"
    assert torch.equal(first[key], again[key])
    assert not torch.equal(first[key], other[key])


def test_load_vae_round_trip_sets_the_latent_scale(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    loaded = load_vae(tmp_path, device="cpu", dtype=torch.float64)
    assert loaded.dtype == torch.float64
    assert loaded.config.scaling_factor == pytest.approx(0.18215)
    assert loaded.config.shift_factor == 0
    key = "decoder.conv_out.weight"
    torch.testing.assert_close(loaded.state_dict()[key], tiny_vae.state_dict()[key].double())


def test_load_vae_names_the_missing_file(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_vae(tmp_path)


def test_load_vae_corrupt_weights_is_a_weights_error(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="latentsync models download") as raised:
        load_vae(tmp_path)
    assert "\n" not in str(raised.value)


def test_load_vae_rejects_a_file(tmp_path):
    path = tmp_path / "vae.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(WeightsError, match="expected a folder"):
        load_vae(path)


def test_repeated_images_are_encoded_once_and_sampled_as_the_whole_batch_would():
    vae = random_vae(tiny_vae_config(), seed=0)
    pictures = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(1)) * 2 - 1
    images = pictures[[0, 0, 0, 1, 1, 0]]  # a still's run, a new picture's run, the first picture again
    sources = np.array([0, 0, 0, 3, 3, 5])
    every_row = encode_latents(vae, images, torch.Generator().manual_seed(7))
    calls = []
    vae.encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    once = encode_latents(vae, images, torch.Generator().manual_seed(7), sources)
    assert calls == [3]  # the three distinct runs, not six rows
    assert once.shape == every_row.shape
    torch.testing.assert_close(once, every_row, rtol=1e-4, atol=1e-4)
    assert not torch.equal(once[0], once[1])  # each frame has its own sample, as in the batch

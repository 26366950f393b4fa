"""`--weights proxy`: the small model trained on three clips that ships inside the package.

Loading, what it says about itself everywhere, and its failures (a missing file,
an audio encoder this torch rebuilds differently). The end-to-end test that sees
the mouth is in test_proxy_mouth.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latentsync_cli.constants import WEIGHT_CHOICES
from latentsync_cli.errors import WeightsError
from latentsync_cli.weights.files import check_weights_available
from latentsync_cli.weights.info import WeightsInfo
from latentsync_cli.weights.load import load_models
from latentsync_cli.weights.proxy import (
    AUDIO_STEM_GAIN,
    MANIFEST_FORMAT,
    PROXY_RESOLUTION,
    load_proxy,
    proxy_audio_encoder,
    proxy_unet_config,
    proxy_vae_config,
    state_digest,
)
from latentsync_cli.weights.proxy_files import (
    MANIFEST_FILE,
    PROXY_DIR,
    PROXY_FILES,
    UNET_FILE,
    VAE_FILE,
    check_proxy_files,
)

MAX_SHIPPED_BYTES = 25 * 2**20


def test_the_proxy_ships_inside_the_package_and_is_small():
    sizes = {name: (PROXY_DIR / name).stat().st_size for name in PROXY_FILES}
    assert sum(sizes.values()) <= MAX_SHIPPED_BYTES, sizes


def test_proxy_loads_and_says_what_it_is():
    assert "proxy" in WEIGHT_CHOICES
    check_weights_available("proxy", None)  # its files are in the package: nothing to fetch
    bundle = load_models("proxy")
    assert bundle.weights_id == "proxy" and bundle.is_proxy and not bundle.is_random
    assert bundle.resolution == PROXY_RESOLUTION
    for words in ("trained on three clips", "not LatentSync 1.6"):
        assert words in bundle.description and words in bundle.note
    assert all(not p.requires_grad for p in bundle.unet.parameters())
    assert next(bundle.unet.parameters()).dtype == torch.float32  # the fp16 files are cast on load
    info = WeightsInfo("proxy", bundle.weights_id, bundle.description, bundle.is_random, bundle.is_proxy)
    assert info.to_dict()["is_proxy"] is True


def test_the_manifest_records_how_it_was_trained():
    manifest = json.loads((PROXY_DIR / MANIFEST_FILE).read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["resolution"] == PROXY_RESOLUTION
    assert manifest["audio_encoder"]["sha256"] == state_digest(proxy_audio_encoder())
    assert set(manifest["training"]) == {"vae", "unet"}
    stages = [manifest["training"]["vae"], manifest["training"]["unet"]]
    stages += [stage["init"] for stage in stages if "init" in stage]  # a fine-tune's first run counts too
    assert sum(stage["cpu_s"] for stage in stages) < 2.6 * 3600  # the budget: about 2.5 CPU hours


@pytest.fixture
def random_proxy_folder(tmp_path):
    """A proxy folder laid out like the shipped one, with seeded random weights (no training)."""
    from latentsync_cli.train.unet import build_unet
    from latentsync_cli.train.vae import build_vae

    save_file({k: v.half().contiguous() for k, v in build_unet(proxy_unet_config(), 0).state_dict().items()},
              tmp_path / UNET_FILE)
    save_file({k: v.half().contiguous() for k, v in build_vae(proxy_vae_config(), 0).state_dict().items()},
              tmp_path / VAE_FILE)
    manifest = {
        "format": MANIFEST_FORMAT,
        "resolution": PROXY_RESOLUTION,
        "unet_config": json.loads(json.dumps(asdict(proxy_unet_config()))),
        "vae_config": proxy_vae_config(),
        "audio_encoder": {"seed": 0, "sha256": state_digest(proxy_audio_encoder())},
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tmp_path


def test_a_proxy_folder_loads(random_proxy_folder):
    models = load_proxy("cpu", torch.float32, random_proxy_folder)
    assert models.manifest["resolution"] == PROXY_RESOLUTION
    latents = torch.zeros((1, 4, PROXY_RESOLUTION // 8, PROXY_RESOLUTION // 8))
    assert models.vae.decode(latents).sample.shape == (1, 3, PROXY_RESOLUTION, PROXY_RESOLUTION)


def test_a_missing_proxy_file_is_one_clear_line(random_proxy_folder):
    (random_proxy_folder / VAE_FILE).unlink()
    with pytest.raises(WeightsError) as caught:
        check_proxy_files(random_proxy_folder)
    assert VAE_FILE in caught.value.message and "reinstall" in caught.value.message
    assert "\n" not in caught.value.message


def test_an_audio_encoder_rebuilt_with_other_numbers_is_refused(random_proxy_folder):
    manifest = json.loads((random_proxy_folder / MANIFEST_FILE).read_text())
    manifest["audio_encoder"]["sha256"] = "0" * 64  # what another torch's initialisation would give
    (random_proxy_folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError) as caught:
        load_proxy("cpu", torch.float32, random_proxy_folder)
    assert "rebuilds the proxy's audio encoder" in caught.value.message and "\n" not in caught.value.message


def test_a_manifest_of_another_architecture_is_refused(random_proxy_folder):
    manifest = json.loads((random_proxy_folder / MANIFEST_FILE).read_text())
    manifest["vae_config"]["block_out_channels"] = [8, 8, 8, 8]
    (random_proxy_folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="vae_config"):
        load_proxy("cpu", torch.float32, random_proxy_folder)


def test_the_audio_encoder_is_rebuilt_the_same_each_time():
    assert state_digest(proxy_audio_encoder()) == state_digest(proxy_audio_encoder())


def test_the_audio_encoder_hears_the_speech_more_than_the_position():
    """Two different sounds at the same frames: the proxy's features differ far more than the clock they share
    (the sinusoidal positions); with PyTorch's default init unchanged (stem gain 1) they barely differ."""
    from latentsync_cli.models.audio_features import AudioFeatureExtractor

    seconds = np.arange(16000 * 2) / 16000
    rng = np.random.default_rng(0)
    sounds = (0.3 * np.sin(2 * np.pi * 220 * seconds) * (np.sin(2 * np.pi * 3 * seconds) > 0),
              0.1 * rng.standard_normal(seconds.size))

    def apart(stem_gain: float) -> float:
        extract = AudioFeatureExtractor(proxy_audio_encoder(stem_gain=stem_gain))
        first, second = (extract(sound.astype(np.float32)) for sound in sounds)
        return float((first - second).norm() / first.norm())

    assert apart(AUDIO_STEM_GAIN) > 0.4
    assert apart(1.0) < 0.25

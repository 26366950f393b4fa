"""Where weights come from (checkpoint dir, Hub cache, download), the verify check, and the random bundles.

The checkpoint folders here hold tiny-architecture weights in the real file
formats; the full-size architecture is checked only through its expected shapes.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import UNET_KEY
from safetensors.torch import load_file, save_file

from latentsync_cli.errors import UsageError, WeightsError
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import load_vae
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, load_whisper_encoder
from latentsync_cli.weights.checkpoint import expected_state_shapes
from latentsync_cli.weights.files import check_weights_available, find_weight_files, locate_weights
from latentsync_cli.weights.load import load_models
from latentsync_cli.weights.verify import Architecture, read_state_shapes, verify_weights

VAE_ATTENTION = "encoder.mid_block.attentions.0"


def _read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return {key: tuple(ast.literal_eval(shape)) for key, shape, _dtype in rows}


def _all_problems(report) -> str:
    return " ".join(problem for check in report.checks for problem in check.problems)


# --------------------------------------------------------------------------- the full-size architecture


def test_full_unet_architecture_matches_the_upstream_manifest(reference_dir):
    expected = expected_state_shapes(Architecture.latentsync_1_6().unet)
    assert dict(expected) == _read_manifest(reference_dir / "unet_stage2_512_state_dict.tsv")


def test_whisper_encoder_matches_the_encoder_rows_of_the_manifest(reference_dir):
    manifest = _read_manifest(reference_dir / "whisper_tiny_state_dict.tsv")
    with torch.device("meta"):
        encoder = AudioEncoder(Architecture.latentsync_1_6().whisper)
    actual = {"encoder." + key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert actual == {key: shape for key, shape in manifest.items() if key.startswith("encoder.")}


# --------------------------------------------------------------------------- verify


def test_verify_passes_on_the_right_layout(tiny_dir):
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert report.ok, report.failure_message()
    assert [check.file.role for check in report.checks] == ["unet", "whisper", "vae-config", "vae-weights"]
    assert all(check.file.size_bytes > 0 for check in report.checks)


def test_verify_against_the_full_architecture_fails_on_tiny_weights(tiny_dir_template):
    report = verify_weights(tiny_dir_template, Architecture.latentsync_1_6())
    assert not report.ok
    assert "conv_in.weight" in report.failure_message()


def test_verify_names_the_tensor_with_the_wrong_shape(tiny_dir):
    path = tiny_dir / "latentsync_unet.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"][UNET_KEY] = torch.zeros(32, 9, 3, 3)
    torch.save(checkpoint, path)
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert not report.ok
    unet_check = report.checks[0]
    assert not unet_check.ok and UNET_KEY in " ".join(unet_check.problems)
    assert all(check.ok for check in report.checks[1:])
    assert UNET_KEY in report.failure_message() and "\n" not in report.failure_message()


def test_verify_names_a_missing_key_in_the_whisper_file(tiny_dir):
    path = tiny_dir / "whisper" / "tiny.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["model_state_dict"]["encoder.ln_post.weight"]
    torch.save(checkpoint, path)
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert "encoder.ln_post.weight" in _all_problems(report)
    assert not report.checks[1].ok


def test_verify_names_a_missing_file(tiny_dir):
    (tiny_dir / "whisper" / "tiny.pt").unlink()
    report = verify_weights(tiny_dir, Architecture.tiny())
    whisper = report.checks[1]
    assert not whisper.file.present and not whisper.ok
    assert "whisper/tiny.pt" in report.failure_message()
    assert "latentsync models download" in report.failure_message()


def test_verify_reports_a_corrupt_file(tiny_dir):
    (tiny_dir / "latentsync_unet.pt").write_bytes(b"\x00truncated download")
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert not report.checks[0].ok
    assert "cannot read" in report.checks[0].problems[0]


def test_read_state_shapes_corrupt_file_is_a_weights_error(tmp_path):
    for name in ("bad.pt", "bad.safetensors"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsError, match=name):
            read_state_shapes(tmp_path / name)


def test_a_safetensors_unet_is_accepted_and_checked(tiny_dir):
    pt_path = tiny_dir / "latentsync_unet.pt"
    state = torch.load(pt_path, weights_only=True)["state_dict"]
    pt_path.unlink()
    save_file({key: value.contiguous() for key, value in state.items()}, tiny_dir / "latentsync_unet.safetensors")
    assert verify_weights(tiny_dir, Architecture.tiny()).ok
    assert find_weight_files(tiny_dir)[0].filename == "latentsync_unet.safetensors"

    state[UNET_KEY] = torch.zeros(3, 3)
    save_file({key: value.contiguous() for key, value in state.items()}, tiny_dir / "latentsync_unet.safetensors")
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert not report.ok and UNET_KEY in report.failure_message()


def test_the_old_vae_attention_names_are_accepted(tiny_dir):
    path = tiny_dir / "vae" / "diffusion_pytorch_model.safetensors"
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = load_file(path)
    old_style = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        old_style[key] = value
    assert f"{VAE_ATTENTION}.query.weight" in old_style
    save_file(old_style, path)
    assert verify_weights(tiny_dir, Architecture.tiny()).ok


def test_verify_checks_the_vae_config(tiny_dir):
    config = tiny_dir / "vae" / "config.json"
    config.write_text(config.read_text().replace('"latent_channels": 4', '"latent_channels": 16'))
    report = verify_weights(tiny_dir, Architecture.tiny())
    assert "latent_channels 16 != 4" in _all_problems(report)


# --------------------------------------------------------------------------- locate


def test_locate_weights_in_a_checkpoint_dir(tiny_dir):
    paths = locate_weights(tiny_dir)
    assert paths.unet == tiny_dir / "latentsync_unet.pt"
    assert paths.whisper == tiny_dir / "whisper" / "tiny.pt"
    assert paths.vae == tiny_dir / "vae"


def test_locate_weights_names_the_file_missing_from_the_checkpoint_dir(tiny_dir):
    (tiny_dir / "latentsync_unet.pt").unlink()
    with pytest.raises(WeightsError, match="latentsync_unet.pt") as raised:
        locate_weights(tiny_dir)
    assert f"latentsync models download --checkpoint-dir {tiny_dir}" in str(raised.value)


def test_locate_weights_offline_with_an_empty_cache_says_how_to_fetch_them(offline_empty_hub):
    with pytest.raises(WeightsError) as raised:
        locate_weights()
    message = str(raised.value)
    assert "`latentsync models download`" in message
    assert "ByteDance/LatentSync-1.6: latentsync_unet.pt, whisper/tiny.pt" in message
    assert "stabilityai/sd-vae-ft-mse" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    assert raised.value.exit_code == 5


def test_locate_weights_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(WeightsError, match="unreachable.*latentsync models download"):
        locate_weights()


def test_locate_weights_never_downloads_when_told_not_to(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsError, match="downloads are disabled"):
        locate_weights(allow_download=False)


def _put_in_hub_cache(home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for filename, source in files.items():
        target = repo / "snapshots" / commit / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


def test_locate_weights_finds_them_in_the_hub_cache_offline(offline_empty_hub, tiny_dir_template):
    _put_in_hub_cache(
        offline_empty_hub,
        "ByteDance/LatentSync-1.6",
        {
            "latentsync_unet.pt": tiny_dir_template / "latentsync_unet.pt",
            "whisper/tiny.pt": tiny_dir_template / "whisper" / "tiny.pt",
        },
    )
    _put_in_hub_cache(
        offline_empty_hub,
        "stabilityai/sd-vae-ft-mse",
        {name: tiny_dir_template / "vae" / name for name in ("config.json", "diffusion_pytorch_model.safetensors")},
    )
    paths = locate_weights()
    assert paths.unet.name == "latentsync_unet.pt" and paths.unet.is_file()
    assert paths.whisper.parts[-2:] == ("whisper", "tiny.pt")
    assert (paths.vae / "config.json").is_file()
    assert str(paths.unet).startswith(str(offline_empty_hub))
    assert verify_weights(None, Architecture.tiny()).ok


def test_a_checkpoint_dir_without_vae_takes_the_vae_from_the_hub_cache(tiny_dir, offline_empty_hub):
    shutil.rmtree(tiny_dir / "vae")
    with pytest.raises(WeightsError, match=r"model weights not found \(stabilityai/sd-vae-ft-mse\)"):
        locate_weights(tiny_dir)


# --------------------------------------------------------------------------- checking before loading

# Runs check_weights_available in a fresh interpreter, then says which heavy modules it imported.
CHECK_IN_A_FRESH_PROCESS = """
import json, sys
from latentsync_cli.errors import WeightsError
from latentsync_cli.weights.files import check_weights_available
try:
    check_weights_available(sys.argv[1], None)
    message = None
except WeightsError as error:
    message = error.message
heavy = [name for name in ("torch", "diffusers", "safetensors") if name in sys.modules]
print(json.dumps({"message": message, "heavy": heavy}))
"""


def _check_in_a_fresh_process(weights: str, **env: str | None) -> dict:
    environment = {**os.environ, **{key: value for key, value in env.items() if value is not None}}
    for key in [key for key, value in env.items() if value is None]:
        environment.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", CHECK_IN_A_FRESH_PROCESS, weights],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_check_weights_available_offline_fails_before_importing_torch(tmp_path):
    result = _check_in_a_fresh_process(
        "checkpoint", HF_HOME=str(tmp_path), HF_HUB_CACHE=None, HF_HUB_OFFLINE="1", HF_ENDPOINT=None
    )
    assert result["heavy"] == []
    assert "HF_HUB_OFFLINE is set" in result["message"]
    assert "ByteDance/LatentSync-1.6: latentsync_unet.pt, whisper/tiny.pt" in result["message"]
    assert "`latentsync models download`" in result["message"]


def test_check_weights_available_with_an_unreachable_hub_fails_before_importing_torch(tmp_path):
    result = _check_in_a_fresh_process(
        "auto", HF_HOME=str(tmp_path), HF_HUB_CACHE=None, HF_HUB_OFFLINE=None, HF_ENDPOINT="http://127.0.0.1:9"
    )
    assert result["heavy"] == []
    assert "unreachable" in result["message"] and "`latentsync models download`" in result["message"]


def test_check_weights_available_gives_the_same_error_as_loading(offline_empty_hub):
    with pytest.raises(WeightsError) as checked:
        check_weights_available("auto", None)
    with pytest.raises(WeightsError) as loaded:
        load_models("auto")
    assert str(checked.value) == str(loaded.value)
    assert checked.value.exit_code == loaded.value.exit_code == 5


def test_check_weights_available_names_the_file_missing_from_the_checkpoint_dir(tiny_dir):
    check_weights_available("checkpoint", tiny_dir)
    (tiny_dir / "whisper" / "tiny.pt").unlink()
    with pytest.raises(WeightsError, match="tiny.pt not found"):
        check_weights_available("checkpoint", tiny_dir)
    with pytest.raises(WeightsError, match="is not a folder"):
        check_weights_available("checkpoint", tiny_dir / "nope")


def test_check_weights_available_needs_no_files_for_random_weights(offline_empty_hub, tmp_path):
    for weights in ("random", "random-tiny"):
        assert check_weights_available(weights, None) is None
        assert check_weights_available(weights, tmp_path / "nope") is None


def test_a_hub_that_accepts_but_never_answers_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; no one reads or replies
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(WeightsError, match="unreachable.*latentsync models download"):
            check_weights_available("checkpoint", None)


def test_a_hub_probe_stuck_in_the_dns_lookup_is_given_up(monkeypatch, tmp_path):
    """The request's own timeouts do not cover getaddrinfo; the probe's deadline does."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    released = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def resolver_that_never_answers(*args, **kwargs):
        released.wait(timeout=60)  # without the deadline, the probe would wait here, then be refused
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver_that_never_answers)
    try:
        with pytest.raises(WeightsError, match=r"unreachable: no answer within .*latentsync models download"):
            check_weights_available("checkpoint", None)
    finally:
        released.set()


# --------------------------------------------------------------------------- bundles


def test_random_tiny_bundle_is_seeded_and_says_what_it_is():
    bundle = load_models("random-tiny", seed=3)
    assert bundle.resolution == 256 and bundle.is_random and bundle.weights_id == "random-tiny"
    assert "not a lip-sync" in bundle.description
    assert bundle.unet.config == UNetConfig.tiny()
    assert bundle.audio_encoder.dims == WhisperDims.tiny()
    assert (bundle.resolution // 8) % bundle.unet.config.downscale_factor == 0  # 32x32 latents fit the UNet

    again = load_models("random-tiny", seed=3)
    for a, b in ((bundle.unet, again.unet), (bundle.vae, again.vae), (bundle.audio_encoder, again.audio_encoder)):
        for (key, tensor), other in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(tensor, other), key
    other_seed = load_models("random-tiny", seed=4)
    assert not torch.equal(bundle.unet.state_dict()[UNET_KEY], other_seed.unet.state_dict()[UNET_KEY])


def test_random_tiny_bundle_in_another_dtype():
    bundle = load_models("random-tiny", dtype=torch.float64, seed=0)
    assert bundle.unet.dtype == bundle.vae.dtype == torch.float64
    assert next(bundle.audio_encoder.parameters()).dtype == torch.float64


def test_unknown_weights_choice_is_a_usage_error():
    with pytest.raises(UsageError, match="random-tiny"):
        load_models("pretrained")


def test_checkpoint_weights_offline_without_files_fail_before_building_anything(offline_empty_hub):
    with pytest.raises(WeightsError, match="latentsync models download"):
        load_models("checkpoint")


def test_located_files_load_with_the_real_loaders(tiny_dir_template):
    paths = locate_weights(tiny_dir_template)
    assert load_vae(paths.vae).config.latent_channels == 4
    assert load_whisper_encoder(paths.whisper).dims == WhisperDims.tiny()


def test_checkpoint_weights_of_the_wrong_architecture_name_the_key(tiny_dir_template):
    with pytest.raises(WeightsError, match="conv_in.weight"):
        load_models("checkpoint", checkpoint_dir=tiny_dir_template)

"""Reading weight files safely, strict loading, random initialisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from latentsync_cli.errors import ExitCode, WeightsError
from latentsync_cli.models.motion import sinusoid_table
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.weights.checkpoint import (
    build_meta_unet,
    build_random_unet,
    compare_state_shapes,
    expected_state_shapes,
    init_random_weights,
    load_unet,
    read_state_dict,
)

TINY = UNetConfig.tiny()


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    model = build_random_unet(TINY, seed=3)
    return {key: value.clone() for key, value in model.state_dict().items()}


def save_wrapped(state: dict, path):
    torch.save({"global_step": 7, "state_dict": state}, path)
    return path


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_reads_wrapped_plain_and_safetensors(tiny_state, tmp_path):
    wrapped = read_state_dict(save_wrapped(tiny_state, tmp_path / "unet.pt"))
    torch.save(tiny_state, tmp_path / "plain.pt")
    plain = read_state_dict(tmp_path / "plain.pt")
    save_file(tiny_state, tmp_path / "unet.safetensors")
    safetensors = read_state_dict(tmp_path / "unet.safetensors")
    assert_same_state(wrapped, tiny_state)
    assert_same_state(plain, tiny_state)
    assert sorted(safetensors) == sorted(tiny_state)
    for key in tiny_state:
        torch.testing.assert_close(safetensors[key], tiny_state[key], rtol=0, atol=0)


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="latentsync models download") as raised:
        read_state_dict(tmp_path / "nothing.pt")
    assert raised.value.exit_code == ExitCode.WEIGHTS


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_asks_for_a_fresh_download(tiny_state, tmp_path, suffix):
    path = tmp_path / f"unet{suffix}"
    if suffix == ".pt":
        save_wrapped(tiny_state, path)
    else:
        save_file(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as raised:
        read_state_dict(path)
    message = str(raised.value)
    assert str(path) in message
    assert "latentsync models download" in message
    assert "\n" not in message


def test_garbage_file_is_a_weights_error(tmp_path):
    path = tmp_path / "unet.pt"
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WeightsError, match="corrupt"):
        read_state_dict(path)


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv_in.weight": NotATensor()}}, path)
    with pytest.raises(WeightsError, match="evil.pt"):
        read_state_dict(path)


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"conv_in.weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(WeightsError, match="not tensors"):
        read_state_dict(path)


def test_load_unet_round_trip_in_target_dtype(tiny_state, tmp_path):
    path = save_wrapped(tiny_state, tmp_path / "unet.pt")
    model = load_unet(path, TINY, "cpu", torch.bfloat16)
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(tiny_state)
    for key, value in loaded.items():
        assert value.dtype == torch.bfloat16 and not value.is_meta, key
        torch.testing.assert_close(value, tiny_state[key].to(torch.bfloat16), rtol=0, atol=0)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_load_unet_names_mis_shaped_keys(tiny_state, tmp_path):
    state = dict(tiny_state)
    state["conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    path = save_wrapped(state, tmp_path / "sd15_unet.pt")
    with pytest.raises(WeightsError) as raised:
        load_unet(path, TINY)
    message = str(raised.value)
    assert message.startswith(str(path))
    assert "conv_in.weight: sd15_unet.pt (32, 4, 3, 3) vs model (32, 13, 3, 3)" in message
    assert "1 key(s) with the wrong shape" in message


def test_load_unet_counts_missing_and_unexpected_keys(tiny_state, tmp_path):
    state = dict(tiny_state)
    dropped = [key for key in state if "motion_modules" in key]
    for key in dropped:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    path = save_wrapped(state, tmp_path / "unet.pt")
    with pytest.raises(WeightsError) as raised:
        load_unet(path, TINY)
    message = str(raised.value)
    assert f"{len(dropped)} key(s) missing from unet.pt: {dropped[0]}" in message
    assert "1 unexpected key(s) in unet.pt: extra.weight" in message


def test_compare_state_shapes_lists_every_problem_kind():
    expected = {"a": (1,), "b": (2, 2), "c": (3,)}
    actual = {"a": (1,), "b": (2, 3), "d": (4,)}
    problems = compare_state_shapes(expected, actual, "file.pt")
    assert problems == [
        "1 key(s) missing from file.pt: c",
        "1 unexpected key(s) in file.pt: d",
        "1 key(s) with the wrong shape: b: file.pt (2, 3) vs model (2, 2)",
    ]
    assert compare_state_shapes(expected, dict(expected), "file.pt") == []


def test_expected_state_shapes_from_config_or_model():
    from_config = expected_state_shapes(UNetConfig.latentsync_1_6())
    assert len(from_config) == 1246
    assert from_config["conv_in.weight"] == (320, 13, 3, 3)
    assert expected_state_shapes(build_meta_unet(TINY)) == expected_state_shapes(TINY)
    assert len(expected_state_shapes(TINY)) == 1244


def test_random_init_is_seeded_and_not_trivial():
    first = build_random_unet(TINY, seed=11).state_dict()
    again = build_random_unet(TINY, seed=11).state_dict()
    other = build_random_unet(TINY, seed=12).state_dict()
    assert_same_state(first, again)
    assert not torch.equal(first["conv_in.weight"], other["conv_in.weight"])
    # Layers upstream zero-initialises are non-zero, norms start at identity, position tables are exact.
    for key in ("conv_out.weight", "down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"):
        assert first[key].abs().sum() > 0
        assert abs(first[key].std().item() - 0.02) < 0.005
    assert torch.equal(first["down_blocks.0.resnets.0.norm1.weight"], torch.ones(32))
    key = "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    pe = first[key]
    torch.testing.assert_close(pe, sinusoid_table(24, 32), rtol=0, atol=0)


def test_random_init_needs_real_memory():
    with pytest.raises(ValueError, match="to_empty"):
        init_random_weights(build_meta_unet(TINY), seed=0)


def test_random_unet_in_half_precision_has_the_fp32_weights_rounded():
    half = build_random_unet(TINY, "cpu", torch.float16, seed=5)
    full = build_random_unet(TINY, "cpu", torch.float32, seed=5)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert {b.dtype for b in half.buffers()} == {torch.float16}
    assert not half.training
    full_state = full.state_dict()
    for key, value in half.state_dict().items():
        torch.testing.assert_close(value, full_state[key].half(), rtol=0, atol=0, msg=key)

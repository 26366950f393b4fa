"""The UNet: upstream-compatible structure, forward semantics, DeepCache, golden parity."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from latentsync_cli.errors import WeightsError
from latentsync_cli.models.motion import sinusoid_table
from latentsync_cli.models.unet import FeatureCache
from latentsync_cli.models.unet_blocks import FrameGroupNorm
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.weights.checkpoint import build_meta_unet, build_random_unet

TINY = UNetConfig.tiny()

# The smallest upstream config dict that means LatentSync 1.6: every other key takes upstream's default.
UPSTREAM_1_6 = {
    "sample_size": 64,
    "in_channels": 13,
    "cross_attention_dim": 384,
    "add_audio_layer": True,
    "use_motion_module": True,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_transformer_block": 1,
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
    },
}


def make_inputs(batch: int = 2, frames: int = 4, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 13, frames, size, size, generator=generator)
    audio = torch.randn(batch * frames, 50, 384, generator=generator)
    return sample, audio


def read_manifest(path) -> dict[str, tuple[int, ...]]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"]
    shapes = {}
    for line in lines[1:]:
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(json.loads(shape))
    return shapes


# --- structure and config ---------------------------------------------------------------


def test_state_dict_has_upstream_keys_and_shapes(reference_dir):
    expected = read_manifest(reference_dir / "unet_stage2_512_state_dict.tsv")
    model = build_meta_unet(UNetConfig.latentsync_1_6())
    actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert len(expected) == 1246
    assert sorted(actual) == sorted(expected)
    assert [key for key in expected if actual[key] != expected[key]] == []
    params = sum(p.numel() for p in model.parameters())
    assert params == 1_267_099_844


def test_motion_modules_everywhere_but_the_mid_block():
    model = build_meta_unet(UNetConfig.latentsync_1_6())
    names = [name for name, _ in model.named_modules() if name.endswith("temporal_transformer")]
    assert len(names) == 20
    assert not any(name.startswith("mid_block") for name in names)


@pytest.mark.parametrize("config", [UNetConfig.latentsync_1_6(), UNetConfig(layers_per_block=1), TINY])
def test_config_counts_the_skip_tensors_the_model_leaves(config):
    model = build_meta_unet(config)
    assert config.num_skips == model.num_skips == len(model.down_steps) + 1
    assert sorted(model.up_step_consuming) == list(range(model.num_skips))


def test_from_dict_fills_upstream_defaults():
    assert UNetConfig.from_dict(UPSTREAM_1_6) == UNetConfig.latentsync_1_6()
    tiny = {**UPSTREAM_1_6, "block_out_channels": [32, 64, 64, 64], "sample_size": 8, "_class_name": "x"}
    assert UNetConfig.from_dict(tiny) == UNetConfig.tiny()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("use_linear_projection", True),
        ("use_motion_module", False),
        ("motion_module_mid_block", True),
        ("add_audio_layer", False),
        ("resnet_time_scale_shift", "scale_shift"),
        ("attention_head_dim", [8, 8, 16, 16]),
        ("down_block_types", ["CrossAttnDownBlock3D", "DownBlock3D"]),
        ("block_out_channels", [320, 640, 1280, 1290]),
        ("no_such_option", 1),
    ],
)
def test_from_dict_rejects_unsupported_options(key, value):
    with pytest.raises(WeightsError) as raised:
        UNetConfig.from_dict({**UPSTREAM_1_6, key: value}, source="stage2.yaml")
    message = str(raised.value)
    assert message.startswith("stage2.yaml: ")
    assert "\n" not in message
    if key in ("use_linear_projection", "no_such_option", "resnet_time_scale_shift"):
        assert key in message


def test_from_dict_rejects_bad_motion_options():
    bad = {**UPSTREAM_1_6, "motion_module_kwargs": {**UPSTREAM_1_6["motion_module_kwargs"], "warp": 2}}
    with pytest.raises(WeightsError, match="warp"):
        UNetConfig.from_dict(bad)
    no_table = {**UPSTREAM_1_6, "motion_module_kwargs": {"num_transformer_block": 1}}
    with pytest.raises(WeightsError, match="temporal_position_encoding"):
        UNetConfig.from_dict(no_table)


def test_golden_unet_config_is_tiny(golden_dir):
    config = json.loads((golden_dir / "unet_tiny_config.json").read_text())
    assert UNetConfig.from_dict(config) == UNetConfig.tiny()


# --- forward ----------------------------------------------------------------------------


def test_frame_group_norm_spans_all_frames():
    generator = torch.Generator().manual_seed(1)
    clip = torch.randn(2, 64, 5, 4, 4, generator=generator)  # (B, C, F, H, W)
    norm = FrameGroupNorm(32, 64)
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
    reference = torch.nn.functional.group_norm(clip, 32, norm.weight, norm.bias, norm.eps)
    folded = clip.transpose(1, 2).reshape(10, 64, 4, 4)
    ours = norm(folded, num_frames=5).reshape(2, 5, 64, 4, 4).transpose(1, 2)
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize(("batch", "frames", "size"), [(2, 1, 8), (1, 5, 16), (1, 24, 8)])
def test_output_shape(tiny_unet, batch, frames, size):
    sample, audio = make_inputs(batch=batch, frames=frames, size=size)
    with torch.no_grad():
        out = tiny_unet(sample, 501, audio)
    assert out.shape == (batch, 4, frames, size, size)
    assert out.is_contiguous()
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_rejects_bad_shapes(tiny_unet):
    sample, audio = make_inputs(batch=1, frames=25, size=8)
    with pytest.raises(ValueError, match="24 frames"):
        tiny_unet(sample, 1, audio)
    sample, audio = make_inputs(batch=1, frames=2, size=12)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_unet(sample, 1, audio)
    sample, audio = make_inputs(batch=1, frames=2, size=8)
    with pytest.raises(ValueError, match="audio_embeds"):
        tiny_unet(sample, 1, audio[:1])


def test_timestep_forms_agree(tiny_unet):
    sample, audio = make_inputs(batch=2, frames=2, size=8)
    with torch.no_grad():
        as_int = tiny_unet(sample, 751, audio)
        as_scalar = tiny_unet(sample, torch.tensor(751), audio)
        as_batch = tiny_unet(sample, torch.tensor([751, 751]), audio)
        other = tiny_unet(sample, torch.tensor([751, 11]), audio)
    torch.testing.assert_close(as_scalar, as_int, rtol=0, atol=0)
    torch.testing.assert_close(as_batch, as_int, rtol=0, atol=0)
    torch.testing.assert_close(other[0], as_int[0])
    assert not torch.allclose(other[1], as_int[1])


def test_audio_rows_are_batch_major(tiny_unet):
    """Rows F..2F-1 of the audio belong to batch item 1: changing them leaves item 0 alone."""
    sample, audio = make_inputs(batch=2, frames=3, size=8)
    changed = audio.clone()
    changed[3:] = torch.randn(3, 50, 384, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = tiny_unet(sample, 501, audio)
        after = tiny_unet(sample, 501, changed)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    assert (after[1] - before[1]).abs().max() > 1e-3


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.08), (torch.float16, 0.02)])
def test_half_precision_follows_fp32(tiny_unet, dtype, tolerance):
    sample, audio = make_inputs(batch=1, frames=2, size=8)
    half = copy.deepcopy(tiny_unet).to(dtype)
    with torch.no_grad():
        reference = tiny_unet(sample, 501, audio)
        out = half(sample.to(dtype), 501, audio.to(dtype))
    assert out.dtype == dtype
    error = (out.float() - reference).abs().max() / reference.abs().max()
    assert error < tolerance


def test_traces_as_one_graph():
    """No data-dependent Python control flow: dynamo captures a caching pass whole (a 2-level UNet, to be quick)."""
    config = UNetConfig(
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=1,
        motion_module_resolutions=(1, 2),
    )
    model = build_random_unet(config, seed=0)
    sample, audio = make_inputs(batch=1, frames=2, size=8)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    eager_cache, compiled_cache = FeatureCache(branch=1), FeatureCache(branch=1)
    with torch.no_grad():
        expected = model(sample, torch.tensor(501), audio, eager_cache)
        out = compiled(sample, torch.tensor(501), audio, compiled_cache)
    torch._dynamo.reset()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(compiled_cache.hidden, eager_cache.hidden)


# --- DeepCache --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_pass(tiny_unet):
    sample, audio = make_inputs(batch=2, frames=3, size=8)
    with torch.no_grad():
        return sample, audio, tiny_unet(sample, 301, audio)


@pytest.mark.parametrize("branch", range(12))
def test_reuse_pass_reproduces_full_pass(tiny_unet, plain_pass, branch):
    sample, audio, plain = plain_pass
    cache = FeatureCache(branch=branch)
    with torch.no_grad():
        full = tiny_unet(sample, 301, audio, cache)
        assert cache.hidden is not None
        cache.reuse = True
        shallow = tiny_unet(sample, 301, audio, cache)
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    torch.testing.assert_close(shallow, full, rtol=1e-5, atol=1e-5)


def count_calls(model: torch.nn.Module, names: list[str]):
    counts = dict.fromkeys(names, 0)
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def hook(module, args, output, name=name):
            counts[name] += 1

        handles.append(modules[name].register_forward_hook(hook))
    return counts, handles


@pytest.mark.parametrize(
    ("branch", "run", "skipped"),
    [
        (
            0,
            [
                "conv_in",
                "time_embedding",
                "up_blocks.3.resnets.2",
                "up_blocks.3.attentions.2",
                "up_blocks.3.motion_modules.2",
                "conv_norm_out",
                "conv_out",
            ],
            [
                "down_blocks.0.resnets.0",
                "mid_block",
                "up_blocks.0.resnets.0",
                "up_blocks.3.resnets.1",
                "up_blocks.3.motion_modules.0",
                "up_blocks.3.motion_modules.1",
                "up_blocks.2.upsamplers.0",
            ],
        ),
        (
            1,
            [
                "down_blocks.0.resnets.0",
                "down_blocks.0.motion_modules.0",
                "up_blocks.3.resnets.1",
                "up_blocks.3.motion_modules.1",
                "up_blocks.3.resnets.2",
            ],
            [
                "down_blocks.0.resnets.1",
                "down_blocks.0.downsamplers.0",
                "mid_block",
                "up_blocks.3.resnets.0",
                "up_blocks.3.motion_modules.0",
                "up_blocks.2.upsamplers.0",
            ],
        ),
        (
            3,  # s3 is down_blocks.0's downsampler output: the hidden enters up_blocks.2's last layer
            [
                "down_blocks.0.downsamplers.0",
                "up_blocks.2.resnets.2",
                "up_blocks.2.upsamplers.0",
                "up_blocks.3.resnets.0",
            ],
            ["down_blocks.1.resnets.0", "mid_block", "up_blocks.2.resnets.1"],
        ),
    ],
)
def test_reuse_pass_runs_only_shallow_modules(tiny_unet, branch, run, skipped):
    sample, audio = make_inputs(batch=1, frames=2, size=8)
    cache = FeatureCache(branch=branch)
    with torch.no_grad():
        tiny_unet(sample, 501, audio, cache)
        cache.reuse = True
        counts, handles = count_calls(tiny_unet, run + skipped)
        try:
            tiny_unet(sample, 501, audio, cache)
        finally:
            for handle in handles:
                handle.remove()
    assert {name: counts[name] for name in run} == dict.fromkeys(run, 1)
    assert {name: counts[name] for name in skipped} == dict.fromkeys(skipped, 0)


def test_cache_misuse_is_reported(tiny_unet):
    sample, audio = make_inputs(batch=1, frames=2, size=8)
    with pytest.raises(ValueError, match="full pass"):
        tiny_unet(sample, 1, audio, FeatureCache(branch=0, reuse=True))
    with pytest.raises(ValueError, match="branch"):
        tiny_unet(sample, 1, audio, FeatureCache(branch=12))
    cache = FeatureCache(branch=2)
    with torch.no_grad():
        tiny_unet(sample, 1, audio, cache)
    cache.reuse = True
    bigger, bigger_audio = make_inputs(batch=1, frames=2, size=16)
    with pytest.raises(ValueError, match="another shape"):
        tiny_unet(bigger, 1, bigger_audio, cache)


# --- golden parity with upstream (fixtures made by upstream's code on CPU, fp32) ---------


@pytest.fixture(scope="module")
def golden_forward(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "unet_tiny_forward.safetensors")


def f5_audio(golden_forward) -> torch.Tensor:
    audio = golden_forward["encoder_hidden_states"]  # 16 frames per batch item
    return torch.cat([audio[0:5], audio[16:21]])


def test_golden_unet_output(golden_unet, golden_forward):
    g = golden_forward
    with torch.no_grad():
        out = golden_unet(g["sample"], g["timestep"], g["encoder_hidden_states"])
    torch.testing.assert_close(out, g["output"], rtol=0, atol=1e-3)


def test_golden_unet_f5hw16_output(golden_unet, golden_forward):
    g = golden_forward
    with torch.no_grad():
        out = golden_unet(g["f5hw16.sample"], g["f5.timestep"], f5_audio(g))
    torch.testing.assert_close(out, g["f5hw16.output"], rtol=0, atol=1e-4)


def block_output_module(block: torch.nn.Module) -> str:
    """The submodule whose output is the block's output (upstream's block-level hooks)."""
    if getattr(block, "downsamplers", None) is not None:
        return "downsamplers.0"
    if getattr(block, "upsamplers", None) is not None:
        return "upsamplers.0"
    if block.motion_modules is not None:
        return f"motion_modules.{block.num_layers - 1}"
    if block.attentions is not None:
        return f"attentions.{block.num_layers - 1}"
    return f"resnets.{block.num_layers - 1}"


def test_golden_unet_f5_output_and_intermediates(golden_unet, golden_forward):
    g = golden_forward
    batch, frames = 2, 5
    names = {"time_embedding": "time_embedding", "conv_in": "conv_in", "mid_block": "mid_block"}
    names["conv_norm_out"] = "conv_norm_out"  # hooked before the SiLU, as upstream's fixture
    for path in ("down_blocks", "up_blocks"):
        for index, block in enumerate(getattr(golden_unet, path)):
            names[f"{path}.{index}"] = f"{path}.{index}.{block_output_module(block)}"
    captured = {}
    modules = dict(golden_unet.named_modules())
    handles = [
        modules[ours].register_forward_hook(lambda m, a, out, key=key: captured.__setitem__(key, out))
        for key, ours in names.items()
    ]
    try:
        with torch.no_grad():
            out = golden_unet(g["f5.sample"], g["f5.timestep"], f5_audio(g))
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(out, g["f5.output"], rtol=0, atol=1e-3)

    expected_keys = sorted(key.removeprefix("f5.inter.") for key in g if key.startswith("f5.inter."))
    assert sorted(captured) == expected_keys
    for key, value in captured.items():
        if value.ndim == 4:  # (B*F, C, H, W) -> upstream's (B, C, F, H, W)
            value = value.unflatten(0, (batch, frames)).transpose(1, 2)
        torch.testing.assert_close(value, g[f"f5.inter.{key}"], rtol=0, atol=1e-3, msg=key)


def test_golden_unet_position_tables(golden_unet):
    tables = {key: value for key, value in golden_unet.state_dict().items() if key.endswith("pos_encoder.pe")}
    assert len(tables) == 40
    for key, table in tables.items():
        torch.testing.assert_close(table, sinusoid_table(24, table.shape[-1]), rtol=0, atol=1e-5, msg=key)

"""Read UNet weights safely and load them strictly, without ever holding two copies.

The official `latentsync_unet.pt` is `{"global_step": int, "state_dict": {...}}`.
It is read with `torch.load(weights_only=True, mmap=True)`: no arbitrary objects
are unpickled and tensors stay in the page cache until they are cast. A
`.safetensors` file with the same keys, or a plain state dict, works too.

The model is built on the meta device (no memory), every key and shape is
checked, then each tensor is cast to the target dtype/device one at a time and
handed to the model with `load_state_dict(assign=True)`.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from latentsync_cli.errors import WeightsError
from latentsync_cli.models.motion import PositionalEncoding
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig

REDOWNLOAD = "re-download it with `latentsync models download`"
KEYS_SHOWN = 3  # how many offending keys an error message lists
RANDOM_STD = 0.02  # spread of random weights


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a .pt/.ckpt (wrapped or plain state dict) or .safetensors file, on CPU, memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; download it with `latentsync models download`")
    try:
        if path.suffix == ".safetensors":
            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path}: holds Python objects besides tensors or is damaged ({_first_line(error)}); {REDOWNLOAD}"
        ) from None
    except Exception as error:  # any parse failure means the file is truncated or corrupt
        raise WeightsError(
            f"{path}: cannot read the weights, the file is corrupt or truncated "
            f"({type(error).__name__}: {_first_line(error)}); {REDOWNLOAD}"
        ) from None
    return _unwrap_state_dict(loaded, path)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # the training checkpoint wrapper
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{path}: not a state dict (expected tensors by name); {REDOWNLOAD}")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, Tensor)]
    if not_tensors:
        examples = ", ".join(map(str, not_tensors[:KEYS_SHOWN]))
        raise WeightsError(f"{path}: {len(not_tensors)} entries are not tensors (e.g. {examples}); {REDOWNLOAD}")
    return loaded


def build_meta_unet(config: UNetConfig) -> UNet3DConditionModel:
    """The UNet with every tensor on the meta device: its structure, no memory."""
    with torch.device("meta"):
        return UNet3DConditionModel(config)


def expected_state_shapes(config_or_model: UNetConfig | nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the model (parameters and persistent buffers) and its shape."""
    model = config_or_model
    if isinstance(config_or_model, UNetConfig):
        model = build_meta_unet(config_or_model)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def compare_state_shapes(
    expected: dict[str, tuple[int, ...]],
    actual_shapes: dict[str, tuple[int, ...]],
    source: str,
) -> list[str]:
    """One line per kind of problem (missing, unexpected, mis-shaped keys); empty when they match."""
    problems = []
    missing = [key for key in expected if key not in actual_shapes]
    if missing:
        problems.append(f"{len(missing)} key(s) missing from {source}: {_some(missing)}")
    unexpected = [key for key in actual_shapes if key not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in {source}: {_some(unexpected)}")
    misshaped = [
        f"{key}: {source} {tuple(actual_shapes[key])} vs model {tuple(shape)}"
        for key, shape in expected.items()
        if key in actual_shapes and tuple(actual_shapes[key]) != tuple(shape)
    ]
    if misshaped:
        problems.append(f"{len(misshaped)} key(s) with the wrong shape: {_some(misshaped)}")
    return problems


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:KEYS_SHOWN])
    return shown + (", ..." if len(items) > KEYS_SHOWN else "")


def load_unet(
    path: str | Path,
    config: UNetConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet3DConditionModel:
    """The UNet with the file's weights, strictly checked, in eval mode and without gradients."""
    path = Path(path)
    state = read_state_dict(path)
    model = build_meta_unet(config)
    actual_shapes = {key: tuple(value.shape) for key, value in state.items()}
    problems = compare_state_shapes(expected_state_shapes(model), actual_shapes, path.name)
    if problems:
        raise WeightsError(f"{path}: weights do not fit the UNet: {'; '.join(problems)}; {REDOWNLOAD}")
    for key in list(state):
        # One tensor at a time: the mmapped source page is released as its cast copy replaces it.
        state[key] = state[key].to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def init_random_weights(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights, for timing runs (`--weights random`): deterministic per device and seed.

    Every parameter but the norms is drawn uniformly with standard deviation
    0.02 (the spread of the golden fixtures' recipe; uniform draws are twice as
    fast as normal ones on CPU). Norms start at weight 1, bias 0. Upstream's
    zero-initialised layers (conv_in, conv_out, motion proj_out) become non-zero,
    so outputs are not trivially zero. Position tables are recomputed.
    """
    first = next(model.parameters())
    if first.is_meta:
        raise ValueError("materialise the model first, e.g. model.to_empty(device=...)")
    generator = torch.Generator(device=first.device).manual_seed(seed)
    half_width = RANDOM_STD * math.sqrt(3.0)  # U(-a, a) has std a / sqrt(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                module.weight.fill_(1.0)
                module.bias.zero_()
                continue
            for parameter in module.parameters(recurse=False):
                # Drawn in fp32 whatever the model's dtype, so an fp16 model gets the fp32 model's weights, rounded.
                if parameter.dtype == torch.float32:
                    parameter.uniform_(-half_width, half_width, generator=generator)
                else:
                    draw = torch.empty(parameter.shape, dtype=torch.float32, device=parameter.device)
                    parameter.copy_(draw.uniform_(-half_width, half_width, generator=generator))
            if isinstance(module, PositionalEncoding):
                module.reset_table()
    return model


def build_random_unet(
    config: UNetConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> UNet3DConditionModel:
    """A randomly initialised UNet allocated straight on `device` in `dtype` (no CPU detour)."""
    model = build_meta_unet(config).to(dtype=dtype)
    model.to_empty(device=device)
    init_random_weights(model, seed)
    return model.eval().requires_grad_(False)

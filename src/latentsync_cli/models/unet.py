"""The audio-conditioned 3D UNet of LatentSync 1.6, written to load upstream's checkpoint as is.

Input: 13 latent channels per frame ([noisy 4 | mask 1 | masked image 4 | reference 4]),
a diffusion timestep and per-frame audio tokens; output: the predicted noise.
Internally the frames are folded into the batch, (B*F, C, H, W).

DeepCache is built in: `FeatureCache` lets a caller run the whole UNet once,
keep the hidden state entering one up layer, and on later steps run only the
shallow layers around it (see `UNet3DConditionModel.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from latentsync_cli.errors import WeightsError
from latentsync_cli.models.unet_blocks import DownBlock3D, FrameGroupNorm, UNetMidBlock3DCrossAttn, UpBlock3D

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


@dataclass(frozen=True)
class UNetConfig:
    """Dimensions of the UNet. The defaults are LatentSync 1.6 (configs/unet/stage2_512.yaml)."""

    in_channels: int = 13
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    layers_per_block: int = 2  # down blocks; up blocks have one more
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    attention_heads: int = 8  # upstream calls this `attention_head_dim`, but it is the number of heads
    cross_attention_dim: int = 384  # width of the audio tokens
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)  # downsampling factors that get motion modules
    motion_heads: int = 8
    motion_layers: int = 1  # upstream's num_transformer_block
    motion_attentions: int = 2  # temporal self-attentions per motion layer
    max_frames: int = 24  # slots in the temporal position table
    sample_size: int | None = 64  # latent side the model was trained at (512 px / 8)

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(f"down_block_types and up_block_types need {levels} entries, one per block_out_channels")
        for name in self.down_block_types:
            if name not in DOWN_BLOCK_TYPES:
                raise ValueError(f"down block type {name!r} is not one of {', '.join(DOWN_BLOCK_TYPES)}")
        for name in self.up_block_types:
            if name not in UP_BLOCK_TYPES:
                raise ValueError(f"up block type {name!r} is not one of {', '.join(UP_BLOCK_TYPES)}")
        for channels in self.block_out_channels:
            # 32: the motion modules' GroupNorm has 32 groups whatever norm_num_groups says.
            for divisor in (self.norm_num_groups, 32, self.attention_heads, self.motion_heads):
                if channels % divisor:
                    raise ValueError(f"block width {channels} is not divisible by {divisor}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def downscale_factor(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def latentsync_1_6(cls) -> UNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> UNetConfig:
        """1.6 with narrow blocks: the architecture of the golden `unet_tiny` fixture (5.3 M parameters)."""
        return replace(cls(), block_out_channels=(32, 64, 64, 64), sample_size=8)

    @classmethod
    def from_dict(cls, config: dict, source: str = "UNet config") -> UNetConfig:
        """Read upstream's config dict (the `model:` section of stage2_512.yaml, or its JSON)."""
        try:
            return cls(**_fields_from_upstream(config))
        except ValueError as error:
            raise WeightsError(f"{source}: {error}; use the LatentSync 1.6 UNet config") from None
        except TypeError as error:  # e.g. a list where a number belongs
            raise WeightsError(f"{source}: malformed UNet config ({error}); use the LatentSync 1.6 config") from None


# Defaults of upstream's UNet3DConditionModel.__init__ and VanillaTemporalModule.__init__:
# a key missing from a config dict means these values.
_UPSTREAM_DEFAULTS = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "attention_head_dim": 8,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "use_inflated_groupnorm": False,
    "use_motion_module": False,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": None,
    "motion_module_kwargs": {},
    "add_audio_layer": False,
}
_UPSTREAM_MOTION_DEFAULTS = {
    "num_attention_heads": 8,
    "num_transformer_block": 2,
    "attention_block_types": ["Temporal_Self", "Temporal_Self"],
    "cross_frame_attention_mode": None,
    "temporal_position_encoding": False,
    "temporal_position_encoding_max_len": 24,
    "temporal_attention_dim_div": 1,
    "zero_initialize": True,
}
# Options that change the architecture in ways LatentSync 1.6 does not use: only these values work.
_REQUIRED_VALUES = {
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "use_inflated_groupnorm": False,
    "use_motion_module": True,
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "add_audio_layer": True,
}
_REQUIRED_MOTION_VALUES = {
    "cross_frame_attention_mode": None,
    "temporal_position_encoding": True,
    "temporal_attention_dim_div": 1,
}
# Keys that only matter for training or that upstream's attention never reads.
_IGNORED_KEYS = {"upcast_attention"}
_IGNORED_MOTION_KEYS = {"zero_initialize"}


def _fields_from_upstream(config: dict) -> dict:
    """Map upstream's config keys to UNetConfig fields; unknown or unsupported values raise ValueError."""
    if not isinstance(config, dict):
        raise ValueError("expected a mapping of UNet options")
    own = {key: value for key, value in config.items() if not key.startswith("_")}  # diffusers' _class_name etc.
    unknown = sorted(set(own) - set(_UPSTREAM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}")
    merged = {**_UPSTREAM_DEFAULTS, **own}
    motion = {**_UPSTREAM_MOTION_DEFAULTS, **(merged["motion_module_kwargs"] or {})}
    unknown = sorted(set(motion) - set(_UPSTREAM_MOTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown motion_module_kwargs option(s) {', '.join(unknown)}")

    for options, required in ((merged, _REQUIRED_VALUES), (motion, _REQUIRED_MOTION_VALUES)):
        for key, wanted in required.items():
            if options[key] != wanted:
                raise ValueError(f"{key}={options[key]!r} is not supported (LatentSync 1.6 uses {wanted!r})")
    if any(kind != "Temporal_Self" for kind in motion["attention_block_types"]):
        raise ValueError(f"attention_block_types={motion['attention_block_types']!r}: only Temporal_Self is supported")

    heads = merged["attention_head_dim"]
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise ValueError(f"attention_head_dim={heads!r}: different head counts per block are not supported")
        heads = heads[0]

    return {
        "in_channels": int(merged["in_channels"]),
        "out_channels": int(merged["out_channels"]),
        "block_out_channels": tuple(int(c) for c in merged["block_out_channels"]),
        "down_block_types": tuple(merged["down_block_types"]),
        "up_block_types": tuple(merged["up_block_types"]),
        "layers_per_block": int(merged["layers_per_block"]),
        "norm_num_groups": int(merged["norm_num_groups"]),
        "norm_eps": float(merged["norm_eps"]),
        "attention_heads": int(heads),
        "cross_attention_dim": int(merged["cross_attention_dim"]),
        "flip_sin_to_cos": bool(merged["flip_sin_to_cos"]),
        "freq_shift": int(merged["freq_shift"]),
        "motion_module_resolutions": tuple(int(r) for r in merged["motion_module_resolutions"]),
        "motion_heads": int(motion["num_attention_heads"]),
        "motion_layers": int(motion["num_transformer_block"]),
        "motion_attentions": len(motion["attention_block_types"]),
        "max_frames": int(motion["temporal_position_encoding_max_len"]),
        "sample_size": None if merged["sample_size"] is None else int(merged["sample_size"]),
    }


@dataclass
class FeatureCache:
    """DeepCache state for one window (see `UNet3DConditionModel.forward`).

    The down path leaves skip tensors s0 (conv_in output), s1, s2, ... (every
    down layer and downsampler output, in order); the up path consumes them in
    reverse. `branch` = b makes the up layer that consumes s_b, and everything
    after it, the shallow part that a reuse pass recomputes.
    """

    branch: int = 0
    hidden: Tensor | None = None  # hidden state entering that up layer, from the last full pass
    reuse: bool = False  # False: full pass that stores `hidden`; True: shallow pass that reuses it


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet3DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        levels = len(widths)
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], config.time_embed_dim)

        # Down path. `skip_channels` is the width of each skip tensor s0, s1, ... it leaves behind.
        self.down_blocks = nn.ModuleList()
        skip_channels = [widths[0]]
        for level, width in enumerate(widths):
            is_last = level == levels - 1
            block = DownBlock3D(
                config,
                in_channels=widths[max(level - 1, 0)],
                out_channels=width,
                with_attention=config.down_block_types[level] == "CrossAttnDownBlock3D",
                with_motion=2**level in config.motion_module_resolutions,
                add_downsample=not is_last,
            )
            self.down_blocks.append(block)
            skip_channels += [width] * (block.num_layers + (0 if is_last else 1))

        self.mid_block = UNetMidBlock3DCrossAttn(config)

        # Up path: each layer takes the most recent skip tensor not yet consumed.
        self.up_blocks = nn.ModuleList()
        unconsumed = list(skip_channels)
        reversed_widths = widths[::-1]
        for level, width in enumerate(reversed_widths):
            consumed = [unconsumed.pop() for _ in range(config.layers_per_block + 1)]
            block = UpBlock3D(
                config,
                skip_channels=consumed,
                prev_channels=reversed_widths[max(level - 1, 0)],
                out_channels=width,
                with_attention=config.up_block_types[level] == "CrossAttnUpBlock3D",
                with_motion=2 ** (levels - 1 - level) in config.motion_module_resolutions,
                add_upsample=level < levels - 1,
            )
            self.up_blocks.append(block)

        self.conv_norm_out = FrameGroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)

        # The order in which forward() runs things, as (block, layer) pairs; layer None is the sampler.
        # down_steps[k] produces skip s_{k+1}; up_steps also name the skip each layer consumes.
        self.num_skips = len(skip_channels)
        self.down_steps: list[tuple[int, int | None]] = []
        for index, block in enumerate(self.down_blocks):
            self.down_steps += [(index, layer) for layer in range(block.num_layers)]
            if block.downsamplers is not None:
                self.down_steps.append((index, None))
        self.up_steps: list[tuple[int, int | None, int | None]] = []
        skip = self.num_skips - 1
        for index, block in enumerate(self.up_blocks):
            for layer in range(block.num_layers):
                self.up_steps.append((index, layer, skip))
                skip -= 1
            if block.upsamplers is not None:
                self.up_steps.append((index, None, None))
        self.up_step_consuming = {
            consumed: step for step, (_, layer, consumed) in enumerate(self.up_steps) if layer is not None
        }

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def embed_time(self, timestep: Tensor | int, batch: int, device: torch.device) -> Tensor:
        """int, 0-d or (B,) timestep -> (B, time_embed_dim)."""
        steps = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        sinusoid = get_timestep_embedding(
            steps,
            self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos,
            downscale_freq_shift=self.config.freq_shift,
        )
        return self.time_embedding(sinusoid.to(self.dtype))

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int,
        audio_embeds: Tensor,
        cache: FeatureCache | None = None,
    ) -> Tensor:
        """Predict the noise.

        sample: (B, 13, F, H, W), F <= 24, H and W multiples of 8.
        audio_embeds: (B*F, T, 384), batch-major: row r is batch r // F, frame r % F.
        cache: None for a plain pass. With a cache and `cache.reuse` False, a full
        pass that also stores `cache.hidden`; with `cache.reuse` True, only conv_in,
        the time embedding, the down layers that produce s_0..s_branch, the up
        layers from the one consuming s_branch on, and the output head run.
        Returns (B, 4, F, H, W).
        """
        batch, _, num_frames, height, width = sample.shape
        self.check_inputs(sample, audio_embeds, cache)
        temb = self.embed_time(timestep, batch, sample.device)
        audio = audio_embeds.to(self.dtype)

        x = sample.transpose(1, 2).reshape(batch * num_frames, -1, height, width)
        x = self.conv_in(x)
        reuse = cache is not None and cache.reuse
        skips = [x]
        last_skip = cache.branch if reuse else self.num_skips - 1
        for block_index, layer in self.down_steps[:last_skip]:
            block = self.down_blocks[block_index]
            if layer is None:
                x = block.downsamplers[0](x)
            else:
                x = block.layer(layer, x, temb, audio, num_frames)
            skips.append(x)

        if reuse:
            x = cache.hidden
            if x.shape[0] != skips[-1].shape[0] or x.shape[-2:] != skips[-1].shape[-2:]:
                raise ValueError("cache.hidden comes from inputs of another shape: run a full pass with this cache")
            first_step = self.up_step_consuming[cache.branch]
        else:
            x = self.mid_block(x, temb, audio, num_frames)
            first_step = 0

        for block_index, layer, skip in self.up_steps[first_step:]:
            block = self.up_blocks[block_index]
            if layer is None:
                x = block.upsamplers[0](x)
                continue
            if cache is not None and not reuse and skip == cache.branch:
                cache.hidden = x
            x = block.layer(layer, torch.cat([x, skips[skip]], dim=1), temb, audio, num_frames)

        x = self.conv_out(F.silu(self.conv_norm_out(x, num_frames)))
        return x.unflatten(0, (batch, num_frames)).transpose(1, 2).contiguous()

    def check_inputs(self, sample: Tensor, audio_embeds: Tensor, cache: FeatureCache | None) -> None:
        """Shape checks only (no tensor values are read, so torch.compile traces through)."""
        config = self.config
        if sample.ndim != 5 or sample.shape[1] != config.in_channels:
            raise ValueError(f"sample must be (B, {config.in_channels}, F, H, W), got {tuple(sample.shape)}")
        batch, _, num_frames, height, width = sample.shape
        if num_frames > config.max_frames:
            raise ValueError(f"at most {config.max_frames} frames per call (temporal position table), got {num_frames}")
        factor = config.downscale_factor
        if height % factor or width % factor:
            raise ValueError(f"latent height and width must be multiples of {factor}, got {height}x{width}")
        expected = (batch * num_frames, config.cross_attention_dim)
        if audio_embeds.ndim != 3 or (audio_embeds.shape[0], audio_embeds.shape[2]) != expected:
            raise ValueError(
                f"audio_embeds must be (B*F={expected[0]}, T, {expected[1]}), got {tuple(audio_embeds.shape)}"
            )
        if cache is None:
            return
        if not 0 <= cache.branch < self.num_skips:
            raise ValueError(f"cache.branch must be in 0..{self.num_skips - 1}, got {cache.branch}")
        if cache.reuse and cache.hidden is None:
            raise ValueError("cache.reuse is set but cache.hidden is empty: run a full pass with this cache first")

"""The dimensions of the LatentSync 1.6 UNet, and the reader of upstream's config for them.

A module of its own (plain values, no torch) so that the UNet and its blocks
both import it, and nothing imports back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from latentsync_cli.errors import WeightsError

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
    def num_skips(self) -> int:
        """Skip tensors the down path leaves: conv_in's, one per down layer, one per downsampler.

        DeepCache's branch names one of them, so it ranges over 0..num_skips - 1.
        """
        levels = len(self.block_out_channels)
        return 1 + levels * self.layers_per_block + (levels - 1)

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

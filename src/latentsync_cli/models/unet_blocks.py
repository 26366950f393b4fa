"""Building blocks of the 3D UNet: ResNets, samplers, and the down/mid/up blocks.

Hidden states keep the frames folded into the batch, (B*F, C, H, W), so that
convolutions, spatial attention and the temporal modules need no reshuffling
between them; `num_frames` is passed where frames must be told apart. Module
names follow upstream LatentSync (`resnets.0.conv1`, `downsamplers.0.conv`, ...).

One "layer" is a ResNet, then a spatial transformer (cross-attention blocks
only), then a motion module (where the resolution has one). The UNet runs the
layers one at a time, which is what lets DeepCache start and stop anywhere.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from latentsync_cli.models.attention import SpatialTransformer
from latentsync_cli.models.motion import MotionModule
from latentsync_cli.models.unet_config import UNetConfig


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics span all frames of a clip.

    Upstream applies nn.GroupNorm to (B, C, F, H, W) tensors in its ResNets and
    before conv_out, so each group is normalised over every frame of the chunk.
    """

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        n, channels, height, width = x.shape
        clip = x.reshape(n // num_frames, num_frames, channels, height, width).transpose(1, 2)
        clip = F.group_norm(clip, self.num_groups, self.weight, self.bias, self.eps)
        return clip.transpose(1, 2).reshape(n, channels, height, width)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(time_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, temb: Tensor, num_frames: int) -> Tensor:
        """x: (B*F, C_in, H, W); temb: (B, time_channels)."""
        hidden = self.conv1(F.silu(self.norm1(x, num_frames)))
        time_shift = self.time_emb_proj(F.silu(temb))  # (B, C_out), the same for every frame
        hidden = hidden.unflatten(0, (-1, num_frames)) + time_shift[:, None, :, None, None]
        hidden = hidden.flatten(0, 1)
        hidden = self.conv2(F.silu(self.norm2(hidden, num_frames)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + hidden


class Downsample3D(nn.Module):
    """Stride-2 3x3 convolution, frame by frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution, frame by frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LayerStack(nn.Module):
    """The layers of one down or up block (upstream's Down/Up blocks, with or without CrossAttn)."""

    def __init__(
        self,
        config: UNetConfig,
        resnet_in_channels: list[int],
        out_channels: int,
        with_attention: bool,
        with_motion: bool,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(c, out_channels, config.time_embed_dim, config.norm_num_groups, config.norm_eps)
                for c in resnet_in_channels
            ]
        )
        self.attentions = None
        if with_attention:
            self.attentions = nn.ModuleList(
                [
                    SpatialTransformer(
                        out_channels, config.attention_heads, config.cross_attention_dim, config.norm_num_groups
                    )
                    for _ in resnet_in_channels
                ]
            )
        self.motion_modules = None
        if with_motion:
            self.motion_modules = nn.ModuleList(
                [
                    MotionModule(
                        out_channels,
                        config.motion_heads,
                        config.motion_layers,
                        config.motion_attentions,
                        config.max_frames,
                    )
                    for _ in resnet_in_channels
                ]
            )

    @property
    def num_layers(self) -> int:
        return len(self.resnets)

    def layer(self, index: int, x: Tensor, temb: Tensor, audio: Tensor, num_frames: int) -> Tensor:
        """Run layer `index`: ResNet, then spatial transformer and motion module where present."""
        x = self.resnets[index](x, temb, num_frames)
        if self.attentions is not None:
            x = self.attentions[index](x, audio)
        if self.motion_modules is not None:
            x = self.motion_modules[index](x, num_frames)
        return x


class DownBlock3D(LayerStack):
    """Layers at one resolution, then (all but the last block) a stride-2 downsampler."""

    def __init__(
        self,
        config: UNetConfig,
        in_channels: int,
        out_channels: int,
        with_attention: bool,
        with_motion: bool,
        add_downsample: bool,
    ):
        resnet_in = [in_channels] + [out_channels] * (config.layers_per_block - 1)
        super().__init__(config, resnet_in, out_channels, with_attention, with_motion)
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels)]) if add_downsample else None


class UpBlock3D(LayerStack):
    """Layers that each take a skip connection (concatenated on channels), then an optional upsampler."""

    def __init__(
        self,
        config: UNetConfig,
        skip_channels: list[int],
        prev_channels: int,
        out_channels: int,
        with_attention: bool,
        with_motion: bool,
        add_upsample: bool,
    ):
        resnet_in = [prev_channels + skip_channels[0]] + [out_channels + c for c in skip_channels[1:]]
        super().__init__(config, resnet_in, out_channels, with_attention, with_motion)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None


class UNetMidBlock3DCrossAttn(nn.Module):
    """ResNet, spatial transformer, ResNet at the lowest resolution (no motion module in 1.6)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        channels = config.block_out_channels[-1]
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(channels, channels, config.time_embed_dim, config.norm_num_groups, config.norm_eps)
                for _ in range(2)
            ]
        )
        self.attentions = nn.ModuleList(
            [SpatialTransformer(channels, config.attention_heads, config.cross_attention_dim, config.norm_num_groups)]
        )

    def forward(self, x: Tensor, temb: Tensor, audio: Tensor, num_frames: int) -> Tensor:
        x = self.resnets[0](x, temb, num_frames)
        x = self.attentions[0](x, audio)
        return self.resnets[1](x, temb, num_frames)

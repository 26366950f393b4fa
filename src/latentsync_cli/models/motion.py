"""Motion modules: temporal self-attention across the frames of a chunk (AnimateDiff style).

Each spatial position of each clip is one sequence of F frames. A sin/cos table
(`pos_encoder.pe`, 24 slots, saved in the checkpoint) is added before every
temporal attention, which is why a chunk holds at most 24 frames.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from latentsync_cli.models.attention import Attention, FeedForward


def sinusoid_table(max_len: int, dim: int) -> Tensor:
    """(1, max_len, dim) position table: sin on even channels, cos on odd ones."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table[None]


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", torch.empty(1, max_len, dim))
        self.reset_table()

    def reset_table(self) -> None:
        """(Re)compute `pe`, e.g. after `to_empty()` left it uninitialised."""
        if self.pe.is_meta:
            return
        _, max_len, dim = self.pe.shape
        with torch.no_grad():
            self.pe.copy_(sinusoid_table(max_len, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, F, C) with F <= max_len."""
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention over frames; queries, keys and values all see the position table."""

    def __init__(self, dim: int, heads: int, max_frames: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_frames)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.pos_encoder(x))


class TemporalTransformerBlock(nn.Module):
    """Several pre-norm temporal self-attentions, then a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, num_attentions: int, max_frames: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, max_frames) for _ in range(num_attentions)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*H*W, F, C)."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, num_layers: int, num_attentions: int, max_frames: int):
        super().__init__()
        # Upstream hard-codes 32 groups here, whatever the UNet's norm_num_groups.
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, num_attentions, max_frames) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """x: (B*F, C, H, W) -> same shape. The GroupNorm is per frame."""
        n, channels, height, width = x.shape
        batch = n // num_frames
        hidden = self.norm(x)
        # One sequence of frames per clip and pixel: (B*F, C, H, W) -> (B*H*W, F, C).
        hidden = hidden.reshape(batch, num_frames, channels, height * width).permute(0, 3, 1, 2)
        hidden = hidden.reshape(batch * height * width, num_frames, channels)
        hidden = self.proj_in(hidden)
        for block in self.transformer_blocks:
            hidden = block(hidden)
        hidden = self.proj_out(hidden)
        hidden = hidden.reshape(batch, height * width, num_frames, channels).permute(0, 2, 3, 1)
        return x + hidden.reshape(n, channels, height, width)


class MotionModule(nn.Module):
    """Upstream's VanillaTemporalModule: a residual temporal transformer."""

    def __init__(self, channels: int, heads: int, num_layers: int, num_attentions: int, max_frames: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, num_layers, num_attentions, max_frames)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        return self.temporal_transformer(x, num_frames)

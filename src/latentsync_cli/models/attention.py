"""Attention layers of the UNet: multi-head attention (SDPA), the GEGLU feed-forward,
and the per-frame spatial transformer whose cross-attention reads the audio.

Module and parameter names follow upstream LatentSync so that its checkpoint
loads key for key. Hidden states arrive with the frames folded into the batch,
(B*F, C, H, W); the audio embeddings are (B*F, T, D) in the same row order.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention: queries from `x`, keys and values from `context` (or from `x`)."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        context_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        # Upstream keeps a dropout after the projection at index 1; the list keeps the key `to_out.0.*`.
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim), nn.Identity()])

    def split_heads(self, x: Tensor) -> Tensor:
        """(N, L, C) -> (N, heads, L, C / heads)."""
        n, length, channels = x.shape
        return x.view(n, length, self.heads, channels // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = self.split_heads(self.to_q(x))
        k = self.split_heads(self.to_k(context))
        v = self.split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        n, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(n, length, -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """A linear layer to twice the width, one half gated by the exact GELU of the other."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width, then back (upstream's diffusers FeedForward; keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        # Index 1 was a dropout layer upstream; it is kept as a placeholder so that the keys match.
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Self-attention over the pixels of a frame, cross-attention to that frame's audio, feed-forward."""

    def __init__(self, dim: int, heads: int, audio_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=audio_dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, audio: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), audio)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Upstream's Transformer3DModel: GroupNorm and 1x1 convs around a transformer, frame by frame."""

    def __init__(self, channels: int, heads: int, audio_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, audio_dim)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, audio: Tensor) -> Tensor:
        """x: (B*F, C, H, W); audio: (B*F, T, D), row r belongs to frame-image r of x."""
        n, channels, height, width = x.shape
        hidden = self.proj_in(self.norm(x))
        hidden = hidden.permute(0, 2, 3, 1).reshape(n, height * width, channels)
        for block in self.transformer_blocks:
            hidden = block(hidden, audio)
        hidden = hidden.reshape(n, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return x + self.proj_out(hidden)

"""What PyTorch already gives the run, recorded rather than re-invented: the attention kernel, the memory pool.

Attention: every attention of the UNet calls torch's scaled_dot_product_attention,
which picks a fused kernel (flash, memory-efficient, cuDNN) or the plain math one
from the device, dtype and shapes. `attention_entry` asks torch which one it picks
for the run's three kinds of attention at the run's shapes (spatial self-attention
over the latent pixels, cross-attention to the 50 audio tokens, the motion modules'
temporal attention over the window's frames), with `torch._fused_sdp_choice`, the
dispatcher SDPA itself calls (a private function: "unknown" if it is gone).

Memory pool: on CUDA, PyTorch's caching allocator keeps freed blocks and hands them
to later tensors, so a denoising loop does not call cudaMalloc per step.
`allocator_entry` reports, after the run, how many tensor allocations how few
device allocations served during it.
"""

from __future__ import annotations

import torch

from latentsync_cli.optimizers import APPLIED, OFF, LogEntry

AUDIO_TOKENS = 50  # per frame (models/audio_features.py)


def sdpa_backend(queries: int, keys: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> str:
    """The kernel scaled_dot_product_attention picks for these shapes ("unknown" if torch does not say)."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return "unknown"
    try:
        from torch.nn.attention import SDPBackend

        query = torch.zeros((1, heads, queries, head_dim), dtype=dtype, device=device)
        key = torch.zeros((1, heads, keys, head_dim), dtype=dtype, device=device)
        return SDPBackend(choose(query, key, key)).name.lower()
    except (RuntimeError, ValueError, TypeError, ImportError):
        return "unknown"


def attention_entry(unet: torch.nn.Module, device: torch.device, face_size: int, frames: int) -> LogEntry:
    """The SDPA kernel of each kind of attention in this run (torch's own choice; nothing is forced)."""
    config = getattr(unet, "config", None)
    if config is None:
        return LogEntry("attention kernel", OFF, "not a LatentSync UNet: not asked")
    dtype = getattr(unet, "dtype", torch.float32)
    width = config.block_out_channels[0]
    pixels = (face_size // 8) ** 2
    kinds = {
        f"self-attention ({pixels} tokens)": (pixels, pixels, config.attention_heads),
        f"audio cross-attention ({AUDIO_TOKENS} tokens)": (pixels, AUDIO_TOKENS, config.attention_heads),
        f"temporal ({frames} frames)": (frames, frames, config.motion_heads),
    }
    picks = [f"{kind}: {sdpa_backend(q, k, heads, width // heads, dtype, device)}" for kind, (q, k, heads) in kinds.items()]
    return LogEntry("attention kernel", APPLIED, "scaled_dot_product_attention picks " + "; ".join(picks))


def allocator_counts(device: torch.device) -> tuple[int, int, int]:
    """(tensor allocations, cudaMalloc calls, retries) of the caching allocator so far; zeros off CUDA."""
    if device.type != "cuda":
        return (0, 0, 0)
    stats = torch.cuda.memory_stats(device)
    device_calls = stats.get("num_device_alloc", stats.get("segment.all.allocated", 0))
    return (stats.get("allocation.all.allocated", 0), device_calls, stats.get("num_alloc_retries", 0))


def allocator_entry(device: torch.device, at_start: tuple[int, int, int]) -> LogEntry:
    """The caching allocator's work since `at_start` (allocator_counts when the run began)."""
    name = "memory pool"
    if device.type != "cuda":
        return LogEntry(name, OFF, f"{device.type}: no device memory pool (the system allocator)")
    tensors, device_calls, retries = (now - then for now, then in zip(allocator_counts(device), at_start))
    detail = (
        f"PyTorch's caching allocator: {tensors} tensor allocations served by {device_calls} cudaMalloc calls "
        f"({retries} retries after freeing its cache)"
    )
    return LogEntry(name, APPLIED, detail)

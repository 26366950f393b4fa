"""CUDA graphs for the denoising step: capture the UNet call once per input shape, then replay it.

A replay skips Python and kernel launch overhead. Graphs need static shapes:
one graph is captured per input shape, so a video's last, shorter window gets
its own. A window is never padded to the full length instead: the UNet's
GroupNorms and motion modules mix the frames of a window, so padding changes
the real frames' result (by up to 0.41 in the final latents of the golden
e2e run C's 8-frame window, scripts/measure_upstream_parity.py --padding). With DeepCache there
are two graphs per shape: the full pass (which writes the cached hidden state
into a static buffer) and the shallow pass (which reads it from one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from latentsync_cli.optimizers import APPLIED, OFF, SKIPPED, LogEntry
from latentsync_cli.settings.run_settings import RunSettings

WARMUP_CALLS = 2  # on a side stream before capture, as torch.cuda.graphs recommends


@dataclass
class CapturedCall:
    graph: torch.cuda.CUDAGraph
    sample: Tensor
    timestep: Tensor
    audio: Tensor
    hidden_in: Tensor | None  # DeepCache shallow pass: the cached state it reads
    output: Tensor
    hidden_out: Tensor | None  # DeepCache full pass: the state it stores


class CudaGraphUNet:
    """Calls `unet_call` through one captured CUDA graph per (shapes, DeepCache path)."""

    def __init__(self, unet_call: Callable[..., Tensor]):
        self.unet_call = unet_call
        self.captured: dict[tuple, CapturedCall] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.unet_call.dtype

    def reset(self) -> None:
        """Drop every graph (and its memory pool), e.g. before moving the UNet between devices."""
        self.captured.clear()

    def __call__(self, sample: Tensor, timestep: Tensor, audio_embeds: Tensor, cache=None) -> Tensor:
        path = "plain" if cache is None else ("reuse" if cache.reuse else "full")
        key = (tuple(sample.shape), sample.dtype, tuple(audio_embeds.shape), path, getattr(cache, "branch", None))
        call = self.captured.get(key)
        if call is None:
            call = self.captured[key] = self._capture(sample, timestep, audio_embeds, cache)
        call.sample.copy_(sample)
        call.timestep.copy_(torch.as_tensor(timestep, device=call.timestep.device, dtype=call.timestep.dtype))
        call.audio.copy_(audio_embeds)
        if call.hidden_in is not None and cache.hidden is not call.hidden_in:
            call.hidden_in.copy_(cache.hidden)
        call.graph.replay()
        if call.hidden_out is not None:
            cache.hidden = call.hidden_out
        # The next replay overwrites `output`; the caller may keep the result longer.
        return call.output.clone()

    def _capture(self, sample: Tensor, timestep: Tensor, audio_embeds: Tensor, cache) -> CapturedCall:
        static_sample = sample.clone()
        static_timestep = torch.as_tensor(timestep, device=sample.device).clone()
        static_audio = audio_embeds.clone()
        hidden_in = cache.hidden.clone() if cache is not None and cache.reuse else None

        def graph_cache():
            # A private cache, so warm-up and capture never touch the caller's state.
            return None if cache is None else replace(cache, hidden=hidden_in)

        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(WARMUP_CALLS):
                self.unet_call(static_sample, static_timestep, static_audio, cache=graph_cache())
        torch.cuda.current_stream().wait_stream(side_stream)

        graph = torch.cuda.CUDAGraph()
        capture_cache = graph_cache()
        with torch.cuda.graph(graph):
            output = self.unet_call(static_sample, static_timestep, static_audio, cache=capture_cache)
        hidden_out = capture_cache.hidden if cache is not None and not cache.reuse else None
        return CapturedCall(graph, static_sample, static_timestep, static_audio, hidden_in, output, hidden_out)


class CudaGraphs:
    """Replaces the plan's UNet call with CudaGraphUNet (one graph per window length)."""

    name = "cuda graphs"

    def apply(self, plan, settings: RunSettings, device: torch.device) -> LogEntry:
        """`plan` is the RunPlan being built; on CUDA its UNet call becomes graph-replaying."""
        if not settings.cuda_graphs:
            return LogEntry(self.name, OFF, "UNet kernels launched one by one")
        if device.type != "cuda":
            return LogEntry(self.name, SKIPPED, f"CUDA graphs need a CUDA device, this run uses {device.type}")
        plan.graphs = CudaGraphUNet(plan.unet_call)
        plan.unet_call = plan.graphs
        detail = "UNet step captured once per shape (a shorter last window gets its own graph) and replayed"
        return LogEntry(self.name, APPLIED, detail)

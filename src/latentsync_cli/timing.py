"""Stage timings of a run: wall clocks on CPU, CUDA events for GPU work, peak memory.

The pipeline wraps each piece of work in `timer.stage(name, lane)`; a lane is
the thread that does it ("producer", "consumer", "main", and the models' lane,
named after their device: "cuda", "cpu" or "mps"). From the spans we get
per-stage totals, each lane's busy time (the critical path, since the lanes
overlap) and a Chrome trace. What to try against the slowest stage is advice.py.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# The stages of a sync, in pipeline order (the stage table lists them in this order).
STAGES = (
    "decode",
    "landmarks",
    "align",
    "audio features",
    "VAE encode",
    "denoise",
    "VAE decode",
    "restore",
    "encode",
    "mux",
)

@dataclass(frozen=True)
class Span:
    stage: str
    lane: str
    start_s: float  # seconds since the timer started
    duration_s: float


class StageTimer:
    """Collects stage spans from any thread. On CUDA, GPU stages are timed with CUDA events."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.uses_cuda_events = self.device.type == "cuda"
        self._origin = time.perf_counter()
        self._finished_at: float | None = None
        self._spans: list[Span] = []
        self._pending_events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Forget what was recorded and start the wall clock now (e.g. after loading the models)."""
        with self._lock:
            self._origin = time.perf_counter()
            self._finished_at = None
            self._spans = []
            self._pending_events = []

    def finish(self) -> None:
        """Stop the wall clock."""
        self._finished_at = time.perf_counter()

    @contextmanager
    def stage(self, name: str, lane: str, gpu: bool = False):
        """Time the `with` body as one span of `name` on `lane`; `gpu=True` uses CUDA events on CUDA."""
        events = None
        if gpu and self.uses_cuda_events:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self._spans.append(Span(name, lane, start - self._origin, end - start))
                if events is not None:
                    events[1].record()
                    self._pending_events.append((len(self._spans) - 1, *events))

    def _resolve_cuda_events(self) -> None:
        # GPU work is asynchronous: the event pair, not the wall clock, says how long the GPU was busy.
        if not self._pending_events:
            return
        torch.cuda.synchronize(self.device)
        for index, start_event, end_event in self._pending_events:
            span = self._spans[index]
            gpu_seconds = start_event.elapsed_time(end_event) / 1000.0
            self._spans[index] = Span(span.stage, span.lane, span.start_s, max(gpu_seconds, span.duration_s))
        self._pending_events = []

    def spans(self) -> list[Span]:
        with self._lock:
            self._resolve_cuda_events()
            return list(self._spans)

    def wall_s(self) -> float:
        end = self._finished_at if self._finished_at is not None else time.perf_counter()
        return end - self._origin

    def stage_totals(self) -> dict[str, float]:
        """Seconds per stage, summed over all spans, in pipeline order (unknown stages last)."""
        totals: dict[str, float] = {}
        for span in self.spans():
            totals[span.stage] = totals.get(span.stage, 0.0) + span.duration_s
        order = {name: index for index, name in enumerate(STAGES)}
        return dict(sorted(totals.items(), key=lambda item: order.get(item[0], len(order))))

    def lane_busy(self) -> dict[str, float]:
        """Seconds each lane (thread) spent inside stages."""
        busy: dict[str, float] = {}
        for span in self.spans():
            busy[span.lane] = busy.get(span.lane, 0.0) + span.duration_s
        return busy

    def lane_stages(self) -> dict[str, list[str]]:
        lanes: dict[str, list[str]] = {}
        for span in self.spans():
            stages = lanes.setdefault(span.lane, [])
            if span.stage not in stages:
                stages.append(span.stage)
        return lanes

    def chrome_trace(self, pid: int = 1) -> list[dict]:
        """One complete ("X") event per span, microseconds, one tid per lane (named in args)."""
        lane_ids: dict[str, int] = {}
        events = []
        for span in self.spans():
            tid = lane_ids.setdefault(span.lane, len(lane_ids) + 1)
            events.append(
                {
                    "name": span.stage,
                    "ph": "X",
                    "ts": round(span.start_s * 1e6, 3),
                    "dur": round(span.duration_s * 1e6, 3),
                    "pid": pid,
                    "tid": tid,
                    "args": {"thread": span.lane},
                }
            )
        return events


def critical_path(lane_busy: dict[str, float], lane_stages: dict[str, list[str]], serial_lane: str = "main") -> dict:
    """The chain of work that bounds wall time: the serial lane plus the busiest of the overlapped lanes.

    The other lanes run concurrently, so with perfect overlap the wall time is
    serial + max(busy of each overlapped lane); what is left over is waiting.
    """
    overlapped = {lane: busy for lane, busy in lane_busy.items() if lane != serial_lane}
    bounding = max(overlapped, key=overlapped.get) if overlapped else None
    lanes = [lane for lane in (serial_lane, bounding) if lane is not None and lane in lane_busy]
    return {
        "lanes": lanes,
        "bounding_lane": bounding,
        "stages": [stage for lane in lanes for stage in lane_stages.get(lane, [])],
        "seconds": sum(lane_busy[lane] for lane in lanes),
    }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_gpu_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_bytes(device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated on CUDA; None elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None

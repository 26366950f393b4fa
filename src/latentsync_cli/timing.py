"""Stage timings of a run: wall clocks on CPU, CUDA events for GPU work, peak memory.

The pipeline wraps each piece of work in `timer.stage(name, lane)`; a lane is
the thread that does it ("producer", "consumer", "main", and the models' lane,
named after their device: "cuda", "cpu" or "mps"). From the spans we get
per-stage totals, each lane's busy time (the critical path, since the lanes
overlap), a Chrome trace, and a one-line bottleneck verdict whose advice
depends only on the run's concrete settings.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentsync_cli.constants import MAX_WINDOW

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

# What to try when a stage bounds the wall time and the run's settings are not known.
BOTTLENECK_HINTS = {
    "denoise": "try --mode turbo or DeepCache",
    "VAE encode": "try a larger --window or a faster --precision",
    "VAE decode": "try a faster --precision; VAE tiling and slicing save memory, not time",
    "landmarks": "try a larger face detection stride (--mode fast or turbo)",
    "decode": "the input video decodes slowly; try a smaller or re-encoded input",
    "encode": "the output encoder is slow; this machine may lack CPU cores",
    "restore": "face pasting is CPU bound; this machine may lack CPU cores",
}
# Stages no setting speeds up: the same hint whatever the settings.
CPU_STAGES = ("decode", "encode", "restore")


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


def denoise_hint(settings) -> str:
    """What to try against a slow denoise: a speed-up the run's settings do not use yet, never one they do."""
    device = torch.device(settings.device).type
    if not settings.deepcache:
        return "try --deepcache (reuses the deep UNet features between steps)"
    if settings.uses_cfg:
        return f"try --guidance 1 (now {settings.guidance:g}): skips the unconditional pass, half the UNet work"
    if device == "cuda" and settings.precision == "fp32":
        return "try --precision fp16 (half-precision UNet)"
    if device == "cuda" and not settings.compile:
        return "try --compile (torch.compile the UNet)"
    if settings.steps > 1:
        sampler = ", with --scheduler dpmpp_2m (a few-step sampler)" if settings.scheduler == "ddim" else ""
        return f"try --steps {settings.steps // 2} (now {settings.steps}){sampler}"
    return f"the denoise already uses every speed-up here; what is left is a faster {device} device"


def vae_hint(stage: str, settings) -> str:
    """What to try against a slow VAE encode or decode, given the run's settings."""
    tries = []
    if stage == "VAE encode" and settings.window < MAX_WINDOW:
        tries.append(f"a larger --window (now {settings.window}, at most {MAX_WINDOW})")
    if torch.device(settings.device).type == "cuda" and settings.precision == "fp32":
        tries.append("--precision fp16")
    advice = "try " + " or ".join(tries) if tries else "the VAE already runs as fast as these settings allow"
    return f"{advice}; VAE tiling and slicing save memory, not time" if stage == "VAE decode" else advice


def landmarks_hint(settings) -> str:
    stride = settings.face_detect_stride
    now = "every frame" if stride == 1 else f"every {stride} frames"
    return f"face detection runs on {now}; a mode with a larger stride saves time (`latentsync presets list`)"


def stage_hint(stage: str, settings) -> str | None:
    """What to try when `stage` bounds the wall time; with `settings` (RunSettings), only what they do not use."""
    if settings is None or stage in CPU_STAGES:
        return BOTTLENECK_HINTS.get(stage)
    if stage == "denoise":
        return denoise_hint(settings)
    if stage in ("VAE encode", "VAE decode"):
        return vae_hint(stage, settings)
    if stage == "landmarks":
        return landmarks_hint(settings)
    return None


def bottleneck_verdict(stage_totals: dict[str, float], wall_s: float, settings=None) -> str:
    """One line naming the stage that takes the most time and what to try (given `settings`, if known)."""
    if not stage_totals or wall_s <= 0:
        return "bottleneck: unknown (no stages were timed)"
    stage = max(stage_totals, key=stage_totals.get)
    share = 100.0 * stage_totals[stage] / wall_s
    hint = stage_hint(stage, settings)
    verdict = f"bottleneck: {stage} ({share:.0f} % of wall time)"
    return f"{verdict} — {hint}" if hint else verdict


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

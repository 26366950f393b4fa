"""The bottleneck verdict: which stage bounds a run's wall time, and what to try against it.

The advice depends only on the run's concrete settings (RunSettings): it
suggests a speed-up those settings do not use yet, never one they already do.
"""

from __future__ import annotations

import torch

from latentsync_cli.constants import MAX_WINDOW

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

"""Measure each speed idea of docs/PERFORMANCE.md against the same mode without it, and give a verdict.

    PYTHONPATH=src python3 scripts/measure_speed_ideas.py --weights proxy --markdown idea-table.md

For each mode (the preset table's, at quality balanced, on this CPU, every idea off) and each idea
(that mode with the idea on), the pipeline's own model lane (FaceGenerator: VAE encode -> denoise
-> VAE decode -> paste the unmasked pixels back, and for window overlap the border blend) makes the
held-out frames of the demo clips (the last 20 % of each, as the proxy's training leaves them
out), each frame its own reference as in `sync`, with the clip's own speech. It reports:

  UNet work      the steps of each kind (full, cached, skipped, uncond_reused, half_res) and what
                 those passes would cost LatentSync 1.6 in TFLOP per output second
                 (bench/flops.py, COST_MODEL.md's per-call numbers)
  time           wall and CPU seconds of the model lane on this machine (run back to back)
  quality        mouth PSNR and SSIM against `normal` (every idea off), mouth PSNR against the real
                 frames, temporal consistency against the real frames (bench/metrics.py)
  seam           the mean frame-to-frame change of the mouth at window borders divided by the mean
                 change inside windows (1: no seam), and the same ratio of the real frames

Verdict: kept in the mode's preset where it cuts the mode's UNet TFLOP by at least 15 % for at
most 0.5 dB of mouth PSNR against `normal` (the mode without the idea as the baseline), else an
explicit option. `normal` keeps upstream's computation whatever the numbers say.

Smart batching is exact: it only changes which windows share a UNet call (CUDA graphs no longer
pad a short window: each window length gets its own graph).

Only numbers from a trained model (`--weights proxy`) say anything about quality; random weights
(`random-tiny`) check that the script runs and count the work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.bench import metrics
from latentsync_cli.bench.fidelity import mouth_box
from latentsync_cli.bench.flops import unet_tflop_per_output_second
from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.face.track import FaceLocator
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.pipeline import LipsyncPipeline
from latentsync_cli.pipeline.overlap_blend import OverlapBlend
from latentsync_cli.pipeline.windows import WindowInput, WindowPlan, window_ranges
from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import (
    RunSettings,
    overlap_problem,
    resolve_settings,
)
from latentsync_cli.timing import StageTimer
from latentsync_cli.unet_steps import UNetSteps
from latentsync_cli.weights.load import ModelBundle, load_models

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
HOLDOUT_FRACTION = 0.2  # the proxy's training never reads the last 20 % of a clip
MODES = ("normal", "fast", "turbo", "ultra")
CLIPS = ("demo1", "demo2", "demo3")
# Each idea as the changes it makes to a mode's settings (its parameters are the mode's own, from presets.toml).
IDEAS = {
    "cfg_cache": {"cfg_cache": True},
    "step_skipping": {"step_skipping": True},
    "multiscale": {"multiscale": True},
    "warm_start": {"warm_start": True},
    "window_overlap": {"window_overlap": 4},
    "smart_batching": {"smart_batching": True},
}
IDEAS_OFF = {"cfg_cache": False, "step_skipping": False, "multiscale": False, "warm_start": False,
             "window_overlap": 0, "smart_batching": False}  # fmt: skip
KEEP_MIN_CUT = 0.15  # of the mode's UNet TFLOP
KEEP_MAX_PSNR_DROP_DB = 0.5  # mouth PSNR against normal


@dataclass
class HeldOut:
    name: str
    faces: np.ndarray  # uint8 (n, R, R, 3), aligned as `sync` aligns them
    audio: torch.Tensor  # (n, 50, 384): the clip's own speech, one row per frame


@dataclass
class Made:
    """What one configuration made of every clip, and what it cost."""

    faces: dict[str, np.ndarray]  # clip -> uint8 (n, R, R, 3)
    steps: UNetSteps
    wall_s: float
    cpu_s: float
    frames: int


# --- the held-out frames --------------------------------------------------------------------------


def held_out_clip(name: str, media: Path, models: ModelBundle, max_frames: int, cache: Path) -> HeldOut:
    """The first `max_frames` held-out frames of a demo clip, aligned at the model's resolution (cached)."""
    video = media / f"{name}_video.mp4"
    cached = cache / f"{name}-{models.resolution}px-{max_frames}.npz"
    if not cached.is_file():
        info = probe_video(video)
        start = info.frame_count - round(info.frame_count * HOLDOUT_FRACTION)
        stop = min(info.frame_count, start + max_frames)
        faces = aligned_faces(info, stop, models.resolution)[start:]
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cached, faces=faces, start=start)
    stored = np.load(cached)
    start, faces = int(stored["start"]), stored["faces"]
    features = AudioFeatureExtractor(models.audio_encoder, torch.device("cpu"))(load_audio(video))
    return HeldOut(name, faces, features[start : start + len(faces)])


def aligned_faces(info, frame_count: int, resolution: int) -> np.ndarray:
    """Every frame's aligned face up to `frame_count` (tracking runs in order from the first frame)."""
    locate = FaceLocator(resolution, LandmarkSource())
    faces = []
    try:
        for number, frame in enumerate(read_frames(info, frame_count)):
            affine = locate.affine(number, frame)
            if affine is None:
                raise SystemExit(f"{info.path}: no face in frame {number}; choose clips with a face throughout")
            faces.append(locate.faces([frame], [affine])[0][0])
    finally:
        locate.close()
    return np.stack(faces)


def windows_of(faces: np.ndarray, window: int, overlap: int) -> list[WindowInput]:
    """The clip's windows as the pipeline cuts them, each with its lead frames when windows overlap."""
    ranges = window_ranges(len(faces), window)
    plan = WindowPlan.everything(ranges, overlap)
    windows = []
    for index, own in enumerate(ranges):
        made = plan.made_range(index)
        chw = torch.from_numpy(np.ascontiguousarray(faces[made.start : made.stop])).permute(0, 3, 1, 2)
        windows.append(WindowInput(index, made.start, [None] * len(made), np.ones(len(made), dtype=bool),
                                   chw.contiguous(), [np.eye(2, 3)] * len(made), lead=own.start - made.start))  # fmt: skip
    return windows


# --- making the faces -------------------------------------------------------------------------------


def make(models: ModelBundle, settings: RunSettings, clips: list[HeldOut]) -> Made:
    """Every clip's faces through the pipeline's model lane with `settings`."""
    made, steps = {}, UNetSteps()
    wall, cpu = time.perf_counter(), time.process_time()
    for clip in clips:
        pipeline = LipsyncPipeline(models, settings, StageTimer("cpu"))
        paste_mask = torch.from_numpy(mouth_mask(models.resolution))[None, None]
        generator = pipeline.face_generator(clip.audio, paste_mask)
        blend, outputs = OverlapBlend(), []
        for output in generator.generate(windows_of(clip.faces, settings.window, settings.window_overlap),
                                         pipeline.ladder.current):  # fmt: skip
            outputs += blend.push(output)
        outputs += blend.flush()
        made[clip.name] = np.concatenate([to_uint8(output.wait()) for output in outputs])
        steps.add(generator.steps)
    frames = sum(len(clip.faces) for clip in clips)
    return Made(made, steps, time.perf_counter() - wall, time.process_time() - cpu, frames)


def to_uint8(faces: torch.Tensor) -> np.ndarray:
    """float (n, 3, R, R) in [-1, 1] -> uint8 (n, R, R, 3)."""
    return ((faces.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --- scores -----------------------------------------------------------------------------------------


def mouths(faces: np.ndarray) -> np.ndarray:
    top, bottom, left, right = mouth_box(faces.shape[1])
    return faces[:, top:bottom, left:right]


def seam(clips: dict[str, np.ndarray], window: int) -> float:
    """Mean mouth change across window borders / mean change inside windows, pooled over the clips."""
    at_border, inside = [], []
    for faces in clips.values():
        crops = mouths(faces).astype(np.float64)
        changes = np.abs(np.diff(crops, axis=0)).mean(axis=(1, 2, 3))  # changes[i]: frame i -> i + 1
        for frame, change in enumerate(changes, start=1):
            (at_border if frame % window == 0 else inside).append(change)
    return float(np.mean(at_border) / np.mean(inside)) if at_border and inside else float("nan")


def scores(made: Made, normal: Made, real: dict[str, np.ndarray], window: int) -> dict:
    """Mouth PSNR/SSIM against normal and against the real frames, temporal consistency, seam."""
    names = list(real)
    pooled = {key: np.concatenate([faces[name] for name in names]) for key, faces in
              (("made", made.faces), ("normal", normal.faces), ("real", real))}  # fmt: skip
    crops = {key: mouths(faces) for key, faces in pooled.items()}
    against_normal = metrics.clip_psnr(crops["normal"], crops["made"])
    consistency = [metrics.temporal_consistency(mouths(real[name]), mouths(made.faces[name])) for name in names]
    return {
        "mouth_psnr_vs_normal": None if np.isinf(against_normal) else round(against_normal, 2),
        "mouth_ssim_vs_normal": round(metrics.clip_ssim(crops["normal"], crops["made"]), 4),
        "mouth_psnr_vs_real": round(metrics.clip_psnr(crops["real"], crops["made"]), 2),
        "temporal_consistency_vs_real": round(float(np.mean(consistency)), 4),
        "seam": round(seam(made.faces, window), 3),
    }


def work(made: Made) -> dict:
    return {
        "unet_steps": made.steps.to_dict(),
        "unet_tflop_per_output_s": round(unet_tflop_per_output_second(made.steps, made.frames), 1),
        "wall_s": round(made.wall_s, 2),
        "cpu_s": round(made.cpu_s, 2),
    }


def verdict(mode: str, idea: str, before: dict, after: dict) -> str:
    if idea == "smart_batching":
        return "exact: speed only (packs equal-length windows when several share a UNet call)"
    cut = 1.0 - after["unet_tflop_per_output_s"] / before["unet_tflop_per_output_s"]
    if mode == "normal":
        return "option (normal stays upstream's computation)"
    drop = psnr_drop(before["mouth_psnr_vs_normal"], after["mouth_psnr_vs_normal"])
    if cut >= KEEP_MIN_CUT and drop <= KEEP_MAX_PSNR_DROP_DB:
        return f"keep ({cut:.0%} less UNet work, {drop:.2f} dB)"
    why = f"cuts {cut:.0%}" if cut < KEEP_MIN_CUT else f"costs {drop:.2f} dB"
    return f"option ({why})"


def psnr_drop(before: float | None, after: float | None) -> float:
    """dB lost against normal (None means identical to normal: no loss there, any loss from it is infinite)."""
    if before is None:
        return 0.0 if after is None else float("inf")
    return before - (after if after is not None else float("inf"))


# --- the run ----------------------------------------------------------------------------------------


def mode_settings(mode: str, overrides: dict) -> RunSettings:
    """The mode at quality balanced on the CPU, every idea off, then the user's overrides."""
    request = SettingsRequest(mode=mode, quality="balanced", device="cpu")
    settings = resolve_settings(load_presets(), request, DeviceRecord("cpu", "CPU")).settings
    return replace(settings, **IDEAS_OFF, **overrides)


def measure_mode(models, mode: str, ideas: list[str], clips, normal: Made, real, overrides, log) -> list[dict]:
    base = mode_settings(mode, overrides)
    rows = []
    without = make(models, base, clips)
    before = {**work(without), **scores(without, normal, real, base.window)}
    log(f"{mode}: {before}")
    for idea in ideas:
        settings = replace(base, **IDEAS[idea])
        if idea == "cfg_cache" and not settings.uses_cfg:
            continue  # no unconditional pass to cache
        if overlap_problem(settings.window, settings.window_overlap):
            continue  # the window leaves no room for an overlap
        baseline_row = before
        with_idea = make(models, settings, clips)
        after = {**work(with_idea), **scores(with_idea, normal, real, base.window)}
        rows.append({"mode": mode, "idea": idea, "settings": changed(base, settings), "before": baseline_row,
                     "after": after, "verdict": verdict(mode, idea, baseline_row, after)})  # fmt: skip
        log(f"  {idea}: {rows[-1]['verdict']}  {after}")
    return rows


def changed(base: RunSettings, settings: RunSettings) -> dict:
    """The idea's settings: what it switched on, and its parameters."""
    names = {"cfg_cache": ["cfg_cache_interval"], "step_skipping": ["step_skip_threshold"],
             "multiscale": ["multiscale_share"], "warm_start": ["warm_start_strength"]}  # fmt: skip
    differs = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
               if getattr(settings, f.name) != getattr(base, f.name)}  # fmt: skip
    for idea in list(differs):
        for name in names.get(idea, []):
            differs[name] = getattr(settings, name)
    return differs


def markdown(result: dict) -> str:
    header = (
        "| idea | mode | UNet TFLOP/out-s before → after | steps f/c/s/u/h after | wall s before → after "
        "| mouth PSNR / SSIM vs normal before → after | seam before → after (real) | verdict |"
    )
    made_by = (
        f"Made by: `{result['command']}` ({result['weights']}; {result['frames']} held-out frames of "
        f"{', '.join(result['clips'])}; CPU, {result['threads']} threads)"
    )
    lines = [made_by, "", header, "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        before, after = row["before"], row["after"]
        steps = after["unet_steps"]
        counts = "/".join(str(steps[key]) for key in ("full", "cached", "skipped", "uncond_reused", "half_res"))
        lines.append(
            f"| {row['idea']} | {row['mode']} | {before['unet_tflop_per_output_s']} → {after['unet_tflop_per_output_s']}"
            f" | {counts} | {before['wall_s']} → {after['wall_s']}"
            f" | {psnr_text(before)} → {psnr_text(after)} | {before['seam']} → {after['seam']} ({result['real_seam']})"
            f" | {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def psnr_text(scores: dict) -> str:
    psnr = scores["mouth_psnr_vs_normal"]
    return ("identical" if psnr is None else f"{psnr:.2f} dB") + f" / {scores['mouth_ssim_vs_normal']:.3f}"


def parse_overrides(items: list[str]) -> dict:
    """`name=value` pairs of RunSettings fields, typed as the field is."""
    defaults = RunSettings()
    overrides = {}
    for item in items:
        name, _, text = item.partition("=")
        if not hasattr(defaults, name):
            raise SystemExit(f"--set {item}: {name} is not a RunSettings field")
        kind = type(getattr(defaults, name))
        overrides[name] = text.lower() in ("1", "true", "yes", "on") if kind is bool else kind(text)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="proxy", help="proxy (a trained model), or random-tiny (a dry run)")
    parser.add_argument("--media", type=Path, default=MEDIA, help="the folder of the demo clips")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    parser.add_argument("--frames", type=int, default=40, help="held-out frames per clip (40: windows 16, 16, 8)")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--ideas", nargs="+", default=list(IDEAS), choices=list(IDEAS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a setting in every run, e.g. --set step_skip_threshold=0.2")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/latentsync-speed-ideas"), help="aligned faces")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda text: print(text, file=sys.stderr, flush=True)

    models = load_models(args.weights, None, "cpu", torch.float32, seed=0)
    overrides = parse_overrides(args.overrides)
    clips = [held_out_clip(name, args.media, models, args.frames, args.cache) for name in args.clips]
    real = {clip.name: clip.faces for clip in clips}
    with torch.no_grad():
        normal = make(models, mode_settings("normal", overrides), clips)
        rows = []
        for mode in args.modes:
            rows += measure_mode(models, mode, args.ideas, clips, normal, real, overrides, log)
    result = {
        "command": "PYTHONPATH=src python3 scripts/measure_speed_ideas.py " + " ".join(argv or sys.argv[1:]),
        "weights": models.description,
        "clips": args.clips,
        "frames": sum(len(clip.faces) for clip in clips),
        "threads": args.threads,
        "real_seam": round(seam(real, mode_settings("normal", overrides).window), 3),
        "rows": rows,
    }
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run `--mode normal` and `--mode turbo` on the same generated input, in one process, and compare them.

Not a test (timings are not asserted anywhere): it prints, per mode, the
resolved steps, scheduler, guidance and DeepCache use, the denoise stage time,
the wall time and seconds per output second, then the turbo/normal ratios.

    python3 scripts/compare_modes.py                          # random-tiny weights on the CPU, 0.5 s clip
    python3 scripts/compare_modes.py --device cuda --weights auto --seconds 10 --json

Each mode is a `sync` job run through the job API (prepare, claim, execute), as the
command line runs it. The modes share the loaded models; they run in the order given by --modes,
after one untimed warm-up run of the first mode (first-call costs would
otherwise land on whichever mode runs first).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import run
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.settings.request import SettingsRequest


def run_mode(cache: ModelCache, mode: str, device: str, weights: str, video: Path, audio: Path, folder: Path) -> dict:
    """One `sync` job of `mode`, through the job API as the command line runs it."""
    output = folder / f"{mode}.mp4"
    job = Job(video, audio, output, SettingsRequest(mode=mode, device=device), weights=weights, overwrite=True)
    finished = run(job, cache)
    settings, result = finished.prepared.resolved.settings, finished.result
    return {
        "mode": mode,
        "steps": settings.steps,
        "scheduler": settings.scheduler,
        "guidance": settings.guidance,
        "deepcache": settings.deepcache,
        "window": settings.window,
        "denoise_s": round(result.stage_seconds.get("denoise", 0.0), 3),
        "wall_s": round(result.wall_s, 3),
        "stage_sum_s": round(result.stage_sum_s, 3),
        "seconds_per_output_second": round(result.seconds_per_output_second, 3),
        "frames": result.frames,
        "weights": finished.weights.description,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["normal", "turbo"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="random-tiny", help="auto, random or random-tiny")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of the generated clip and speech")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="latentsync-modes-") as name:
        folder = Path(name)
        video = make_face_clip(folder / "clip.mp4", args.seconds, size=(320, 240))
        audio = make_speech(folder / "voice.wav", args.seconds, use_espeak=False)
        cache = ModelCache()  # the models are loaded once and shared by the modes, as in a batch
        run_mode(cache, args.modes[0], args.device, args.weights, video, audio, folder)  # warm-up, not reported
        rows = [run_mode(cache, mode, args.device, args.weights, video, audio, folder) for mode in args.modes]

    baseline = rows[0]
    for row in rows:
        row["denoise_vs_first"] = round(row["denoise_s"] / baseline["denoise_s"], 3) if baseline["denoise_s"] else None
    if args.json:
        print(json.dumps({"weights": rows[0]["weights"], "device": args.device, "runs": rows}, indent=2))
        return
    print(f"weights: {rows[0]['weights']}; device {args.device}")
    header = ("mode", "steps", "scheduler", "guidance", "deepcache", "denoise_s", "wall_s", "s/out s", "denoise x")
    print("  ".join(f"{title:>10}" for title in header))
    for row in rows:
        names = ("mode", "steps", "scheduler", "guidance", "deepcache", "denoise_s", "wall_s")
        values = [row[name] for name in names] + [row["seconds_per_output_second"], row["denoise_vs_first"]]
        print("  ".join(f"{str(value):>10}" for value in values))


if __name__ == "__main__":
    main()

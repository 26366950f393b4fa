"""Measure the streaming media path: peak memory over video length, and decode/encode speed.

Not a test: it generates long 1080p clips (ffmpeg's testsrc2, x264 ultrafast) in
--workdir, which it deletes afterwards unless --keep. Each measurement runs in a
child process; the parent samples the resident memory of that child and all its
ffmpeg processes together (Linux /proc) every 0.1 s and reports the peak.

    python3 scripts/measure_streaming_memory.py                 # 1 and 10 minutes at 1080p
    python3 scripts/measure_streaming_memory.py --minutes 1 2   # quicker
    python3 scripts/measure_streaming_memory.py --minutes --still-4k 1 10 60   # a whole sync of a 4K still

`--still-4k S...` runs the real `latentsync sync` (random-tiny weights, turbo, one
step) on a generated 3840x2160 still portrait with S seconds of speech, and
reports its peak RSS: what must stay flat in the output length is the frames in
flight, not the frames of the video.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio_ffmpeg

from latentsync_cli.media.encode import VideoEncoder
from latentsync_cli.media.synthetic import face_frames
from latentsync_cli.media.video import probe_video, read_frames

SIZES = {"1080p": (1920, 1080), "720p": (1280, 720)}


def generate_clip(path: Path, seconds: float, width: int, height: int) -> Path:
    if not path.exists():
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25", "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
        ]  # fmt: skip
        subprocess.run(command, check=True)
    return path


# --- what a child process does ---------------------------------------------------


def child_stream(source: str, target: str, preset: str, loop_factor: float) -> dict:
    """read_frames -> VideoEncoder, the shape of the real pipeline's media path."""
    info = probe_video(source)
    n_frames = int(info.frame_count * loop_factor)
    start = time.perf_counter()
    with VideoEncoder(target, info.width, info.height, preset=preset) as encoder:
        for frame in read_frames(source, n_frames, loop="pingpong"):
            encoder.write(frame)
    return {"frames": n_frames, "seconds": time.perf_counter() - start}


def child_decode(source: str, loop_factor: float) -> dict:
    info = probe_video(source)
    n_frames = int(info.frame_count * loop_factor)
    start = time.perf_counter()
    count = sum(1 for _ in read_frames(source, n_frames, loop="pingpong"))
    return {"frames": count, "seconds": time.perf_counter() - start}


def child_encode(target: str, width: int, height: int, n_frames: int, preset: str) -> dict:
    frames = list(face_frames(1.0, 25, (width, height)))  # made before the clock starts, then cycled
    start = time.perf_counter()
    with VideoEncoder(target, width, height, crf=18, preset=preset) as encoder:
        for frame in itertools.islice(itertools.cycle(frames), n_frames):
            encoder.write(frame)
    return {"frames": n_frames, "seconds": time.perf_counter() - start}


def run_child(argv: list[str]) -> None:
    job, *args = argv
    if job == "stream":
        result = child_stream(args[0], args[1], args[2], float(args[3]))
    elif job == "decode":
        result = child_decode(args[0], float(args[1]))
    else:
        result = child_encode(args[0], int(args[1]), int(args[2]), int(args[3]), args[4])
    result["python_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# --- the parent: run a child, watch its memory ---------------------------------------


def process_tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except OSError:
                continue  # the process ended meanwhile
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def measured(job: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", *job]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process_tree_rss_bytes(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"measurement {job[0]} failed with exit status {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    result["fps"] = result["frames"] / result["seconds"]
    return result


def still_4k_rows(workdir: Path, lengths: list[float]) -> list[dict]:
    from latentsync_cli.media.synthetic import make_speech, make_still_image

    workdir.mkdir(parents=True, exist_ok=True)
    still = make_still_image(workdir / "portrait_4k.png", size=(3840, 2160))
    rows = []
    for seconds in lengths:
        voice = make_speech(workdir / f"voice_{seconds:g}.wav", seconds, use_espeak=False)
        command = [sys.executable, "-m", "latentsync_cli", "sync", str(still), str(voice), "-o",
                   str(workdir / "still_out.mp4"), "--overwrite", "--weights", "random-tiny", "--device", "cpu",
                   "--mode", "turbo", "--steps", "1", "--progress", "none", "--quiet"]  # fmt: skip
        started = time.monotonic()
        peak = peak_rss_of(command)
        rows.append({"seconds": seconds, "peak_rss_mb": peak / 2**20, "wall_s": time.monotonic() - started})
    return rows


def peak_rss_of(command: list[str]) -> int:
    """Run `command`; the peak RSS of it and its children together, sampled every 0.1 s."""
    process = subprocess.Popen(command)
    peak = 0
    while process.poll() is None:
        peak = max(peak, process_tree_rss_bytes(process.pid))
        time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="*", default=[1, 10], help="lengths of the 1080p memory runs")
    parser.add_argument("--preset", default="ultrafast", help="x264 preset of the memory runs (default: ultrafast)")
    parser.add_argument("--speed-seconds", type=float, default=10, help="clip length for the fps measurements")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/latentsync-media-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated clips")
    parser.add_argument("--still-4k", type=float, nargs="*", default=[], metavar="S",
                        help="seconds of speech for whole `sync` runs of a 4K still (e.g. 1 10 60)")  # fmt: skip
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child)
        return
    if args.still_4k:
        for row in still_4k_rows(args.workdir, args.still_4k):
            print(f"sync of a 4K still, {row['seconds']:g} s of speech: peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"({row['wall_s']:.0f} s wall)")  # fmt: skip
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for minutes in args.minutes:
            clip = generate_clip(args.workdir / f"testsrc2_1080p_{minutes:g}min.mp4", minutes * 60, *SIZES["1080p"])
            result = measured(["stream", str(clip), str(args.workdir / "out.mp4"), args.preset, "1"])
            rows.append({"what": f"stream 1080p {minutes:g} min (read_frames -> VideoEncoder {args.preset})", **result})
        for name, (width, height) in SIZES.items():
            clip = generate_clip(args.workdir / f"testsrc2_{name}_{args.speed_seconds:g}s.mp4", args.speed_seconds,
                                 width, height)  # fmt: skip
            rows.append({"what": f"decode {name} forward", **measured(["decode", str(clip), "1"])})
            rows.append({"what": f"decode {name} pingpong (x2: forward+backward)", **measured(["decode", str(clip), "2"])})
            n_frames = int(args.speed_seconds * 25)
            for preset in ("medium", "ultrafast"):
                job = ["encode", str(args.workdir / "enc.mp4"), str(width), str(height), str(n_frames), preset]
                rows.append({"what": f"encode {name} crf 18 {preset}", **measured(job)})
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)

    print(f"{'measurement':58} {'frames':>7} {'fps':>7} {'peak RSS (all processes)':>25} {'python only':>12}")
    for row in rows:
        print(f"{row['what']:58} {row['frames']:7d} {row['fps']:7.1f} {row['peak_rss_mb']:22.0f} MB "
              f"{row['python_peak_rss_mb']:9.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()

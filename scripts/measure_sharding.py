"""What sharding costs and what more workers bring, measured in one run on this machine.

    python3 scripts/measure_sharding.py [--seconds 4] [--shards 2] [--ray]

On a generated clip with the tiny model (the CPU cannot run the full one in
reasonable time), through the real CLI:
  1. one uninterrupted run (the reference),
  2. the same job as --shard 1/N .. N/N then --finalize, one after the other,
     with the face-track pass (run by the first shard) and the finalize step
     timed on their own, as shares of the reference,
  3. with --ray: a manifest of two such jobs on a local Ray cluster with 1 and
     with 2 workers (jobs per minute).
Every output is compared with the reference's H.264 stream. Ratios, not
absolute times, are what carries over to other machines.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

from latentsync_cli.media.synthetic import make_face_clip, make_speech

FLAGS = ["--weights", "random-tiny", "--device", "cpu", "--mode", "turbo", "--steps", "2", "--window", "8",
         "--seed", "7", "--progress", "none"]  # fmt: skip
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this Python
# Ports Ray would otherwise take at fixed numbers, shared with anyone else on the machine.
RAY_PORT_FLAGS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                  "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")  # fmt: skip
EMPTY = "10000/10000"  # a shard with no window to compute on any short clip


def cli(*args, check: bool = True) -> float:
    """Seconds one `latentsync` command takes."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "latentsync_cli", *map(str, args)], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{done.stderr}")
    return time.monotonic() - started


def stream(path: Path) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-map", "0:v", "-c", "copy",
               "-f", "h264", "-"]  # fmt: skip
    return subprocess.run(command, capture_output=True, check=True).stdout


def measure_shards(folder: Path, clip: Path, voice: Path, shards: int) -> dict:
    reference = folder / "single.mp4"
    single_s = cli("sync", clip, voice, "-o", reference, *FLAGS)
    target, work = folder / "sharded.mp4", folder / "work"
    shard_s = []
    for number in range(1, shards + 1):
        shard_s.append(
            cli("sync", clip, voice, "-o", target, *FLAGS, "--work-dir", work, "--shard", f"{number}/{shards}")
        )
    finalize_s = cli("sync", clip, voice, "-o", target, *FLAGS, "--work-dir", work, "--finalize")
    # The face-track pass alone: in a fresh work dir, a shard with no window computes only the track;
    # the same again finds the track stored and measures the start-up (models, audio features) alone.
    track_only = [
        "sync",
        clip,
        voice,
        "-o",
        folder / "unused.mp4",
        *FLAGS,
        "--work-dir",
        folder / "track-only",
        "--shard",
        EMPTY,
    ]
    track_s = cli(*track_only)
    idle_s = cli(*track_only)
    return {
        "single_run_s": round(single_s, 2),
        "shard_s": [round(seconds, 2) for seconds in shard_s],
        "finalize_s": round(finalize_s, 2),
        "face_track_pass_s": round(track_s - idle_s, 2),
        "process_start_s": round(idle_s, 2),
        "identical_stream": stream(target) == stream(reference),
        "overhead_share_of_single_run": round((sum(shard_s) + finalize_s - single_s) / single_s, 3),
        "finalize_share_of_single_run": round(finalize_s / single_s, 3),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_private_ray(folder: Path) -> tuple[subprocess.Popen, str]:
    """A local Ray head of our own (free ports, its own temp dir), in the foreground (--block) so that
    ending this one process stops what it started and nothing else on the host; its address."""
    port = free_port()
    ports = [str(value) for flag in RAY_PORT_FLAGS for value in (flag, free_port())]
    command = [*RAY, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--include-dashboard",
               "false", "--disable-usage-stats", f"--temp-dir={folder / 'ray'}", *ports]  # fmt: skip
    head = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        if head.poll() is not None:
            raise SystemExit(f"ray start exited with {head.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return head, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                head.terminate()
                raise SystemExit("no Ray cluster came up within 300 s") from None
            time.sleep(0.2)


def measure_ray(folder: Path, clip: Path, voice: Path) -> dict:
    head, address = start_private_ray(folder)
    try:
        rates = {}
        for workers in (1, 2):
            manifest = folder / f"jobs{workers}.jsonl"
            rows = [{"video": str(clip), "audio": str(voice), "output": f"ray{workers}_{n}.mp4"} for n in range(2)]
            manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
            seconds = cli("sync", "--batch", manifest, *FLAGS, "--ray", address, "--ray-workers", workers)
            rates[f"{workers}_workers_jobs_per_minute"] = round(2 * 60 / seconds, 2)
        return rates
    finally:
        head.terminate()  # `ray start --block` stops the processes it started, and only those
        head.wait(timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also measure 1 and 2 Ray workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        clip = make_face_clip(folder / "clip.mp4", args.seconds, size=(320, 240), preset="ultrafast")
        voice = make_speech(folder / "voice.wav", args.seconds, use_espeak=False)
        report = {"clip_s": args.seconds, "shards": args.shards, **measure_shards(folder, clip, voice, args.shards)}
        if args.ray:
            report.update(measure_ray(folder, clip, voice))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

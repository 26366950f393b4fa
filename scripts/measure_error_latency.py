"""How long `latentsync` takes to report each kind of bad input, against `latentsync --version`.

Not a test (nothing is asserted): each case runs as a fresh subprocess --runs
times (default 3), and the script prints the median wall time of each case and
its ratio to the median of `--version`. The goal is every flag, path and output
error within 2x of `--version`, and missing weights in under 3 s.

    PYTHONPATH=$PWD/src python3 scripts/measure_error_latency.py
    PYTHONPATH=$PWD/src python3 scripts/measure_error_latency.py --runs 5 --latentsync "$(which latentsync)"

The clip and the speech are generated in a temporary folder. Every case gets an
empty HF_HOME there, so weights in this machine's Hugging Face cache do not
count. The unreachable Hub is the loopback discard port (http://127.0.0.1:9):
no request leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg

from latentsync_cli.media.synthetic import make_face_clip, make_speech

UNREACHABLE_HUB = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]
    expected_exit: int
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset the variable


@dataclass
class Timing:
    case: Case
    seconds: list[float]
    exit_codes: list[int]
    last_error: str  # the last `error:` line of the last run, "" when there was none

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def make_cases(folder: Path) -> list[Case]:
    clip = str(make_face_clip(folder / "clip.mp4", seconds=1.0))
    voice = str(make_speech(folder / "voice.wav", seconds=1.0, use_espeak=False))
    existing = folder / "existing.mp4"
    existing.write_bytes(b"")
    not_media = folder / "notes.mp4"
    not_media.write_text("a text file with a video's name\n")
    no_face = folder / "no face.mp4"  # one second of grey
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=gray:size=320x240:rate=25", "-t", "1", "-pix_fmt", "yuv420p", str(no_face)], check=True)
    offline = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": None}
    unreachable = {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": UNREACHABLE_HUB}
    return [
        Case("version", ["--version"], 0),
        Case("flag-error", ["sync", clip, voice, "--mode", "warp"], 2),
        Case("path-error", ["sync", str(folder / "missing.mp4"), voice], 4),
        Case("output-error", ["sync", clip, voice, "-o", str(existing)], 6),
        Case("media-error", ["sync", str(not_media), voice, "--weights", "proxy"], 4),  # weights present
        Case("no-face", ["sync", str(no_face), voice, "--weights", "proxy"], 4),
        Case("weights-offline", ["sync", clip, voice, "--weights", "checkpoint"], 5, offline),
        Case("weights-unreachable", ["sync", clip, voice, "--weights", "checkpoint"], 5, unreachable),
    ]


def case_environment(case: Case, hf_home: Path) -> dict[str, str]:
    environment = {**os.environ, "HF_HOME": str(hf_home)}
    environment.pop("HF_HUB_CACHE", None)
    for key, value in case.env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return environment


def time_case(case: Case, command: list[str], runs: int, folder: Path, timeout_s: float) -> Timing:
    hf_home = folder / "hf_home"  # empty: no weights in the cache
    hf_home.mkdir(exist_ok=True)
    timing = Timing(case, [], [], "")
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            command + case.args,
            cwd=folder,
            env=case_environment(case, hf_home),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        timing.seconds.append(time.perf_counter() - start)
        timing.exit_codes.append(done.returncode)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        timing.last_error = errors[-1] if errors else ""
    return timing


def report(timings: list[Timing]) -> None:
    for timing in timings:
        runs = ", ".join(f"{s:.2f}" for s in timing.seconds)
        codes = sorted(set(timing.exit_codes))
        warning = "" if codes == [timing.case.expected_exit] else f"  (expected exit {timing.case.expected_exit}!)"
        print(f"[{timing.case.name}] runs {runs} s, exit {codes}{warning}")
        if timing.last_error:
            print(f"    {timing.last_error[:160]}")
    version_s = timings[0].median_s
    print()
    for timing in timings:
        print(f"{timing.case.name}: median {timing.median_s:.2f} s, ratio {timing.median_s / version_s:.2f} x --version")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (the median is reported)")
    parser.add_argument(
        "--latentsync",
        default=None,
        help="the latentsync executable to time [default: this Python with -m latentsync_cli]",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before one run is killed")
    args = parser.parse_args()
    command = [args.latentsync] if args.latentsync else [sys.executable, "-m", "latentsync_cli"]
    with tempfile.TemporaryDirectory(prefix="error_latency_") as name:
        folder = Path(name)
        cases = make_cases(folder)
        timings = [time_case(case, command, args.runs, folder, args.timeout) for case in cases]
    report(timings)


if __name__ == "__main__":
    main()

"""Measure how much the audio features jump at Whisper's 30 s borders, before and after overlapping windows.

The speech: the three demo speeches joined (demo1 + demo2 + demo3, 48 s) and repeated from the
start up to --seconds (70 by default), so that 30 s and 60 s fall inside speech.
Before: upstream's layout, back-to-back 30 s windows (`consecutive_windows`).
After: the project's layout, a 30 s window every 15 s counting only its centre, neighbours
cross-faded over 3 s (`overlapping_windows`, see models/audio_features.py).

jump(p) is the L2 norm of features[p + 1] - features[p] over all layers and channels, for
neighbouring encoder positions p, p + 1 (50 per second). The border jump is the largest jump
across a 30 s border; after, it is also taken over every position of every cross-fade, where
one window hands over to the next, so that the new layout's own seams are counted too. It is
divided by the median jump over all other neighbouring pairs (the same pairs before and after).
The encoder time of each layout (wall and CPU seconds, best of --repeats) is given per minute
of speech and as a ratio.

No real Whisper weights exist on this machine: the encoder is Whisper tiny's architecture with
seeded random weights, as `--weights random-tiny` builds it. With such weights the features are
dominated by Whisper's sinusoidal positional embedding, so the jumps here mostly measure whether
the position inside a window changes smoothly; the context a position lacks at a border is the
other half of the problem, and only real weights would show its size.

    python3 scripts/measure_audio_borders.py [--media-dir DIR] [--seconds 70] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.media.audio import SAMPLE_RATE, load_audio
from latentsync_cli.models.audio_features import (
    EncoderWindow,
    WindowLayout,
    consecutive_windows,
    encode_windows,
    log_mel_spectrogram,
    overlapping_windows,
)
from latentsync_cli.models.frame_count import FEATURE_RATE
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, random_audio_encoder

DEFAULT_MEDIA_DIR = Path(__file__).resolve().parents[2] / "shared" / "media"
SPEECHES = ("demo1_audio.wav", "demo2_audio.wav", "demo3_audio.wav")
SEED = 0  # the seed `latentsync sync --weights random-tiny` builds its models with


def long_speech(media_dir: Path, seconds: float) -> tuple[np.ndarray, float]:
    """The demo speeches joined and repeated up to `seconds`; also the length of one pass."""
    joined = np.concatenate([load_audio(media_dir / name) for name in SPEECHES])
    samples = int(seconds * SAMPLE_RATE)
    repeats = -(-samples // joined.size)
    return np.tile(joined, repeats)[:samples], joined.size / SAMPLE_RATE


def neighbour_jumps(features: torch.Tensor) -> torch.Tensor:
    """(L, layers, C) -> (L - 1,): |features[p + 1] - features[p]| for each p."""
    return (features[1:] - features[:-1]).flatten(1).norm(dim=1)


def crossfade_pairs(windows: list[EncoderWindow], layout: WindowLayout, num_positions: int) -> set[int]:
    """Every p whose pair (p, p + 1) touches a cross-fade: where one window hands over to the next."""
    pairs: set[int] = set()
    for window in windows[1:]:
        first = window.start + layout.margin
        pairs.update(p for p in range(first - 1, first + layout.crossfade) if p < num_positions - 1)
    return pairs


def time_layouts(
    encoder: AudioEncoder, mel: torch.Tensor, layouts: dict[str, list[EncoderWindow]], repeats: int
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]:
    """Each layout's features and its best wall and CPU seconds; the layouts take turns, so load shifts hit both."""
    features, wall, cpu = {}, dict.fromkeys(layouts, float("inf")), dict.fromkeys(layouts, float("inf"))
    for _ in range(repeats):
        for name, windows in layouts.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            features[name] = encode_windows(encoder, mel, windows)
            wall[name] = min(wall[name], time.perf_counter() - wall_start)
            cpu[name] = min(cpu[name], time.process_time() - cpu_start)
    return features, wall, cpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media-dir", type=Path, default=DEFAULT_MEDIA_DIR)
    parser.add_argument("--seconds", type=float, default=70.0, help="length of the joined speech")
    parser.add_argument("--repeats", type=int, default=1, help="encodings per layout; the fastest is reported")
    args = parser.parse_args()
    if args.seconds <= 31:
        parser.error("--seconds must be more than 31: the speech must cross a 30 s border")
    return args


def main() -> None:
    args = parse_args()
    speech, one_pass = long_speech(args.media_dir, args.seconds)
    mel = log_mel_spectrogram(speech)
    num_positions = mel.shape[1] // 2
    dims = WhisperDims.tiny()
    encoder = random_audio_encoder(dims, seed=SEED)
    window = dims.n_audio_ctx
    print(f"speech: {', '.join(SPEECHES)} joined ({one_pass:.2f} s), repeated up to {speech.size / SAMPLE_RATE:.2f} s")
    print(f"encoder: Whisper tiny's architecture with seeded random weights (seed {SEED}), as --weights random-tiny")
    print("  builds it: no real Whisper weights exist here; random features are dominated by the positional embedding")
    print(f"torch threads: {torch.get_num_threads()}; {mel.shape[1]} mel frames, {num_positions} encoder positions")
    embedding = encoder.positional_embedding
    steps = [(embedding[a] - embedding[b]).norm().item() for a, b in ((1, 0), (window - 1, 0), (window // 2, 0))]
    print(f"positional embedding: {steps[0]:.2f} from position 0 to 1, {steps[1]:.2f} from {window - 1} to 0,", end="")
    print(f" {steps[2]:.2f} between positions {window // 2} apart")

    layouts = {
        "before": consecutive_windows(num_positions, window),
        "after": overlapping_windows(num_positions, window),
    }
    borders = {p - 1 for p in range(window, num_positions, window)}  # pair (p - 1, p) crosses a 30 s border
    seams = crossfade_pairs(layouts["after"], WindowLayout(window), num_positions)
    others = torch.tensor([p for p in range(num_positions - 1) if p not in borders | seams])
    minutes = num_positions / FEATURE_RATE / 60
    features, wall, cpu = time_layouts(encoder, mel, layouts, args.repeats)
    ratios = {}
    for name, windows in layouts.items():
        jumps = neighbour_jumps(features[name])
        median = jumps[others].median().item()
        at_borders = max(jumps[p].item() for p in borders)
        starts = ", ".join(f"{w.start / FEATURE_RATE:g}" for w in windows)
        print(f"{name}: {len(windows)} windows starting at {starts} s")
        print(f"  median jump elsewhere {median:.3f}; largest across a 30 s border {at_borders:.3f}")
        largest = at_borders
        if name == "after":
            in_crossfades = max(jumps[p].item() for p in seams)
            print(f"  largest in a cross-fade (where windows hand over) {in_crossfades:.3f}")
            largest = max(at_borders, in_crossfades)
        ratios[name] = largest / median
        per_minute = f"{wall[name] / minutes:.2f} s wall, {cpu[name] / minutes:.2f} s CPU"
        print(f"  encoder time per minute of speech: {per_minute}")
    unchanged = (features["after"] == features["before"]).flatten(1).all(dim=1).sum().item()
    print(f"positions whose features equal upstream's bit for bit: {unchanged} of {num_positions}")
    ratio = f"{wall['after'] / wall['before']:.2f} wall, {cpu['after'] / cpu['before']:.2f} CPU"
    print(f"encoder time after / before: {ratio} ({len(layouts['before'])} -> {len(layouts['after'])} windows here;")
    print("  on long speech 2 -> 4 windows a minute: the ratio tends to 2)")
    print(f"border jump ratio: {ratios['before']:.2f} -> {ratios['after']:.2f}")


if __name__ == "__main__":
    main()

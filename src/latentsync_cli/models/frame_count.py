"""How many video frames a speech makes, and which audio positions each frame takes: arithmetic only
(no torch), so that a job knows its length before any model is loaded.

Whisper-tiny turns 16 kHz speech into 50 positions a second (one per 320 samples). Video
frame i of a video at `fps` frames a second is shown at i / fps s and takes the audio
around position floor(i * 50 / fps), the position that starts at or just before its
time: at 25 fps every second position (upstream's rule), at 24 fps 2.083 positions a
frame, at 29.97 fps 1.668. Computed in exact fractions, so 30000/1001 fps never rounds
a frame onto its neighbour's position.
"""

from __future__ import annotations

from fractions import Fraction

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms: 100 mel frames per second
FEATURE_RATE = 50  # encoder positions per second (conv2 halves the mel rate)
SAMPLES_PER_POSITION = SAMPLE_RATE // FEATURE_RATE


def positions_per_frame(fps: Fraction | float) -> Fraction:
    return Fraction(FEATURE_RATE) / Fraction(fps).limit_denominator(1_000_000)


def frame_position(frame: int, fps: Fraction | float) -> int:
    """The encoder position frame `frame` is centred on: floor(frame * 50 / fps)."""
    return int(frame * positions_per_frame(fps))  # Fraction -> int truncates, and frame >= 0


def chunk_count(num_features: int, fps: Fraction | float = 25) -> int:
    """Upstream's feature2chunks emits frames i = 0, 1, ... and stops after the first i whose
    start index int(i * 50 / fps) exceeds L, so it makes floor(L / 2) + 2 chunks at 25 fps."""
    step = positions_per_frame(fps)
    count = int(num_features / step)
    while int(count * step) <= num_features:
        count += 1
    return count + 1


def output_frame_count(num_samples: int, fps: Fraction | float = 25) -> int:
    """The output frames `num_samples` of 16 kHz speech make, without running the encoder: the log-mel
    has samples // 160 frames, the encoder half as many positions, and chunk_count turns those into frames."""
    return chunk_count(num_samples // HOP_LENGTH // 2, fps)


def speech_samples_for(num_frames: int, fps: Fraction | float = 25) -> int:
    """The fewest 16 kHz samples whose speech makes at least `num_frames` frames (--length video):
    a whole number of encoder positions, at least one."""
    positions = max(1, int((num_frames - 2) * positions_per_frame(fps)))
    while positions > 1 and chunk_count(positions - 1, fps) >= num_frames:
        positions -= 1
    while chunk_count(positions, fps) < num_frames:
        positions += 1
    return positions * SAMPLES_PER_POSITION

"""How far h264_nvenc's output is from libx264's on the same frames, at the job's default quality.

`latentsync benchmark` runs this where `--encoder auto` takes NVENC (a CUDA
machine whose GPU has an NVENC unit): it encodes the benchmark's input clip
with both encoders at the defaults of a job (crf 18 and x264 `veryfast`;
NVENC's preset p4 at -cq 18), reads both back and reports NVENC's PSNR against
libx264 and each encoder's speed. Elsewhere it records which encoder `auto`
takes and why, and measures nothing: there is only one encoder to run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from latentsync_cli.bench.fidelity import read_video_frames
from latentsync_cli.bench.metrics import clip_psnr
from latentsync_cli.benchmark_data.entries import EncoderParity
from latentsync_cli.constants import FPS
from latentsync_cli.media.encode import DEFAULT_CRF, DEFAULT_X264_PRESET, EncoderChoice, VideoEncoder
from latentsync_cli.media.video import read_frames

PARITY_FRAMES = 125  # 5 s at 25 fps: enough for NVENC's rate control to settle
PSNR_CAP_DB = 100.0  # identical outputs would be infinite; JSON has no infinity


def measure_encoder_parity(video: Path, workspace: Path, choice: EncoderChoice) -> EncoderParity:
    """Compare h264_nvenc with libx264 on the first frames of `video` when `choice` (auto's pick) is NVENC."""
    if choice.name != "h264_nvenc":
        return EncoderParity(chosen=choice.name, reason=choice.reason)
    frames = first_frames(video, PARITY_FRAMES)
    reference, reference_fps = encode_and_read_back(frames, workspace / "parity-libx264.mp4", "libx264")
    candidate, candidate_fps = encode_and_read_back(frames, workspace / "parity-h264_nvenc.mp4", "h264_nvenc")
    psnr = min(clip_psnr(reference, candidate), PSNR_CAP_DB)
    return EncoderParity(
        chosen=choice.name,
        reason=choice.reason,
        frames=len(frames),
        psnr_db=round(psnr, 2) if math.isfinite(psnr) else PSNR_CAP_DB,
        fps={"libx264": round(reference_fps, 1), "h264_nvenc": round(candidate_fps, 1)},
    )


def first_frames(video: Path, count: int) -> list[np.ndarray]:
    """Up to `count` RGB frames of `video` from its start, at 25 fps (a shorter video gives fewer)."""
    frames = []
    reader = read_frames(video, count, loop="freeze")
    try:
        for frame in reader:
            frames.append(np.array(frame))  # copies: a still's frames are one read-only array
    finally:
        reader.close()
    return frames


def encode_and_read_back(frames: list[np.ndarray], path: Path, codec: str) -> tuple[list[np.ndarray], float]:
    """Encode `frames` with `codec` at a job's default quality; the decoded frames and the encoding speed."""
    height, width = frames[0].shape[:2]
    started = time.perf_counter()
    with VideoEncoder(path, width, height, FPS, DEFAULT_CRF, DEFAULT_X264_PRESET, codec) as encoder:
        for frame in frames:
            encoder.write(frame)
    seconds = time.perf_counter() - started
    decoded = read_video_frames(path)
    path.unlink(missing_ok=True)
    return decoded, len(frames) / max(seconds, 1e-9)

"""Frames per second of the media path without the model, against the transcode floor.

For each clip (the demo clips in --clips, or a generated 1080 x 1920 face clip
when there are none) this measures, in the same run:

- the media path: decode -> landmarks -> align -> restore (the aligned face
  pasted back unchanged: the model is the identity) -> encode, on two threads
  as the pipeline runs it (decode + landmarks + align, then restore + encode);
- the transcode floor: decode -> encode alone, same encoder settings;
- each lane alone (decode, landmarks, align, restore, encode), on frames held
  in memory so that no lane waits for another.

It prints one line per clip and last `ratio to transcode floor: R`, R being
the worst clip's media path fps / transcode floor fps (1.0: the face work
costs nothing; the GPU can only be starved by the media path below that).

    PYTHONPATH=src python3 scripts/measure_media_path.py [--clips DIR] [--frames 100]
        [--encoder auto] [--restore opencv|torch] [--restore-threads N]
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.face.align import AlignedFace, FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.restore import paste_thread_count, restore_faces
from latentsync_cli.face.restore_torch import restore_faces_torch
from latentsync_cli.media.encode import ENCODER_CHOICES, VideoEncoder, choose_encoder
from latentsync_cli.media.synthetic import make_face_clip
from latentsync_cli.media.video import probe_video, read_frames

RESTORE_BATCH = 16  # faces pasted per call: the pipeline's default window
LANES = ("decode", "landmarks", "align", "restore", "encode")


@dataclass
class Setup:
    n_frames: int
    stride: int
    codec: str
    preset: str
    crf: int
    restore: str  # "opencv" or "torch"
    pool: ThreadPoolExecutor | None


def model_input(aligned: AlignedFace) -> np.ndarray:
    """The aligned face as the model would return it unchanged: float32 (3, R, R) in [-1, 1]."""
    return aligned.face.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def restore_batch(frames: list[np.ndarray], aligned: list[AlignedFace | None], setup: Setup) -> list[np.ndarray]:
    """Paste each frame's face back (frames without a face stay as they are)."""
    found = [index for index, face in enumerate(aligned) if face is not None]
    if not found:
        return list(frames)
    faces = torch.from_numpy(np.stack([model_input(aligned[index]) for index in found]))
    affines = [aligned[index].affine for index in found]
    if setup.restore == "torch":
        stacked = torch.from_numpy(np.stack([frames[index] for index in found]))
        restored = list(restore_faces_torch(stacked, faces, affines).numpy())
    else:
        restored = restore_faces([frames[index] for index in found], faces, affines, pool=setup.pool)
    result = list(frames)
    for index, frame in zip(found, restored):
        result[index] = frame
    return result


def new_encoder(path: Path, frame: np.ndarray, setup: Setup) -> VideoEncoder:
    height, width = frame.shape[:2]
    return VideoEncoder(path, width, height, crf=setup.crf, preset=setup.preset, codec=setup.codec)


def encode_all(frames, path: Path, setup: Setup) -> int:
    encoder = None
    count = 0
    for frame in frames:
        encoder = encoder or new_encoder(path, frame, setup)
        encoder.write(frame)
        count += 1
    encoder.finish()
    return count


def aligned_frames(clip: Path, setup: Setup):
    """Decode -> landmarks -> align, streaming: (frame, aligned face or None)."""
    detector = MediapipeLandmarks(stride=setup.stride)
    aligner = FaceAligner(512)
    try:
        for frame in read_frames(clip, setup.n_frames):
            points = detector.detect(frame)
            yield frame, (aligner.align(frame, points.points) if points is not None else None)
    finally:
        detector.close()


def restored_frames(items, setup: Setup):
    """Restore in batches of RESTORE_BATCH, streaming."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == RESTORE_BATCH:
            yield from restore_batch([frame for frame, _ in batch], [face for _, face in batch], setup)
            batch = []
    if batch:
        yield from restore_batch([frame for frame, _ in batch], [face for _, face in batch], setup)


def media_path_fps(clip: Path, out: Path, setup: Setup) -> float:
    """The whole path on two threads, as the pipeline overlaps it."""
    handoff: queue.Queue = queue.Queue(maxsize=2 * RESTORE_BATCH)
    done = object()

    def producer():
        for item in aligned_frames(clip, setup):
            handoff.put(item)
        handoff.put(done)

    start = time.perf_counter()
    thread = threading.Thread(target=producer)
    thread.start()
    count = encode_all(restored_frames(iter(handoff.get, done), setup), out, setup)
    thread.join()
    return count / (time.perf_counter() - start)


def transcode_floor_fps(clip: Path, out: Path, setup: Setup) -> float:
    start = time.perf_counter()
    count = encode_all(read_frames(clip, setup.n_frames), out, setup)
    return count / (time.perf_counter() - start)


def lane_fps(clip: Path, out: Path, setup: Setup) -> dict[str, float]:
    """Each lane alone, on the previous lane's output held in memory."""
    seconds = {}
    start = time.perf_counter()
    frames = list(read_frames(clip, setup.n_frames))
    seconds["decode"] = time.perf_counter() - start

    detector = MediapipeLandmarks(stride=setup.stride)
    start = time.perf_counter()
    points = [detector.detect(frame) for frame in frames]
    seconds["landmarks"] = time.perf_counter() - start
    detector.close()

    aligner = FaceAligner(512)
    start = time.perf_counter()
    aligned = [aligner.align(frame, found.points) if found else None for frame, found in zip(frames, points)]
    seconds["align"] = time.perf_counter() - start

    start = time.perf_counter()
    restored = []
    for first in range(0, len(frames), RESTORE_BATCH):
        batch = slice(first, first + RESTORE_BATCH)
        restored += restore_batch(frames[batch], aligned[batch], setup)
    seconds["restore"] = time.perf_counter() - start
    del frames  # only the restored frames stay in memory

    start = time.perf_counter()
    encode_all(restored, out, setup)
    seconds["encode"] = time.perf_counter() - start
    return {lane: len(restored) / seconds[lane] for lane in LANES}


def measure_clip(clip: Path, scratch: Path, setup: Setup) -> dict[str, float]:
    out = scratch / f"{clip.stem}-out.mp4"
    result = {"media path": media_path_fps(clip, out, setup), "transcode floor": transcode_floor_fps(clip, out, setup)}
    result.update(lane_fps(clip, out, setup))
    return result


def report_line(name: str, size: str, fps: dict[str, float]) -> str:
    ratio = fps["media path"] / fps["transcode floor"]
    lanes = ", ".join(f"{lane} {fps[lane]:.1f}" for lane in LANES)
    slowest = min(LANES, key=fps.get)
    return (
        f"{name} {size}: media path {fps['media path']:.1f} fps, transcode floor {fps['transcode floor']:.1f} fps,"
        f" ratio {ratio:.2f}; lanes alone (fps): {lanes}; slowest lane: {slowest}"
        f" ({fps[slowest] / fps['transcode floor']:.2f}x the floor)"
    )


def clips_to_measure(folder: Path, scratch: Path, n_frames: int) -> list[Path]:
    clips = sorted(folder.glob("demo*_video.mp4"))
    if clips:
        return clips
    print(f"no demo*_video.mp4 in {folder}: using a generated 1080x1920 face clip", flush=True)
    return [make_face_clip(scratch / "generated_video.mp4", n_frames / 25 + 0.2, size=(1080, 1920))]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("--clips", type=Path, default=here.parent / "shared" / "media")
    parser.add_argument("--frames", type=int, default=100, help="frames of each clip to process (default 100)")
    parser.add_argument("--stride", type=int, default=1, help="landmark detection stride (normal mode: 1)")
    parser.add_argument("--encoder", default="auto", choices=ENCODER_CHOICES)
    parser.add_argument("--preset", default="veryfast", help="x264 preset (the pipeline's: veryfast)")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--restore", default="opencv", choices=("opencv", "torch"))
    parser.add_argument("--restore-threads", type=int, default=0, help="paste threads; 0: one per core (capped)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    choice = choose_encoder(args.encoder)
    threads = args.restore_threads or paste_thread_count()
    print(f"encoder {choice.name} ({choice.reason}); restore {args.restore}, {threads} paste thread(s);"
          f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    worst = None
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(threads) as pool:
        scratch = Path(folder)
        setup = Setup(args.frames, args.stride, choice.name, args.preset, args.crf, args.restore,
                      pool if threads > 1 else None)  # fmt: skip
        for clip in clips_to_measure(args.clips, scratch, args.frames):
            info = probe_video(clip)
            fps = measure_clip(clip, scratch, setup)
            print(report_line(clip.stem, f"{info.width}x{info.height}", fps), flush=True)
            ratio = fps["media path"] / fps["transcode floor"]
            worst = ratio if worst is None else min(worst, ratio)
    print(f"ratio to transcode floor: {worst:.2f}")


if __name__ == "__main__":
    main()

"""Frames per second of the CPU media path, without the model.

decode (25 fps) -> landmarks (stride k) -> align -> restore (the aligned face
pasted back unchanged) -> encode, on each demo clip, at stride 1 and at each
mode's `face_detect_stride` from the preset table. The model's place is taken
by the identity, so this is the speed the media path allows the GPU.

Runs two ways: `serial` (one thread, the sum of the stages) and `overlapped`
(decode+landmarks+align on one thread, restore+encode on another, as the
pipeline runs them).

    python3 scripts/measure_media_path.py [--clips DIR] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.restore import restore_face
from latentsync_cli.media.encode import VideoEncoder
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.presets import load_presets


def produce(path: Path, n_frames: int, stride: int):
    """Decoded frames with their aligned face (or None)."""
    detector = MediapipeLandmarks(stride=stride)
    aligner = FaceAligner(512)
    try:
        for frame in read_frames(path, n_frames):
            points = detector.detect(frame)
            yield frame, (aligner.align(frame, points.points) if points is not None else None)
    finally:
        detector.close()


def consume(items, out_path: Path) -> int:
    encoder = None
    count = 0
    for frame, aligned in items:
        if aligned is not None:
            face = aligned.face.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
            frame = restore_face(frame, face, aligned.affine)
        if encoder is None:
            encoder = VideoEncoder(out_path, frame.shape[1], frame.shape[0], preset="veryfast")  # as the pipeline
        encoder.write(frame)
        count += 1
    encoder.finish()
    return count


def overlapped(path: Path, n_frames: int, stride: int, out_path: Path) -> int:
    handoff: queue.Queue = queue.Queue(maxsize=32)
    done = object()

    def producer():
        for item in produce(path, n_frames, stride):
            handoff.put(item)
        handoff.put(done)

    thread = threading.Thread(target=producer)
    thread.start()
    count = consume(iter(handoff.get, done), out_path)
    thread.join()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("--clips", type=Path, default=here.parent / "shared" / "media")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of each clip to process")
    args = parser.parse_args()

    table = load_presets()
    strides = sorted({1} | {mode.face_detect_stride for mode in table.modes.values()})
    n_frames = int(args.seconds * 25)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2-core machine)")
    print("clip   size       stride  serial fps  overlapped fps")
    with tempfile.TemporaryDirectory() as scratch:
        for clip in sorted(args.clips.glob("demo*_video.mp4")):
            info = probe_video(clip)
            for stride in strides:
                out = Path(scratch) / f"{clip.stem}-{stride}.mp4"
                start = time.perf_counter()
                count = consume(produce(clip, n_frames, stride), out)
                serial_fps = count / (time.perf_counter() - start)
                start = time.perf_counter()
                count = overlapped(clip, n_frames, stride, out)
                overlapped_fps = count / (time.perf_counter() - start)
                print(
                    f"{clip.stem[:5]}  {info.width}x{info.height}  {stride:>6}  {serial_fps:10.1f}  {overlapped_fps:14.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

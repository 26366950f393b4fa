"""Measure what a face-detection stride costs in landmark quality, and the face stages' speed.

For each demo clip, every frame goes to one MediapipeLandmarks per stride
(1, 2, 4, 8 by default) and we report:
  detected   fraction of frames with a face
  det runs   how many frames the full detector ran on
  jitter     mean |p[t+1] - 2 p[t] + p[t-1]| over the 3 alignment points (px), frames with a face on all three
  vs s=1     mean distance of the 3 points from stride 1's (px), frames where both found a face
  fps        frames per second of detect() alone (decoding excluded)
Then, on the first frame of each clip, the speed of align and restore.

    python3 scripts/measure_face_stride.py [--media-dir DIR] [--frames N] [--strides 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.restore import faces_to_crops, paste_crop, restore_face

DEFAULT_MEDIA_DIR = Path(__file__).resolve().parents[2] / "shared" / "media"


def read_frames(path: Path, limit: int):
    """RGB frames of a video, decoded with OpenCV, at most `limit`."""
    capture = cv2.VideoCapture(str(path))
    try:
        while limit > 0:
            ok, frame_bgr = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
            limit -= 1
    finally:
        capture.release()


def track_clip(path: Path, strides: list[int], limit: int):
    """Points per frame (None without a face), seconds spent in detect() and detector runs, per stride."""
    detectors = {stride: MediapipeLandmarks(stride=stride) for stride in strides}
    points = {stride: [] for stride in strides}
    seconds = dict.fromkeys(strides, 0.0)
    first_frame = None
    for frame in read_frames(path, limit):
        if first_frame is None:
            first_frame = frame
        for stride, detector in detectors.items():
            start = time.perf_counter()
            found = detector.detect(frame)
            seconds[stride] += time.perf_counter() - start
            points[stride].append(None if found is None else found.points)
    runs = {stride: detector.detector_runs for stride, detector in detectors.items()}
    for detector in detectors.values():
        detector.close()
    return points, seconds, runs, first_frame


def jitter(points: list) -> float:
    """Mean second difference of the 3 points (px) over runs of three frames that all have a face."""
    values = []
    for before, now, after in zip(points, points[1:], points[2:]):
        if before is not None and now is not None and after is not None:
            values.append(np.linalg.norm(after - 2 * now + before, axis=1).mean())
    return float(np.mean(values)) if values else float("nan")


def distance(points: list, reference: list) -> float:
    values = [
        np.linalg.norm(ours - theirs, axis=1).mean()
        for ours, theirs in zip(points, reference)
        if ours is not None and theirs is not None
    ]
    return float(np.mean(values)) if values else float("nan")


def time_per_call(function, repeats: int = 20) -> tuple[float, float]:
    """Best-of-3 mean (wall, CPU) seconds per call; CPU time (all threads) shows what the work
    costs when other processes share the cores."""
    function()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(3):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            function()
        best_wall = min(best_wall, (time.perf_counter() - start_wall) / repeats)
        best_cpu = min(best_cpu, (time.process_time() - start_cpu) / repeats)
    return best_wall, best_cpu


def measure_stages(frame: np.ndarray) -> None:
    with MediapipeLandmarks(stride=1) as detector:
        found = detector.detect(frame)
        detect_s = time_per_call(lambda: detector.detect(frame))
    if found is None:
        print("  no face in the first frame; stage timings skipped")
        return
    aligner = FaceAligner(512)
    aligned = aligner.align(frame, found.points)
    face = np.ascontiguousarray(aligned.face.transpose(2, 0, 1)).astype(np.float32) / 127.5 - 1
    crop = faces_to_crops(face[None])[0]
    align_s = time_per_call(lambda: aligner.align(frame, found.points))
    resize_s = time_per_call(lambda: faces_to_crops(face[None]))
    paste_s = time_per_call(lambda: paste_crop(frame, crop, aligned.affine))
    restore_s = time_per_call(lambda: restore_face(frame, face, aligned.affine))
    width = found.box[2] - found.box[0]
    print(f"  frame {frame.shape[1]}x{frame.shape[0]}, face mesh box {width:.0f} px wide")
    print(f"  {'stage':32s} {'wall ms':>8} {'fps':>7} {'CPU ms':>8}")
    for name, (wall, cpu) in [
        ("detect (stride 1)", detect_s),
        ("align", align_s),
        ("restore: resize 512 -> 560x420", resize_s),
        ("restore: warp + blend", paste_s),
        ("restore total", restore_s),
    ]:
        print(f"  {name:32s} {wall * 1000:8.1f} {1 / wall:7.1f} {cpu * 1000:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media-dir", type=Path, default=DEFAULT_MEDIA_DIR)
    parser.add_argument("--frames", type=int, default=10_000, help="at most this many frames per clip")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    strides = sorted(set(args.strides) | {1})

    clips = sorted(args.media_dir.glob("demo*_video.mp4"))
    if not clips:
        raise SystemExit(f"no demo*_video.mp4 in {args.media_dir}")
    print(f"{cv2.getNumberOfCPUs()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for clip in clips:
        points, seconds, runs, first_frame = track_clip(clip, strides, args.frames)
        frames = len(points[1])
        print(f"\n{clip.name}: {frames} frames, {first_frame.shape[1]}x{first_frame.shape[0]}")
        print(f"  {'stride':>6} {'detected':>9} {'det runs':>9} {'jitter px':>10} {'vs s=1 px':>10} {'fps':>7}")
        for stride in strides:
            detected = sum(p is not None for p in points[stride]) / frames
            print(
                f"  {stride:>6} {detected:>9.1%} {runs[stride]:>9} {jitter(points[stride]):>10.3f}"
                f" {distance(points[stride], points[1]):>10.3f} {frames / seconds[stride]:>7.1f}"
            )
        measure_stages(first_frame)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

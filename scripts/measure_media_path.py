"""Frames per second of the media path without the model, against the transcode floor.

For each clip (the demo clips in --clips, or a generated 1080 x 1920 face clip
when there are none) this measures, in the same run:

- the media path: decode -> landmarks -> align -> restore (the aligned face
  pasted back unchanged: the model is the identity) -> encode, on two threads
  as the pipeline runs it (decode + landmarks + align, then restore + encode);
- the transcode floor: decode -> encode alone, same encoder settings;
- each lane alone (decode, landmarks, align, restore, encode), on frames held
  in memory so that no lane waits for another.

It also counts the CPU time each of these takes per frame (this process's
threads and its ffmpeg children together). Where the transcode alone keeps
every core busy, as x264 does on a small machine, no threading can hide the
face work: the ratio is at best floor CPU / (floor CPU + face CPU). The
per-clip line gives the face lanes' CPU milliseconds a frame, what the goal
ratio allows, and the lane that costs the most.

With several `--codecs` (the job's output codecs: h264, hevc, prores, dnxhr,
ffv1, png, tiff, exr, dpx), the media path and its floor are measured for each,
through the job's own writer (media/outputs.OutputWriter, with the speech muxed
in as a job does), in the same run; the lanes alone for the first codec, and the
encode lane alone for each.

It prints one line per clip and codec and last `ratio to transcode floor: R`, R
being the worst media path fps / transcode floor fps (1.0: the face work costs
nothing; the GPU can only be starved by the media path below that).

    PYTHONPATH=src python3 scripts/measure_media_path.py [--clips DIR] [--frames 100] [--codecs h264,prores]
        [--encoder auto] [--restore opencv|torch] [--restore-threads N] [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.face.align import AlignedFace, FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.restore import paste_thread_count, restore_faces
from latentsync_cli.face.restore_torch import restore_faces_torch
from latentsync_cli.media.audio import speech_stream
from latentsync_cli.media.encode import ENCODER_CHOICES, choose_encoder
from latentsync_cli.media.outputs import EncodeSettings, OutputWriter, Speech, choose_output
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.media.video import VideoInfo, probe_video, read_frames
from latentsync_cli.pipeline.lipsync import READ_AHEAD_FRAMES
from latentsync_cli.pipeline.overlap import ReadAhead

RESTORE_BATCH = 16  # faces pasted per call: the pipeline's default window
LANES = ("decode", "landmarks", "align", "restore")  # each alone; then the encode of each codec
FACE_LANES = ("landmarks", "align", "restore")  # the work the transcode floor does not do
GOAL_RATIO = 0.7
# Where each codec is written (a sequence into a folder of its own).
OUTPUT_NAMES = {"h264": "out.mp4", "hevc": "out.mp4", "prores": "out.mov", "prores4444": "out.mov",
                "dnxhr": "out.mov", "ffv1": "out.mkv", "png": "seq/f_%05d.png", "tiff": "seq/f_%05d.tif",
                "exr": "seq/f_%05d.exr", "dpx": "seq/f_%05d.dpx"}  # fmt: skip


def cpu_seconds() -> float:
    """CPU time so far of this process (all its threads) and of its children that have exited."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class Measured:
    """Frames per second and CPU milliseconds per frame of one run or lane."""

    fps: float
    cpu_ms: float


@dataclass
class Setup:
    n_frames: int
    stride: int
    h264_encoder: str  # libx264 or h264_nvenc
    preset: str
    crf: int
    restore: str  # "opencv" or "torch"
    pool: ThreadPoolExecutor | None
    device: torch.device  # where the torch restore runs (the pipeline's: the model's device)
    scratch: Path
    speech: Speech
    codec: str = "h264"  # the output codec (media/outputs.py)
    source: VideoInfo | None = None  # the clip being measured


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
        stacked = torch.from_numpy(np.stack([frames[index] for index in found])).to(setup.device)
        restored = list(restore_faces_torch(stacked, faces.to(setup.device), affines).cpu().numpy())
    else:
        restored = restore_faces([frames[index] for index in found], faces, affines, pool=setup.pool)
    result = list(frames)
    for index, frame in zip(found, restored):
        result[index] = frame
    return result


def encode_all(frames, setup: Setup) -> int:
    """The frames through the job's writer for `setup.codec`, with the speech, into a folder dropped after."""
    folder = Path(tempfile.mkdtemp(dir=setup.scratch))
    spec = choose_output(folder / OUTPUT_NAMES[setup.codec], setup.codec, None, setup.source)
    duration = Fraction(setup.n_frames) / setup.source.rate
    encoding = EncodeSettings(setup.crf, setup.preset, setup.h264_encoder)
    writer = OutputWriter(spec, setup.source, setup.speech, duration, folder, encoding)
    count = 0
    for frame in frames:
        writer.write(frame)
        count += 1
    writer.end_of_frames()
    writer.finish()
    shutil.rmtree(folder)
    return count


def aligned_frames(clip: Path, setup: Setup):
    """Decode -> landmarks -> align, streaming: (frame, aligned face or None)."""
    detector = MediapipeLandmarks(stride=setup.stride)
    aligner = FaceAligner(512)
    frames = read_frames(clip, setup.n_frames)
    if setup.pool is not None:  # as the pipeline does where there are cores to spare
        frames = ReadAhead(frames, READ_AHEAD_FRAMES)
    try:
        for frame in frames:
            points = detector.detect(frame)
            yield frame, (aligner.align(frame, points.points) if points is not None else None)
    finally:
        frames.close()
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


def media_path(clip: Path, setup: Setup) -> Measured:
    """The whole path on two threads, as the pipeline overlaps it."""
    handoff: queue.Queue = queue.Queue(maxsize=2 * RESTORE_BATCH)
    done = object()

    def producer():
        for item in aligned_frames(clip, setup):
            handoff.put(item)
        handoff.put(done)

    start, cpu_start = time.perf_counter(), cpu_seconds()
    thread = threading.Thread(target=producer)
    thread.start()
    count = encode_all(restored_frames(iter(handoff.get, done), setup), setup)
    thread.join()
    return measured(count, start, cpu_start)


def transcode_floor(clip: Path, setup: Setup) -> Measured:
    start, cpu_start = time.perf_counter(), cpu_seconds()
    count = encode_all(read_frames(clip, setup.n_frames), setup)
    return measured(count, start, cpu_start)


def measured(count: int, start: float, cpu_start: float) -> Measured:
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return Measured(fps=count / wall, cpu_ms=1e3 * cpu / count)


def lanes_alone(clip: Path, setup: Setup, codecs: list[str]) -> dict[str, Measured]:
    """Each lane alone, on the previous lane's output held in memory."""
    marks = [(time.perf_counter(), cpu_seconds())]

    def lane_done() -> None:
        marks.append((time.perf_counter(), cpu_seconds()))

    frames = list(read_frames(clip, setup.n_frames))
    lane_done()

    detector = MediapipeLandmarks(stride=setup.stride)
    points = [detector.detect(frame) for frame in frames]
    lane_done()
    detector.close()

    aligner = FaceAligner(512)
    marks[-1] = (time.perf_counter(), cpu_seconds())  # not the detector's close
    aligned = [aligner.align(frame, found.points) if found else None for frame, found in zip(frames, points)]
    lane_done()

    restored = []
    for first in range(0, len(frames), RESTORE_BATCH):
        batch = slice(first, first + RESTORE_BATCH)
        restored += restore_batch(frames[batch], aligned[batch], setup)
    lane_done()
    del frames  # only the restored frames stay in memory

    count = len(restored)
    lanes = {
        lane: Measured(fps=count / (end[0] - begin[0]), cpu_ms=1e3 * (end[1] - begin[1]) / count)
        for lane, begin, end in zip(LANES, marks, marks[1:])
    }
    for codec in codecs:  # the encode lane of each output codec, on the same restored frames
        start, cpu_start = time.perf_counter(), cpu_seconds()
        encode_all(restored, replace(setup, codec=codec))
        lanes[f"encode {codec}"] = measured(count, start, cpu_start)
    return lanes


def measure_clip(clip: Path, setup: Setup, codecs: list[str]) -> dict[str, Measured]:
    """The lanes alone, then for each codec the media path and its transcode floor."""
    result = lanes_alone(clip, setup, codecs)
    for codec in codecs:
        with_codec = replace(setup, codec=codec)
        result[f"media path {codec}"] = media_path(clip, with_codec)
        result[f"transcode floor {codec}"] = transcode_floor(clip, with_codec)
    return result


def report_line(name: str, size: str, runs: dict[str, Measured], codec: str) -> str:
    path, floor = runs[f"media path {codec}"], runs[f"transcode floor {codec}"]
    lane_runs = {**{lane: runs[lane] for lane in LANES}, "encode": runs[f"encode {codec}"]}
    lanes = ", ".join(f"{lane} {run.fps:.1f}" for lane, run in lane_runs.items())
    slowest = min(lane_runs, key=lambda lane: lane_runs[lane].fps)
    costliest = max(FACE_LANES, key=lambda lane: runs[lane].cpu_ms)
    face_ms = sum(runs[lane].cpu_ms for lane in FACE_LANES)
    # With every core busy, ratio = floor CPU / (floor CPU + face CPU): the face work that allows the goal.
    allowed_ms = floor.cpu_ms * (1 / GOAL_RATIO - 1)
    return (
        f"{name} {size} {codec}: media path {path.fps:.1f} fps, transcode floor {floor.fps:.1f} fps,"
        f" ratio {path.fps / floor.fps:.2f}; lanes alone (fps): {lanes}; slowest lane: {slowest}"
        f" ({lane_runs[slowest].fps / floor.fps:.2f}x the floor); CPU ms a frame: floor {floor.cpu_ms:.1f},"
        f" media path {path.cpu_ms:.1f}, encode alone {lane_runs['encode'].cpu_ms:.1f}, face lanes alone"
        f" {face_ms:.1f} ({', '.join(f'{lane} {runs[lane].cpu_ms:.1f}' for lane in FACE_LANES)}); with every core"
        f" busy {GOAL_RATIO} allows {allowed_ms:.1f} ms of face work, {costliest} costs the most"
    )


def clips_to_measure(folder: Path, scratch: Path, n_frames: int) -> list[Path]:
    clips = sorted(folder.glob("demo*_video.mp4"))
    if clips:
        return clips
    print(f"no demo*_video.mp4 in {folder}: using a generated 1080x1920 face clip", flush=True)
    return [make_face_clip(scratch / "generated_video.mp4", n_frames / 25 + 0.2, size=(1080, 1920))]


def restore_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("--clips", type=Path, default=here.parent / "shared" / "media")
    parser.add_argument("--frames", type=int, default=100, help="frames of each clip to process (default 100)")
    parser.add_argument("--stride", type=int, default=1, help="landmark detection stride (normal mode: 1)")
    parser.add_argument("--codecs", default="h264", help="output codecs, comma-separated (h264,prores,dnxhr,ffv1,png,exr)")
    parser.add_argument("--encoder", default="auto", choices=ENCODER_CHOICES, help="the H.264 encoder")
    parser.add_argument("--preset", default="veryfast", help="x264 preset (the pipeline's: veryfast)")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--restore", default="opencv", choices=("opencv", "torch"))
    parser.add_argument("--restore-threads", type=int, default=0, help="paste threads; 0: one per core (capped)")
    parser.add_argument("--device", default="cpu", help="device of --restore torch: cpu, cuda, mps or auto")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    choice = choose_encoder(args.encoder)
    codecs = args.codecs.split(",")
    threads = args.restore_threads or paste_thread_count()
    print(f"codecs {', '.join(codecs)} (H.264: {choice.name}, {choice.reason}); restore {args.restore} on"
          f" {args.device}, {threads} paste thread(s); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
          flush=True)  # fmt: skip
    worst = None
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(threads) as pool:
        scratch = Path(folder)
        voice = make_speech(scratch / "voice.wav", args.frames / 25 + 1, use_espeak=False)
        setup = Setup(args.frames, args.stride, choice.name, args.preset, args.crf, args.restore,
                      pool if threads > 1 else None, restore_device(args.device), scratch,
                      Speech(voice, speech_stream(voice)))  # fmt: skip
        for clip in clips_to_measure(args.clips, scratch, args.frames):
            info = probe_video(clip)
            runs = measure_clip(clip, replace(setup, source=info), codecs)
            for codec in codecs:
                print(report_line(clip.stem, f"{info.width}x{info.height}", runs, codec), flush=True)
                ratio = runs[f"media path {codec}"].fps / runs[f"transcode floor {codec}"].fps
                worst = ratio if worst is None else min(worst, ratio)
    print(f"ratio to transcode floor: {worst:.2f}")


if __name__ == "__main__":
    main()

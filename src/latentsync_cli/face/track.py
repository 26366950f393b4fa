"""The face track of a whole video: where the face is in every output frame, found once, in order.

Face tracking (the detector runs every `stride` frames, the mesh follows in
between) and the alignment's nose smoothing carry state from frame to frame,
so a shard that starts in the middle of a video cannot find them on its own.
`track_faces` runs them over every output frame, exactly as the pipeline does
inline, and the track is stored in the work dir for every shard and the
finalize step to read.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsync_cli.errors import InputError
from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.media.pixels import display_8bit
from latentsync_cli.media.video import VideoInfo, read_frames

FACE_CHECK_FRAMES = 50  # "no face" is decided on the first frames, before any model work


@dataclass(frozen=True)
class FaceTrack:
    has_face: np.ndarray  # bool (N,): which output frames have a face
    affines: np.ndarray  # float64 (N, 2, 3): frame -> crop matrices (zeros where there is no face)

    @property
    def num_frames(self) -> int:
        return len(self.has_face)

    def affine(self, frame_number: int) -> np.ndarray | None:
        return self.affines[frame_number] if self.has_face[frame_number] else None

    def save(self, path: Path) -> None:
        """Written under a temporary name and renamed: a reader never sees half a track."""
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(temporary, "wb") as handle:
            np.savez(handle, has_face=self.has_face, affines=self.affines)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> FaceTrack:
        with np.load(path) as data:
            return cls(has_face=data["has_face"].astype(bool), affines=data["affines"].astype(np.float64))


def same_picture(previous: np.ndarray | None, frame: np.ndarray) -> bool:
    """Whether `frame` is exactly the picture `previous` is (a still's frames are one array).

    A sparse sample is compared first: different frames almost always differ
    there, so a video pays a few microseconds per frame, not a full comparison.
    """
    if previous is None:
        return False
    if previous is frame:
        return True
    if previous.shape != frame.shape:
        return False
    return np.array_equal(previous[::16, ::16], frame[::16, ::16]) and np.array_equal(previous, frame)


class FaceLocator:
    """Where the face is in each output frame, in order: found here, or read from a stored face track.

    Repeated pictures are found and aligned once: a frame identical to the one
    before it (every frame of a still image, a frozen stretch of a video) takes
    that frame's matrix and face crop. Running the detector again would not
    give the same answer: MediaPipe's tracking mesh moves on an unchanged
    picture (6.5 px from the first frame of a still to the second, then
    0.01-0.1 px a frame, measured), which made a still portrait jump and jitter.
    """

    def __init__(self, resolution: int, landmarks: LandmarkSource, track: FaceTrack | None = None):
        self.aligner = FaceAligner(resolution)
        self.track = track
        self.detector = landmarks.new_detector() if track is None else None
        self.previous_frame: np.ndarray | None = None
        self.previous_affine: np.ndarray | None = None

    def affine(self, frame_number: int, frame: np.ndarray) -> np.ndarray | None:
        """The frame -> crop matrix of output frame `frame_number`, or None without a face."""
        if self.track is not None:
            return self.track.affine(frame_number)
        if not same_picture(self.previous_frame, frame):
            found = self.detector.detect(display_8bit(frame))
            self.previous_affine = self.aligner.transform(found.points) if found is not None else None
            self.previous_frame = frame
        return self.previous_affine

    def faces(
        self, frames: list[np.ndarray], affines: list[np.ndarray], pool: Executor | None = None
    ) -> tuple[list[np.ndarray], list[int]]:
        """The aligned faces (R, R, 3) uint8 of `frames` with their matrices, in order, and for each
        face the index of the first face of its run of repeats.

        A frame that repeats the one before it with the same matrix gets the
        same array. The others are cut on `pool`'s threads when there is one
        (OpenCV's warp and resize release the GIL); the result is the same.
        """
        sources = []  # for each face, the index of the first face of its run
        for index, (frame, affine) in enumerate(zip(frames, affines)):
            repeated = (
                index > 0 and np.array_equal(affines[index - 1], affine) and same_picture(frames[index - 1], frame)
            )
            sources.append(sources[-1] if repeated else index)
        distinct = sorted(set(sources))

        def cut(index: int) -> np.ndarray:
            return self.aligner.warp(frames[index], affines[index]).face

        crops = list(pool.map(cut, distinct)) if pool is not None else [cut(index) for index in distinct]
        crop_of = dict(zip(distinct, crops))
        return [crop_of[source] for source in sources], sources

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()


def check_for_a_face(video: VideoInfo, landmarks: LandmarkSource, frames_to_check: int = FACE_CHECK_FRAMES) -> None:
    """InputError unless one of the first frames (the whole video when it is short) has a face."""
    count = max(1, min(frames_to_check, video.frame_count))
    detector = landmarks.every_frame().new_detector()
    frames = read_frames(video, count, loop="freeze")
    try:
        for frame in frames:
            if detector.detect(display_8bit(frame)) is not None:
                return
    finally:
        frames.close()
        detector.close()
    raise InputError(
        f"no face found in {video.path} (checked its first {count} frames); use a video with a clearly visible face"
    )


def track_faces(video: VideoInfo, num_frames: int, loop: str, landmarks: LandmarkSource, resolution: int) -> FaceTrack:
    """Find and align the face in each of the `num_frames` output frames (the video looped as `loop`),
    exactly as the pipeline does while decoding."""
    locate = FaceLocator(resolution, landmarks)
    has_face = np.zeros(num_frames, dtype=bool)
    affines = np.zeros((num_frames, 2, 3), dtype=np.float64)
    frames = read_frames(video, num_frames, loop=loop)
    try:
        for number, frame in enumerate(frames):
            affine = locate.affine(number, frame)
            if affine is not None:
                has_face[number] = True
                affines[number] = affine
    finally:
        frames.close()
        locate.close()
    return FaceTrack(has_face, affines)

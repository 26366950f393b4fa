"""Face landmarks, offline, with MediaPipe (its wheel bundles the models).

Two stages. The full-range face detector runs on a downscaled frame and picks
one face; the 468-point face mesh then runs in tracking mode on a square crop
around it. Upstream aligns on three points, the two eyebrow centres and the
nose centre, which we take as means of mesh points.

With `stride` k the detector runs only every k-th frame; in between, the mesh
keeps following the face inside the same crop. Detection runs early when the
mesh loses the face or the face drifts towards the edge of the crop.

One MediapipeLandmarks per video, used from one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from latentsync_cli.constants import FACE_CHOICES
from latentsync_cli.errors import UsageError

# Face-mesh point indices whose means are the three alignment points,
# left and right as seen in the image.
LEFT_BROW_POINTS = (71, 63, 105, 66, 107)
RIGHT_BROW_POINTS = (336, 296, 334, 293, 301)
NOSE_POINTS = (168, 197, 5, 4, 75, 97, 2, 326, 305)

DETECT_LONG_SIDE = 640  # px; the detector's own input is 192 x 192, so a bigger frame only costs time
MESH_INPUT_SIDE = 256  # px; the square crop is resized to this before the mesh sees it
CROP_SCALE = 2.0  # crop side = 2 x the longer side of the detector's face box
RECROP_SHIFT = 0.1  # move the crop when a new detection's centre is this far off (fraction of the side)
RECROP_SCALE = 1.2  # ... or when its size changes by more than this factor
DRIFT_MARGIN = 0.05  # detect again when the mesh comes this close (fraction of the side) to the crop edge


@dataclass(frozen=True)
class FacePoints:
    points: np.ndarray  # float64 (3, 2), (x, y) frame pixels: left brow, right brow, nose centre
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) extent of the face mesh, frame pixels
    score: float  # the detector's confidence when this face was last detected


@runtime_checkable
class LandmarkDetector(Protocol):
    def detect(self, frame_rgb: np.ndarray) -> FacePoints | None:
        """The face's three alignment points in this RGB uint8 (H, W, 3) frame, or None when there is no face."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SquareCrop:
    """A square part of the frame in whole pixels (it may reach past the frame's edges)."""

    x0: int
    y0: int
    side: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.x0 + self.side / 2, self.y0 + self.side / 2

    @classmethod
    def around(cls, box: tuple[float, float, float, float]) -> "SquareCrop":
        x0, y0, x1, y1 = box
        side = round(CROP_SCALE * max(x1 - x0, y1 - y0))
        return cls(round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2), side)

    def is_close_to(self, other: "SquareCrop") -> bool:
        (x, y), (other_x, other_y) = self.centre, other.centre
        shift = max(abs(x - other_x), abs(y - other_y)) / self.side
        scale = max(self.side / other.side, other.side / self.side)
        return shift <= RECROP_SHIFT and scale <= RECROP_SCALE

    def cut(self, frame: np.ndarray, out_side: int) -> np.ndarray:
        """The crop, black where it reaches past the frame, area-resized to out_side x out_side."""
        height, width = frame.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        inside = frame[max(self.y0, 0) : max(min(y1, height), 0), max(self.x0, 0) : max(min(x1, width), 0)]
        square = np.zeros((self.side, self.side, 3), dtype=np.uint8)
        top, left = max(-self.y0, 0), max(-self.x0, 0)
        square[top : top + inside.shape[0], left : left + inside.shape[1]] = inside
        interpolation = cv2.INTER_AREA if self.side > out_side else cv2.INTER_LINEAR
        return cv2.resize(square, (out_side, out_side), interpolation=interpolation)


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) frame pixels
    score: float


class MediapipeLandmarks:
    """MediaPipe face detector + face mesh. See the module docstring for how `stride` works."""

    def __init__(self, stride: int = 1, choose: str = "largest", min_face_px: int = 50, min_score: float = 0.5):
        if stride < 1:
            raise UsageError(f"face detection stride must be 1 or more, got {stride}")
        if choose not in FACE_CHOICES:
            raise UsageError(f"unknown face choice {choose!r}: use one of {', '.join(FACE_CHOICES)}")
        import mediapipe as mp  # imported here: it is slow to import and only this class needs it

        self.stride = stride
        self.choose = choose
        self.min_face_px = min_face_px
        self.detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_score)
        self.mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_score, min_tracking_confidence=min_score,
        )
        self.crop: SquareCrop | None = None
        self.score = 0.0
        self.frames_since_detection = 0
        self.detect_next_frame = True
        self.detector_runs = 0  # how often the detector ran (stride statistics)

    def detect(self, frame_rgb: np.ndarray) -> FacePoints | None:
        if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) frame, got {frame_rgb.dtype} {frame_rgb.shape}")
        frame_rgb = np.ascontiguousarray(frame_rgb)
        detected_now = self.detect_next_frame or self.frames_since_detection >= self.stride
        if detected_now and not self._detect_face(frame_rgb):
            return None

        mesh_points = self._run_mesh(frame_rgb)
        if mesh_points is None and not detected_now:
            # Lost between detections: look for the face again in this frame.
            if not self._detect_face(frame_rgb):
                return None
            mesh_points = self._run_mesh(frame_rgb)
        if mesh_points is None:
            self._lose_face()
            return None

        self.frames_since_detection += 1
        box = (*mesh_points.min(axis=0), *mesh_points.max(axis=0))
        if box[2] - box[0] < self.min_face_px:
            self._lose_face()
            return None
        self.detect_next_frame = self._drifted(box)
        return FacePoints(points=alignment_points(mesh_points), box=tuple(float(v) for v in box), score=self.score)

    def reset(self) -> None:
        """Forget the tracked face (before the frames of another video)."""
        self._lose_face()

    def close(self) -> None:
        self.detector.close()
        self.mesh.close()

    def __enter__(self) -> "MediapipeLandmarks":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _detect_face(self, frame_rgb: np.ndarray) -> bool:
        """Run the detector and move the crop to the chosen face; False when there is none."""
        face = self._find_face(frame_rgb)
        if face is None:
            self._lose_face()
            return False
        crop = SquareCrop.around(face.box)
        if self.crop is None or not self.crop.is_close_to(crop):
            # The mesh tracks in crop coordinates; a moved crop invalidates its track.
            self.crop = crop
            self.mesh.reset()
        self.score = face.score
        self.frames_since_detection = 0
        self.detect_next_frame = False
        return True

    def _find_face(self, frame_rgb: np.ndarray) -> DetectedFace | None:
        height, width = frame_rgb.shape[:2]
        shrink = min(1.0, DETECT_LONG_SIDE / max(height, width))
        small = frame_rgb
        if shrink < 1.0:
            small = cv2.resize(frame_rgb, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        result = self.detector.process(small)
        self.detector_runs += 1
        faces = []
        for detection in result.detections or []:
            relative = detection.location_data.relative_bounding_box
            x0, y0 = relative.xmin * width, relative.ymin * height
            box = (x0, y0, x0 + relative.width * width, y0 + relative.height * height)
            if box[2] - box[0] >= self.min_face_px:  # a tiny face is no face (upstream: w >= 50 px)
                faces.append(DetectedFace(box=box, score=float(detection.score[0])))
        if not faces:
            return None
        if self.choose == "largest":
            return max(faces, key=lambda face: (face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))
        return min(faces, key=lambda face: distance_to_centre(face.box, width, height))

    def _run_mesh(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """All 468 mesh points (float64, frame pixels) of the face in the crop, or None."""
        crop = self.crop
        result = self.mesh.process(crop.cut(frame_rgb, MESH_INPUT_SIDE))
        if not result.multi_face_landmarks:
            return None
        landmarks = result.multi_face_landmarks[0].landmark
        normalised = np.array([(point.x, point.y) for point in landmarks], dtype=np.float64)
        return normalised * crop.side + [crop.x0, crop.y0]

    def _drifted(self, box: tuple[float, float, float, float]) -> bool:
        """Whether the face box has come near the crop's edge (time to detect and re-centre)."""
        crop = self.crop
        margin = DRIFT_MARGIN * crop.side
        x0, y0, x1, y1 = box
        return (
            x0 < crop.x0 + margin
            or y0 < crop.y0 + margin
            or x1 > crop.x0 + crop.side - margin
            or y1 > crop.y0 + crop.side - margin
        )

    def _lose_face(self) -> None:
        if self.crop is not None:
            self.mesh.reset()
        self.crop = None
        self.detect_next_frame = True


def alignment_points(mesh_points: np.ndarray) -> np.ndarray:
    """(468, 2) mesh points -> (3, 2): left brow centre, right brow centre, nose centre."""
    return np.stack(
        [
            mesh_points[list(LEFT_BROW_POINTS)].mean(axis=0),
            mesh_points[list(RIGHT_BROW_POINTS)].mean(axis=0),
            mesh_points[list(NOSE_POINTS)].mean(axis=0),
        ]
    )


def distance_to_centre(box: tuple[float, float, float, float], width: int, height: int) -> float:
    x0, y0, x1, y1 = box
    return float(np.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2))

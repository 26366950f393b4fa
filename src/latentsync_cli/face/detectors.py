"""Which landmark detector a job uses (`--face-detector`), as one value the job hands down.

Every pass over a video (the face check, the whole-video face track, the
decode lane) gets a detector of its own from `new_detector()`, since a detector
that tracks carries state from frame to frame. Tests hand the pipeline any
object with a `new_detector()` (a stand-in that returns fixed landmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from latentsync_cli.face.landmarks import LandmarkDetector, MediapipeLandmarks


@dataclass(frozen=True)
class LandmarkSource:
    kind: str = "mediapipe"  # one of constants.FACE_DETECTORS
    stride: int = 1  # MediaPipe detects every `stride` frames and tracks in between
    choose: str = "largest"  # which face when there are several (constants.FACE_CHOICES)
    model_root: Path | None = None  # insightface: the folder holding models/buffalo_l
    use_cuda: bool = False  # insightface: run the ONNX models on the GPU

    def new_detector(self) -> LandmarkDetector:
        if self.kind == "insightface":
            from latentsync_cli.face.insightface_points import InsightfaceLandmarks

            return InsightfaceLandmarks(self.choose, self.model_root, self.use_cuda)
        return MediapipeLandmarks(stride=self.stride, choose=self.choose)

    def every_frame(self) -> LandmarkSource:
        """The same detector detecting on every frame (the face check)."""
        return replace(self, stride=1)

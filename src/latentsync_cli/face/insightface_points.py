"""Upstream's face detector: InsightFace's buffalo_l pack (SCRFD detection + 106 2-D landmarks).

The LatentSync 1.6 UNet was trained on faces aligned from these landmarks, so
users who have the models (upstream's `checkpoints/auxiliary/models/buffalo_l`,
or InsightFace's own `~/.insightface/models/buffalo_l`) can align exactly as
upstream does. Neither the package nor the models ship with latentsync: the
package is the optional extra `latentsync[insightface]`, and InsightFace's
models are under a non-commercial licence.

As upstream: detection at 512 x 512; a face counts when its box is at least
50 px wide and 80 px tall, 0.2 <= width / height <= 1.5 and its score >= 0.5;
the largest such face wins (or, with --face center, the one nearest the
centre); the 106 landmarks are rounded, and the three alignment points are the
means of points {43, 48, 49, 51, 50} (image-left eyebrow), {101..105}
(image-right eyebrow) and {74, 77, 83, 86} (nose), rounded again. Like
upstream, the detector is given the RGB frame (InsightFace expects BGR): the
model was trained on the landmarks that call produced. There is no tracking:
the detector runs on every frame, whatever the mode's stride.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from latentsync_cli.errors import UsageError, WeightsError
from latentsync_cli.face.landmarks import FacePoints, distance_to_centre

EXTRA_HINT = "pip install 'latentsync[insightface]'"
PACK = "buffalo_l"
DETECT_SIZE = 512
MIN_WIDTH, MIN_HEIGHT = 50, 80
MIN_ASPECT, MAX_ASPECT = 0.2, 1.5  # width / height
MIN_SCORE = 0.5
LEFT_BROW = (43, 48, 49, 51, 50)
RIGHT_BROW = (101, 102, 103, 104, 105)
NOSE = (74, 77, 83, 86)


def model_roots(checkpoint_dir: Path | None) -> list[Path]:
    """Where the buffalo_l pack is looked for: <root>/models/buffalo_l for each root, in order."""
    roots = [Path(checkpoint_dir) / "auxiliary"] if checkpoint_dir is not None else []
    return roots + [Path("checkpoints") / "auxiliary", Path.home() / ".insightface"]


def require_extra() -> None:
    """UsageError (exit 2) naming the optional extra when its packages are not installed (nothing is imported)."""
    missing = [name for name in ("insightface", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"--face-detector insightface needs {' and '.join(missing)}: {EXTRA_HINT}")


def find_model_root(checkpoint_dir: Path | None) -> Path:
    """The root whose models/buffalo_l holds the pack's ONNX files; WeightsError (exit 5) naming where they
    go when they are not there. Cheap: nothing is imported or loaded."""
    roots = model_roots(checkpoint_dir)
    for root in roots:
        if any((root / "models" / PACK).glob("*.onnx")):
            return root.absolute()
    places = " or ".join(str(root / "models" / PACK) for root in roots)
    raise WeightsError(
        f"InsightFace's {PACK} models not found in {places}; copy upstream's checkpoints/auxiliary/models/{PACK} "
        "there (they do not ship with latentsync: InsightFace's licence is non-commercial)"
    )


def load_face_analysis(root: Path, use_cuda: bool):
    """InsightFace's FaceAnalysis with only the detector and the 106-point landmarks, prepared as upstream."""
    from insightface.app import FaceAnalysis  # the optional extra: imported only here

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    analysis = FaceAnalysis(name=PACK, root=str(root), allowed_modules=["detection", "landmark_2d_106"],
                            providers=providers)  # fmt: skip
    analysis.prepare(ctx_id=0 if use_cuda else -1, det_size=(DETECT_SIZE, DETECT_SIZE))
    return analysis


def accepted(face) -> bool:
    x0, y0, x1, y1 = np.asarray(face.bbox).astype(np.int64).tolist()
    width, height = x1 - x0, y1 - y0
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return False
    return MIN_ASPECT <= width / height <= MAX_ASPECT and float(face.det_score) >= MIN_SCORE


def alignment_points(landmarks_106: np.ndarray) -> np.ndarray:
    """(106, 2) landmarks -> (3, 2) float64: image-left brow, image-right brow, nose, as upstream rounds them."""
    landmarks = np.round(landmarks_106).astype(np.int64)
    means = [landmarks[list(group)].mean(axis=0) for group in (LEFT_BROW, RIGHT_BROW, NOSE)]
    return np.round(np.array(means, dtype=np.float64))


class InsightfaceLandmarks:
    """The LandmarkDetector of `--face-detector insightface` (see the module's docstring)."""

    def __init__(self, choose: str, root: Path, use_cuda: bool = False, analysis=None):
        self.choose = choose
        self.analysis = analysis if analysis is not None else load_face_analysis(root, use_cuda)

    def detect(self, frame_rgb: np.ndarray) -> FacePoints | None:
        faces = [face for face in self.analysis.get(frame_rgb) if accepted(face)]
        if not faces:
            return None
        height, width = frame_rgb.shape[:2]
        if self.choose == "largest":
            face = max(faces, key=lambda f: box_area(f.bbox))  # the first of equal ones, as upstream
        else:
            face = min(faces, key=lambda f: distance_to_centre(tuple(np.asarray(f.bbox, float)), width, height))
        box = tuple(float(value) for value in face.bbox)
        return FacePoints(points=alignment_points(face.landmark_2d_106), box=box, score=float(face.det_score))

    def close(self) -> None:
        self.analysis = None


def box_area(bbox) -> int:
    x0, y0, x1, y1 = np.asarray(bbox).astype(np.int64).tolist()
    return (x1 - x0) * (y1 - y0)

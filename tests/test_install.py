"""What `pip install .` leaves: one OpenCV distribution owning cv2/, and a working mediapipe.

opencv-python and opencv-contrib-python both write into one cv2/ folder; with both installed,
which one's files win depends on the install order, and uninstalling either breaks the other.
mediapipe requires opencv-contrib-python, so the project depends on that one too.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import numpy as np
import tomllib

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "src" / "latentsync_cli"


def distribution_name(requirement: str) -> str:
    """`opencv-contrib-python>=4.8 ; extra == "x"` -> `opencv-contrib-python` (normalized)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_packages(dist: metadata.Distribution) -> set[str]:
    names = set((dist.read_text("top_level.txt") or "").split())
    for file in dist.files or ():
        if len(file.parts) > 1:  # a file inside a folder: the folder is a top-level package
            names.add(file.parts[0])
    return names


def test_exactly_one_installed_distribution_provides_cv2():
    providers = {
        distribution_name(dist.metadata["Name"])
        for dist in metadata.distributions()
        if "cv2" in top_level_packages(dist)
    }
    assert len(providers) == 1, (
        f"cv2/ comes from {sorted(providers)}; keep only opencv-contrib-python "
        "(pip uninstall opencv-python, then pip install --force-reinstall --no-deps opencv-contrib-python)"
    )


def test_the_project_depends_on_the_opencv_that_mediapipe_requires():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ours = {distribution_name(item) for item in project["dependencies"]}
    theirs = {distribution_name(item) for item in metadata.requires("mediapipe") or () if "extra ==" not in item}
    opencv = {name for name in ours | theirs if name.startswith("opencv")}
    assert len(opencv) == 1, f"the project and mediapipe name different OpenCV distributions: {sorted(opencv)}"
    assert opencv <= ours


def test_cv2_has_every_name_the_project_uses():
    import cv2

    used = set()
    for path in SOURCE.rglob("*.py"):
        used.update(re.findall(r"\bcv2\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    assert {"warpAffine", "resize", "GaussianBlur"} <= used  # the scan found the calls
    missing = sorted(name for name in used if not hasattr(cv2, name))
    assert not missing, f"cv2 {cv2.__version__} lacks {missing}"


def test_mediapipe_face_models_load_and_run():
    import mediapipe as mp

    blank = np.zeros((96, 96, 3), dtype=np.uint8)
    with mp.solutions.face_detection.FaceDetection(model_selection=1) as detector:
        assert detector.process(blank).detections is None
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        assert mesh.process(blank).multi_face_landmarks is None

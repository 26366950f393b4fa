"""`--face-detector insightface`: upstream's detector, tested with a stand-in for InsightFace's FaceAnalysis
(neither the package nor its models are on these machines): the filters, the choice of face, the three
points as upstream rounds them, and everything after the points shared with MediaPipe's path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from latentsync_cli.cli import main
from latentsync_cli.errors import ExitCode
from latentsync_cli.face import insightface_points
from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.face.insightface_points import LEFT_BROW, NOSE, RIGHT_BROW, InsightfaceLandmarks
from latentsync_cli.face.track import track_faces
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.run import run
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.media.video import probe_video
from latentsync_cli.settings.request import SettingsRequest

# Where the stand-in puts the three groups of landmarks (the other 94 points are scattered around the face).
LEFT, RIGHT, NOSE_TIP = (120.4, 100.2), (190.6, 104.0), (155.0, 150.5)


@dataclass
class StandInFace:
    bbox: np.ndarray
    det_score: float
    landmark_2d_106: np.ndarray


def face_at(box, score=0.9, shift=(0.0, 0.0)) -> StandInFace:
    landmarks = np.random.default_rng(0).uniform(90, 200, size=(106, 2))
    for group, point in ((LEFT_BROW, LEFT), (RIGHT_BROW, RIGHT), (NOSE, NOSE_TIP)):
        # Spread around the point: the group's rounded mean is the point rounded.
        landmarks[list(group)] = np.array(point) + np.linspace(-2, 2, len(group))[:, None]
    return StandInFace(np.array(box, dtype=np.float32), score, landmarks + shift)


class StandInAnalysis:
    """Returns the same faces for every frame, as FaceAnalysis.get does for a still."""

    def __init__(self, faces):
        self.faces = faces
        self.frames_seen = 0

    def get(self, frame):
        self.frames_seen += 1
        return self.faces


def expected_points(shift=(0.0, 0.0)) -> np.ndarray:
    return np.round(np.array([LEFT, RIGHT, NOSE_TIP]) + shift)


def test_the_largest_acceptable_face_gives_upstreams_rounded_points():
    faces = [
        face_at((0, 0, 40, 100)),  # too narrow (< 50 px)
        face_at((0, 0, 300, 120)),  # too wide for its height (w/h > 1.5)
        face_at((0, 0, 250, 250), score=0.3),  # too unsure
        face_at((10, 10, 110, 130), shift=(5, 5)),  # acceptable, 100 x 120
        face_at((100, 50, 260, 250)),  # acceptable, 160 x 200: the largest
    ]
    detector = InsightfaceLandmarks("largest", Path("unused"), analysis=StandInAnalysis(faces))
    found = detector.detect(np.zeros((300, 400, 3), np.uint8))
    np.testing.assert_array_equal(found.points, expected_points())
    assert found.box == (100.0, 50.0, 260.0, 250.0) and found.score == pytest.approx(0.9)
    nearest = InsightfaceLandmarks("center", Path("unused"), analysis=StandInAnalysis(faces[3:]))
    np.testing.assert_array_equal(nearest.detect(np.zeros((300, 400, 3), np.uint8)).points, expected_points())
    assert InsightfaceLandmarks("largest", Path("unused"), analysis=StandInAnalysis(faces[:3])).detect(
        np.zeros((300, 400, 3), np.uint8)) is None  # fmt: skip


@pytest.fixture()
def stand_in_insightface(monkeypatch, tmp_path):
    """The extra 'installed', its models 'found', and FaceAnalysis replaced by the stand-in."""
    analysis = StandInAnalysis([face_at((100, 40, 230, 220))])
    monkeypatch.setattr(insightface_points, "require_extra", lambda: None)
    monkeypatch.setattr(insightface_points, "find_model_root", lambda checkpoint_dir: tmp_path)
    monkeypatch.setattr("latentsync_cli.jobs.run.require_extra", lambda: None)
    monkeypatch.setattr("latentsync_cli.jobs.run.find_model_root", lambda checkpoint_dir: tmp_path)
    monkeypatch.setattr(insightface_points, "load_face_analysis", lambda root, use_cuda: analysis)
    return analysis


def test_everything_after_the_points_is_shared_with_the_mediapipe_path(stand_in_insightface, tmp_path):
    video = probe_video(make_face_clip(tmp_path / "clip.mp4", 0.2, size=(320, 240), preset="ultrafast"))
    track = track_faces(video, 5, "pingpong", LandmarkSource("insightface", stride=3, choose="largest"), 256)
    expected = FaceAligner(256).transform(expected_points())
    assert track.has_face.all() and stand_in_insightface.frames_seen == 5  # every frame, whatever the stride
    for affine in track.affines:
        np.testing.assert_allclose(affine, expected, atol=1e-9)  # the aligner's nose smoothing settles at once


def test_a_job_runs_with_insightface_points(stand_in_insightface, tmp_path):
    clip = make_face_clip(tmp_path / "clip.mp4", 0.2, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", 0.2, use_espeak=False)
    request = SettingsRequest(mode="turbo", steps=1, device="cpu")
    job = Job(clip, voice, tmp_path / "out.mp4", request, weights="random-tiny", face_detector="insightface")
    finished = run(job)
    assert finished.result.frames_without_face == 0 and (tmp_path / "out.mp4").is_file()
    assert stand_in_insightface.frames_seen >= finished.result.frames  # the face check, then every frame


def cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    return exited.value.code, capsys.readouterr().err


def test_without_the_extra_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(insightface_points.importlib.util, "find_spec", lambda name: None)
    code, err = cli(capsys, "sync", tmp_path / "missing.mp4", "--face-detector", "insightface")
    assert code == ExitCode.USAGE
    assert err.strip().splitlines() == [
        "error: --face-detector insightface needs insightface and onnxruntime: pip install 'latentsync[insightface]'"
    ]


def test_without_the_models_exit_5_naming_where_they_go(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(insightface_points.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    clip = make_face_clip(tmp_path / "clip.mp4", 0.2, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", 0.2, use_espeak=False)
    code, err = cli(capsys, "sync", clip, voice, "--face-detector", "insightface", "--weights", "random-tiny",
                    "--checkpoint-dir", tmp_path / "weights")  # fmt: skip
    assert code == ExitCode.WEIGHTS
    [line] = err.strip().splitlines()
    assert str(tmp_path / "weights" / "auxiliary" / "models" / "buffalo_l") in line
    assert str(tmp_path / "home" / ".insightface" / "models" / "buffalo_l") in line
    assert not (tmp_path / "clip_synced.mp4").exists()

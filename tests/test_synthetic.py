"""media/synthetic.py: the generated face clips, speech and stills are what they claim to be."""

from __future__ import annotations

import wave

import cv2
import mediapipe as mp
import numpy as np
import pytest

from latentsync_cli.media import synthetic
from latentsync_cli.media.video import probe_video, read_frames, source_timestamps


@pytest.fixture(scope="module")
def face_detector():
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        yield detector


def detected_faces(detector, frame):
    result = detector.process(frame)
    return result.detections or []


def test_face_photo_crop_holds_the_face_near_its_centre(face_detector):
    photo = synthetic.face_photo()
    faces = detected_faces(face_detector, photo)
    assert len(faces) == 1
    box = faces[0].location_data.relative_bounding_box
    centre_x, centre_y = box.xmin + box.width / 2, box.ymin + box.height / 2
    assert abs(centre_x - 0.5) < 0.1 and 0.3 < centre_y < 0.6
    assert box.width > 0.3  # a face, not a speck


def test_face_clip_shows_a_face_except_in_the_faceless_stretch(tmp_path, face_detector):
    path = synthetic.make_face_clip(tmp_path / "face.mp4", 3.0, size=(320, 240), faceless=(1.0, 2.0))
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.frame_count) == (320, 240, 25.0, 75)
    found = [bool(detected_faces(face_detector, frame)) for frame in read_frames(path, 75)]
    assert all(found[:25]) and all(found[50:])
    assert not any(found[25:50])


def test_face_moves_smoothly():
    frames = list(synthetic.face_frames(1.0, size=(160, 120)))
    steps = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, frames[1:])]
    assert min(steps) > 0  # every frame differs from the one before
    assert max(steps) < 12  # and never jumps


@pytest.mark.parametrize("fps", [24, 50])
def test_face_clip_at_other_rates(tmp_path, fps):
    path = synthetic.make_face_clip(tmp_path / "clip.mp4", 1.0, fps=fps, size=(96, 64), preset="ultrafast")
    info = probe_video(path)
    assert info.fps == fps and info.duration_s == pytest.approx(1.0, abs=0.05)


def test_vfr_clip_has_irregular_timestamps(tmp_path):
    path = synthetic.make_vfr_clip(tmp_path / "vfr.mp4", 2.0, size=(96, 64))
    times = source_timestamps(path)
    gaps = np.diff(times)
    assert len(times) == 60
    assert gaps.min() > 0 and gaps.max() / gaps.min() > 5


def frame_rms(signal, hop=160):
    """RMS of consecutive 10 ms windows."""
    windows = signal[: len(signal) // hop * hop].reshape(-1, hop).astype(np.float64)
    return np.sqrt((windows**2).mean(axis=1))


def autocorrelation_pitch(window, sample_rate=16000, low_hz=60, high_hz=400):
    spectrum = np.fft.rfft(window - window.mean(), 2 * len(window))
    correlation = np.fft.irfft(np.abs(spectrum) ** 2)
    shortest, longest = sample_rate // high_hz, sample_rate // low_hz
    return sample_rate / (shortest + np.argmax(correlation[shortest:longest]))


def test_synthetic_speech_looks_like_speech():
    speech = synthetic.synth_speech(6.0, seed=3)
    assert speech.dtype == np.float32 and speech.shape == (96000,)
    assert np.abs(speech).max() == pytest.approx(0.5, abs=1e-3)
    rms = frame_rms(speech)  # 100 per second
    loud = [index for index in range(len(rms) - 6) if rms[index : index + 6].min() > 0.3 * rms.max()]
    pitches = [autocorrelation_pitch(speech[index * 160 : index * 160 + 960]) for index in loud]
    assert len(pitches) > 50 and 95 < np.median(pitches) < 150  # a low adult voice around 120 Hz
    envelope = rms - rms.mean()
    spectrum = np.abs(np.fft.rfft(envelope))
    frequencies = np.fft.rfftfreq(len(envelope), d=0.01)
    band = (frequencies > 0.5) & (frequencies < 20)
    assert 2.0 < frequencies[band][np.argmax(spectrum[band])] < 6.0  # syllables at a few per second
    assert (rms < 0.01 * rms.max()).mean() > 0.05  # pauses
    assert np.array_equal(speech, synthetic.synth_speech(6.0, seed=3))
    assert not np.array_equal(speech, synthetic.synth_speech(6.0, seed=4))


def test_make_speech_writes_a_16khz_mono_wav(tmp_path):
    path = synthetic.make_speech(tmp_path / "speech.wav", 2.5, use_espeak=False)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (1, 2, 16000, 40000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.abs(pcm).max() > 10000


def test_still_image_with_alpha(tmp_path):
    path = synthetic.make_still_image(tmp_path / "portrait.png", size=(120, 160), alpha=True)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image.shape == (160, 120, 4)
    assert image[0, 0, 3] == 0 and image[80, 60, 3] == 255
    plain = synthetic.make_still_image(tmp_path / "portrait.jpg", size=(120, 160))
    assert cv2.imread(str(plain)).shape == (160, 120, 3)

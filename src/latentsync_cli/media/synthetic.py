"""Inputs made on the spot, for the tests and for `latentsync benchmark`.

The face is a real photograph (scikit-image's astronaut, a public-domain NASA
portrait) moved, scaled and slightly turned over a plain background, so that
face detection and alignment have real work to do. The speech is espeak-ng
when it is installed, otherwise a synthetic voice: a glottal pulse train with
a wandering pitch, shaped by vowel formants, in ~4 Hz syllables with pauses.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import skimage.data
from scipy.signal import lfilter

from latentsync_cli.media.audio import write_wav
from latentsync_cli.media.encode import VideoEncoder

# Head and shoulders of the astronaut photo (512x512); the face itself spans
# about rows 68-172 and columns 174-278, so it sits in the middle of this crop.
FACE_ROWS = slice(0, 256)
FACE_COLUMNS = slice(114, 338)
BACKGROUND_RGB = (92, 110, 128)

# (F1, F2, F3) in Hz of the vowels /a/, /i/, /u/, /e/, /o/ for an adult voice.
VOWEL_FORMANTS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
FORMANT_BANDWIDTHS = (80, 100, 120)


def face_photo() -> np.ndarray:
    """The head-and-shoulders crop, RGB uint8 (256, 224, 3)."""
    return np.ascontiguousarray(skimage.data.astronaut()[FACE_ROWS, FACE_COLUMNS])


def face_frames(
    seconds: float,
    fps: float | Fraction = 25,
    size: tuple[int, int] = (640, 480),
    faceless: tuple[float, float] | None = None,
) -> Iterator[np.ndarray]:
    """RGB frames (height, width, 3) of the face drifting over a plain background.

    `size` is (width, height). During `faceless` = (start_s, end_s) the frames
    show the background only.
    """
    width, height = size
    photo = face_photo()
    photo_height, photo_width = photo.shape[:2]
    background = np.empty((height, width, 3), dtype=np.uint8)
    background[:] = BACKGROUND_RGB
    for index in range(round(seconds * fps)):
        time_s = index / float(fps)
        frame = background.copy()
        if faceless is not None and faceless[0] <= time_s < faceless[1]:
            yield frame
            continue
        # Slow, smooth motion at unrelated periods, so no two frames repeat.
        scale = 0.75 * height / photo_height * (1.0 + 0.08 * math.sin(2 * math.pi * time_s / 3.1))
        angle = 4.0 * math.sin(2 * math.pi * time_s / 4.3)
        centre_x = width / 2 + 0.12 * width * math.sin(2 * math.pi * time_s / 5.3)
        centre_y = height / 2 + 0.05 * height * math.sin(2 * math.pi * time_s / 3.7)
        transform = cv2.getRotationMatrix2D((photo_width / 2, photo_height / 2), angle, scale)
        transform[:, 2] += (centre_x - photo_width / 2, centre_y - photo_height / 2)
        cv2.warpAffine(
            photo, transform, (width, height), dst=frame, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT
        )
        yield frame


def make_face_clip(
    path: str | os.PathLike,
    seconds: float,
    fps: float | Fraction | str = 25,
    size: tuple[int, int] = (640, 480),
    faceless: tuple[float, float] | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> Path:
    """Write `face_frames` as an H.264 MP4 at `fps` (e.g. 24, Fraction(30000, 1001), 30, 50)."""
    rate = Fraction(fps) if isinstance(fps, str) else fps
    width, height = size
    with VideoEncoder(path, width, height, fps=fps, crf=crf, preset=preset) as encoder:
        for frame in face_frames(seconds, rate, size, faceless):
            encoder.write(frame)
    return Path(path)


def make_plate(
    path: str | os.PathLike,
    seconds: float,
    output_arguments: list[str],
    fps: float | Fraction | str = 25,
    size: tuple[int, int] = (320, 240),
    samples: str = "uint8",
) -> Path:
    """`face_frames` through the bundled ffmpeg with `output_arguments` (codec, pixel format, muxer...): a ProRes,
    DNxHR or 10-bit HEVC plate, or an image sequence when `path` is a pattern (frames/f_%04d.exr).

    `samples` is what the frames are given as: "uint8"; "uint16", the 8-bit picture with random low
    bits, so that a 16-bit output that kept only 8 bits shows; or "float32", scene-linear light (the
    sRGB curve undone) with the same random fine detail, as an OpenEXR plate holds it.
    """
    rate = Fraction(fps) if isinstance(fps, str) else fps
    width, height = size
    pix_fmt = {"uint8": "rgb24", "uint16": "rgb48le", "float32": "gbrpf32le"}[samples]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", str(Fraction(rate)),
               "-i", "pipe:0", *output_arguments, os.path.abspath(path)]  # fmt: skip
    rng = np.random.default_rng(0)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    for frame in face_frames(seconds, rate, size):
        if samples == "uint16":
            fine = rng.integers(-64, 65, frame.shape)
            frame = np.clip(frame.astype(np.int32) * 257 + fine, 0, 65535).astype("<u2")
        elif samples == "float32":
            display = (frame + rng.uniform(0, 0.5, frame.shape)) / 255.0
            linear = np.where(display <= 0.04045, display / 12.92, ((display + 0.055) / 1.055) ** 2.4)
            frame = np.ascontiguousarray(linear.transpose(2, 0, 1)[[1, 2, 0]], dtype="<f4")  # planes G, B, R
        process.stdin.write(np.ascontiguousarray(frame).tobytes())
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {process.stderr.read().decode(errors='replace')}")
    return Path(path)


def make_vfr_clip(path: str | os.PathLike, seconds: float, size: tuple[int, int] = (640, 480)) -> Path:
    """A variable-frame-rate MP4: 30 fps frames retimed so the rate swings between ~15 and ~300 fps.

    Frame n is shown at n/30 + 0.15*sin(n/5) seconds (always increasing), on a
    1 ms time base.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as folder:
        steady = make_face_clip(Path(folder) / "steady.mp4", seconds, 30, size, preset="ultrafast")
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-i", os.path.abspath(steady),
            "-vf", "settb=1/1000,setpts=(N/30+0.15*sin(N/5))/TB", "-fps_mode", "passthrough",
            "-enc_time_base:v", "1/1000", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
            os.path.abspath(path),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return path


def make_still_image(path: str | os.PathLike, size: tuple[int, int] = (480, 640), alpha: bool = False) -> Path:
    """A portrait still (format from the suffix: .png, .jpg, .webp).

    With `alpha`, everything outside an ellipse around the head is transparent
    and white underneath, so compositing over black and dropping alpha differ.
    """
    path = Path(path)
    frame = next(face_frames(1.0, 25, size))
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if alpha:
        width, height = size
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.ellipse(mask, (width // 2, height // 2), (int(width * 0.3), int(height * 0.42)), 0, 0, 360, 255, -1)
        image = np.dstack([image, mask])
        image[mask == 0, :3] = 255
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise ValueError(f"OpenCV cannot write {path.suffix} images")
    data.tofile(path)
    return path


def synth_speech(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like float32 mono signal: voiced syllables at ~4 Hz with pauses, peak 0.5."""
    rng = np.random.default_rng(seed)
    n_samples = int(round(seconds * sample_rate))
    time_s = np.arange(n_samples) / sample_rate
    pitch_hz = 120 + 15 * np.sin(2 * np.pi * 0.7 * time_s) + 8 * np.sin(2 * np.pi * 2.3 * time_s)
    source = _glottal_pulses(pitch_hz, sample_rate)

    signal = np.zeros(n_samples)
    start = int(0.15 * sample_rate)  # a short silence first, as in a recording
    syllables_left = rng.integers(4, 9)
    while start < n_samples:
        length = int(rng.uniform(0.18, 0.32) * sample_rate)
        end = min(start + length, n_samples)
        formants = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))]
        vowel = _formant_filter(source[start:end], formants, sample_rate)
        vowel *= rng.uniform(0.6, 1.0) / max(np.sqrt(np.mean(vowel**2)), 1e-12)  # loudness set per syllable
        onset = _consonant_noise(end - start, sample_rate, rng)
        signal[start:end] = vowel * np.hanning(end - start) + onset
        start = end + int(rng.uniform(0.03, 0.08) * sample_rate)
        syllables_left -= 1
        if syllables_left == 0:  # a pause between phrases
            start += int(rng.uniform(0.3, 0.5) * sample_rate)
            syllables_left = rng.integers(4, 9)
    signal += 1e-4 * rng.standard_normal(n_samples)  # a faint noise floor instead of digital silence
    return (0.5 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)


def make_speech(
    path: str | os.PathLike, seconds: float, sample_rate: int = 16000, use_espeak: bool = True
) -> Path:
    """Write `seconds` of speech as a 16-bit mono WAV: espeak-ng if found (and wanted), else `synth_speech`."""
    path = Path(path)
    espeak = shutil.which("espeak-ng") if use_espeak else None
    samples = _espeak_speech(espeak, seconds, sample_rate) if espeak else synth_speech(seconds, sample_rate)
    write_wav(path, samples, sample_rate)
    return path


def _glottal_pulses(pitch_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Derivative of a Rosenberg glottal flow: rising 40% of each period, closing over the next 16%."""
    phase = np.cumsum(pitch_hz / sample_rate) % 1.0
    opening = 0.5 * (1 - np.cos(np.pi * phase / 0.4))
    closing = np.cos(0.5 * np.pi * (phase - 0.4) / 0.16)
    flow = np.where(phase < 0.4, opening, np.where(phase < 0.56, closing, 0.0))
    return np.diff(flow, prepend=0.0)


def _formant_filter(source: np.ndarray, formants: tuple[int, ...], sample_rate: int) -> np.ndarray:
    """Cascade of two-pole resonators, one per formant."""
    out = source
    for frequency, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
        radius = math.exp(-math.pi * bandwidth / sample_rate)
        angle = 2 * math.pi * frequency / sample_rate
        denominator = [1.0, -2 * radius * math.cos(angle), radius**2]
        out = lfilter([sum(denominator)], denominator, out)  # unit gain at 0 Hz
    return out


def _consonant_noise(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A short high-passed noise burst at the start of a syllable, like a fricative or plosive."""
    noise = np.zeros(length)
    burst = min(length, int(0.03 * sample_rate))
    noise[:burst] = np.diff(rng.standard_normal(burst + 1)) * 0.2 * np.linspace(1, 0, burst)
    return noise


def _espeak_speech(espeak: str, seconds: float, sample_rate: int) -> np.ndarray:
    import librosa  # only this path resamples

    words = "the quick brown fox jumps over the lazy dog while seven bold pilots sing about the moon".split()
    text = " ".join(words[i % len(words)] for i in range(int(seconds * 3) + 8))  # ~2.5 words/s at the default speed
    with tempfile.TemporaryDirectory() as folder:
        wav_path = os.path.join(folder, "speech.wav")
        subprocess.run([espeak, "-w", wav_path, text], check=True, capture_output=True)
        with wave.open(wav_path, "rb") as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = librosa.resample(pcm.astype(np.float32) / 32768.0, orig_sr=rate, target_sr=sample_rate)
    n_samples = int(round(seconds * sample_rate))
    fitted = np.zeros(n_samples, dtype=np.float32)
    fitted[: min(n_samples, len(samples))] = samples[:n_samples]
    return fitted

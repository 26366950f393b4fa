"""media/audio.py: decoding any ffmpeg-readable file to 16 kHz mono, errors, silence, WAV writing."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from latentsync_cli.errors import ExitCode, InputError
from latentsync_cli.media.audio import audio_duration_s, is_silent, load_audio, write_wav


def ffmpeg(*args: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(command, check=True, capture_output=True)


def tone(seconds: float, frequency: float = 440.0, sample_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, sample_rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * sample_rate / audio.size)


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    write_wav(path, tone(1.0))
    return path


def test_wav_round_trip_is_exact_for_16_bit_values(tmp_path: Path):
    rng = np.random.default_rng(0)
    audio = rng.integers(-32768, 32768, size=8000).astype(np.float32) / 32768.0
    path = tmp_path / "exact.wav"
    write_wav(path, audio)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, audio)


def test_write_wav_clips_out_of_range_values(tmp_path: Path):
    path = tmp_path / "loud.wav"
    write_wav(path, np.array([2.0, -2.0, 0.25] * 400, dtype=np.float32))
    loaded = load_audio(path)
    np.testing.assert_array_equal(loaded[:3], [32767 / 32768, -1.0, 0.25])


COMPRESSED = [(".flac", []), (".mp3", ["-b:a", "128k"]), (".m4a", ["-c:a", "aac"])]


@pytest.mark.parametrize("suffix, codec_args", COMPRESSED)
def test_compressed_formats_decode_to_16k_mono(tmp_path: Path, tone_wav: Path, suffix: str, codec_args: list):
    path = tmp_path / f"tone{suffix}"
    ffmpeg("-i", str(tone_wav), *codec_args, str(path))
    audio = load_audio(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(audio.size - 16000) < 0.1 * 16000  # encoders add a little padding
    assert abs(dominant_frequency(audio) - 440) < 5


def test_resamples_and_downmixes_stereo_44k(tmp_path: Path):
    path = tmp_path / "stereo44k.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100:duration=0.5", "-ac", "2", str(path))
    audio = load_audio(path)
    assert audio.size == 8000
    assert abs(dominant_frequency(audio) - 1000) < 5
    assert audio_duration_s(path) == pytest.approx(0.5, abs=0.01)


def test_reads_the_audio_track_of_a_video(tmp_path: Path):
    path = tmp_path / "talking.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000",
        "-t", "0.8", "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip
    audio = load_audio(path)
    assert abs(audio.size - 0.8 * 16000) < 0.1 * 16000
    assert abs(dominant_frequency(audio) - 300) < 10


def test_silence_is_valid_input_but_detected(tmp_path: Path):
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(16000, dtype=np.float32))
    audio = load_audio(path)
    assert audio.size == 16000 and not audio.any()
    assert is_silent(audio)
    assert is_silent(np.full(100, 1e-4, dtype=np.float32))
    assert not is_silent(tone(0.1))


# --- errors: one line, exit code 4, the path named --------------------------------------------


def assert_input_error(path: Path, fragment: str) -> None:
    with pytest.raises(InputError) as raised:
        load_audio(path)
    message = raised.value.message
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path):
    assert_input_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path: Path):
    assert_input_error(tmp_path, "is a directory")


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty.wav"
    path.touch()
    assert_input_error(path, "empty")


def test_not_a_media_file(tmp_path: Path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not the samples you are looking for\n" * 20)
    assert_input_error(path, "not an audio or video file")
    with pytest.raises(InputError, match="not an audio or video file"):
        audio_duration_s(path)


def test_video_without_audio_stream(tmp_path: Path):
    path = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "0.2", "-c:v", "mpeg4", str(path))
    assert_input_error(path, "has no audio stream; pass an audio file as the second argument")


def test_zero_length_audio_stream(tmp_path: Path):
    path = tmp_path / "zero.wav"
    write_wav(path, np.zeros(0, dtype=np.float32))
    assert path.stat().st_size > 0  # a valid header with no samples
    assert_input_error(path, "0 samples")


def test_speech_from_a_named_pipe_is_read_once_as_a_stream(tmp_path: Path, tone_wav: Path):
    pipe = tmp_path / "speech.wav"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(tone_wav.read_bytes()), daemon=True)
    writer.start()  # as a program piping its output in does
    np.testing.assert_array_equal(load_audio(pipe), load_audio(tone_wav))
    writer.join(timeout=60)


def test_a_named_pipe_that_carries_no_speech_is_one_line(tmp_path: Path):
    pipe = tmp_path / "speech.wav"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(b"not audio at all" * 100), daemon=True)
    writer.start()
    with pytest.raises(InputError, match="cannot decode speech from this stream"):
        load_audio(pipe)  # and no second read of the pipe, which would wait for a writer forever
    writer.join(timeout=60)


def test_speech_from_a_descriptor_of_this_process_is_read(tmp_path: Path, tone_wav: Path):
    """`<(command)` in a shell gives the program a /dev/fd/N path: only this process has that descriptor."""
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(tone_wav.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        np.testing.assert_array_equal(load_audio(f"/dev/fd/{read_end}"), load_audio(tone_wav))
    finally:
        os.close(read_end)
    writer.join(timeout=60)

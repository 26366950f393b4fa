"""Reading speech from any file ffmpeg understands, and writing the WAV to mux.

Decoding goes through the ffmpeg binary bundled with imageio-ffmpeg, called with
an argument list. For a 16 kHz mono 16-bit WAV the samples come out exactly as
upstream LatentSync reads them (int16 / 32768).
"""

from __future__ import annotations

import re
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from latentsync_cli.errors import InputError

SAMPLE_RATE = 16000
SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: quieter than any usable speech recording
NOT_MEDIA = "not an audio or video file ffmpeg can read; pass a WAV, MP3, M4A, FLAC or video"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of `path` to float32 mono at `sample_rate`, values in [-1, 1).

    `path` may be a named pipe or another stream (`<(...)`, /dev/stdin): it is read once, from start to
    end. Such a path is opened here and ffmpeg reads the open file: a /dev/fd/N path of this process
    means nothing to a child, and a pipe opened a second time would wait for a writer that is gone.
    """
    path = _check_readable_file(path)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0"]
    output = ["-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-"]
    if not is_stream(path):
        result = subprocess.run([*command, "-i", str(path), *output], capture_output=True, check=False)
    else:
        with open(path, "rb") as source:
            descriptor = source.fileno()
            # A regular file behind /dev/stdin can be opened again (and seeked); a pipe is read where it is.
            where = f"/dev/fd/{descriptor}" if path.is_file() else f"pipe:{descriptor}"
            result = subprocess.run(
                [*command, "-i", where, *output], pass_fds=(descriptor,), capture_output=True, check=False
            )
    if result.returncode != 0:
        _raise_decode_error(path, result.stderr.decode("utf-8", "replace"))
    audio = np.frombuffer(result.stdout, dtype=np.int16).astype(np.float32) / 32768.0
    if audio.size == 0:
        raise InputError(f"{path}: the audio stream is empty (0 samples); pass a file that contains speech")
    return audio


@dataclass(frozen=True)
class SpeechStream:
    """What the speech's own audio stream is, so the output can carry it at its own quality."""

    sample_rate: int  # e.g. 48000
    channels: str  # ffmpeg's layout: "mono", "stereo", "5.1", ...
    bits: int  # 16 for 16-bit (or 8-bit) PCM sources, 24 for everything deeper or coded (AAC, MP3, float)


_AUDIO_STREAM = re.compile(r"Stream #0:\d+\S*: Audio: [^,]+, (\d+) Hz, ([^,]+), (\w+)(?: \((\d+) bit\))?")


def speech_stream(path: str | Path) -> SpeechStream:
    """The first audio stream of `path` as ffmpeg describes it (InputError when there is none)."""
    path = _check_readable_file(path)
    match = _AUDIO_STREAM.search(_probe(path))
    if match is None:
        raise InputError(f"{path}: has no audio stream; pass an audio file as the second argument")
    rate, channels, sample_format, bits = match.groups()
    sixteen = sample_format in ("s16", "s16p", "u8", "u8p") or bits == "16"
    return SpeechStream(int(rate), channels.strip(), 16 if sixteen else 24)


def is_silent(audio: np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    """True when no sample reaches `peak` (default -60 dBFS); silent audio is valid but worth a warning."""
    return audio.size == 0 or float(np.max(np.abs(audio))) < peak


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM; the inverse of `load_audio` for values k / 32768."""
    samples = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(samples.tobytes())


def audio_duration_s(path: str | Path) -> float | None:
    """The container's duration in seconds, or None when the file does not state one."""
    path = _check_readable_file(path)
    report = _probe(path)
    if "Input #0" not in report:
        raise InputError(f"{path}: {NOT_MEDIA}")
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", report)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _check_readable_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: audio file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass an audio or video file")
    if path.is_file() and path.stat().st_size == 0:  # a named pipe has no size: it is read as a stream
        raise InputError(f"{path}: file is empty; pass an audio or video file with speech")
    return path


def is_stream(path: Path) -> bool:
    """Whether `path` can be read only once: a named pipe or device, or a /dev/fd or /proc path of this process."""
    return not path.is_file() or str(path.absolute()).startswith(("/dev/", "/proc/"))


def _probe(path: Path) -> str:
    """ffmpeg's description of the input (stream list, duration) as it prints it on stderr."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)]
    result = subprocess.run(command, capture_output=True, check=False)  # exits 1: no output file was given
    return result.stderr.decode("utf-8", "replace")


def _raise_decode_error(path: Path, decode_stderr: str) -> None:
    """Tell apart 'not media', 'no audio stream' and a damaged stream, which ffmpeg reports alike."""
    lines = [line.strip() for line in decode_stderr.splitlines() if line.strip()]
    detail = lines[-1] if lines else "ffmpeg failed"
    if is_stream(path):  # read once and gone: nothing to look at again
        raise InputError(f"{path}: cannot decode speech from this stream ({detail}); {NOT_MEDIA}")
    report = _probe(path)
    if "Input #0" not in report:
        raise InputError(f"{path}: {NOT_MEDIA}")
    if not re.search(r"Stream #\S+.*: Audio:", report):
        raise InputError(f"{path}: has no audio stream; pass an audio file as the second argument")
    raise InputError(f"{path}: cannot decode its audio ({detail}); convert it to WAV and try again")

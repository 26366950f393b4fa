"""Run `python3 -m latentsync_cli` as a real subprocess and inspect what it left behind.

Shared by the unattended-operation tests (bad inputs, signals, resume, batch,
concurrency): exit codes, stderr lines and leftovers are the real ones only in
a separate process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from latentsync_cli.jobs.scratch import SCRATCH_PREFIX

FAST = ["--weights", "random-tiny", "--device", "cpu", "--mode", "turbo", "--steps", "1"]


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def cli_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "latentsync_cli", *map(str, args)]


def run_cli(*args, cwd: Path | None = None, timeout: float = 300, preexec_fn=None) -> Ran:
    done = subprocess.run(
        cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout, check=False,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    return Ran(done.returncode, done.stdout, done.stderr)


def start_cli(*args, cwd: Path | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(*args), cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def leftovers(folder: Path) -> list[str]:
    """Scratch folders and partial outputs a job must never leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(SCRATCH_PREFIX) or ".partial-" in p.name)


def ffmpeg(*args) -> subprocess.CompletedProcess:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True)


def video_stream_bytes(path: Path) -> bytes:
    """The H.264 elementary stream of an MP4 (no container timestamps or metadata)."""
    return ffmpeg("-i", path, "-map", "0:v", "-c", "copy", "-f", "h264", "-").stdout


def stream_summary(path: Path) -> tuple[int, int, int]:
    """(video streams, audio streams, decoded video frames) of a media file."""
    report = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v", "-f", "null",
         "-"], capture_output=True, text=True, check=False,
    ).stderr  # fmt: skip
    streams = [line for line in report.split("Stream mapping:")[0].splitlines() if "Stream #0:" in line]
    videos = sum(1 for line in streams if "Video:" in line)
    audios = sum(1 for line in streams if "Audio:" in line)
    frame_lines = [line for line in report.replace("\r", "\n").splitlines() if line.startswith("frame=")]
    frames = int(frame_lines[-1].split("=")[1].split()[0]) if frame_lines else 0
    return videos, audios, frames


def clip_with_reference(folder: Path, seconds: float, flags: list) -> dict[str, Path]:
    """A face clip and speech of `seconds`, and the video one uninterrupted `sync` with `flags` makes of them
    (what a resumed, sharded or clustered run must reproduce)."""
    from latentsync_cli.media.synthetic import make_face_clip, make_speech

    clip = make_face_clip(folder / "clip.mp4", seconds, size=(320, 240), preset="ultrafast")
    voice = make_speech(folder / "voice.wav", seconds, use_espeak=False)
    single = folder / "single.mp4"
    ran = run_cli("sync", clip, voice, "-o", single, *flags)
    assert ran.code == 0, ran.stderr
    return {"clip": clip, "voice": voice, "single": single, "folder": folder}

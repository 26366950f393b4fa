"""The two ways the tests run `latentsync`: in this process (`run_cli_here`) or as a real subprocess
(`run_cli`, `start_cli`), and what they inspect afterwards.

In this process torch and the models' code are imported once for all tests, and
a test may patch a function to reach an error path; a subprocess gives the real
exit code, stderr and leftovers of a separate process (signals, kills,
concurrent jobs). Both see the same environment: the tests' isolated user
folders (conftest.py), no colour, a wide console.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import pytest

from latentsync_cli.jobs.scratch import SCRATCH_PREFIX

# The shipped proxy: four times fewer face pixels than random-tiny (128 px), so a CLI run spends its time on
# what these tests check (files, processes, resumes), not on the UNet's attention.
FAST_WEIGHTS = "proxy"
FAST = ["--weights", FAST_WEIGHTS, "--device", "cpu", "--mode", "turbo", "--steps", "1"]
CLI_ENV = {"NO_COLOR": "1", "COLUMNS": "200"}


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


# --- in this process ---------------------------------------------------------------------------


def run_cli_here(*args, env: Mapping[str, str | None] | None = None) -> Ran:
    """`latentsync ARGS` through its entry point in this process; `env` sets (or, with None, removes) variables.

    stderr is read at the file-descriptor level: main() sends native libraries'
    output (fd 2) through a filter, and Python's own stderr elsewhere.
    """
    from latentsync_cli.cli import main

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryFile() as stderr:
        for name, value in {**CLI_ENV, **(env or {})}.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        with contextlib.redirect_stdout(stdout), stderr_file_descriptor_to(stderr):
            try:
                main([str(arg) for arg in args])
                code = 0  # main() always exits; this only keeps the linter calm
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else int(done.code is not None)
        stderr.seek(0)
        return Ran(code, stdout.getvalue(), stderr.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def stderr_file_descriptor_to(sink) -> Iterator[None]:
    """Send both Python's sys.stderr and file descriptor 2 (native code, filtered by main()) to `sink`."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    python_stderr = io.TextIOWrapper(os.fdopen(os.dup(sink.fileno()), "wb", buffering=0), encoding="utf-8")
    try:
        with contextlib.redirect_stderr(python_stderr):
            yield
    finally:
        python_stderr.flush()
        python_stderr.close()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run this process's torch work on `count` threads (a kernel's numbers can depend on it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- as a subprocess ---------------------------------------------------------------------------


def cli_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment (the tests' isolated user folders) with `env` set or, with None, removed."""
    merged = {**os.environ, **CLI_ENV, **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def cli_command(*args, python_flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *python_flags, "-m", "latentsync_cli", *map(str, args)]


def run_cli(
    *args, cwd: Path | None = None, timeout: float = 300, preexec_fn=None, env=None, python_flags=()
) -> Ran:
    """`python3 -m latentsync_cli ARGS` in a subprocess, to its end (`timeout` only catches a hang)."""
    done = subprocess.run(
        cli_command(*args, python_flags=python_flags), cwd=cwd, env=cli_env(env), capture_output=True, text=True,
        timeout=timeout, check=False, preexec_fn=preexec_fn,
    )  # fmt: skip
    return Ran(done.returncode, done.stdout, done.stderr)


def start_cli(*args, cwd: Path | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(*args), cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=stderr, text=True
    )


# --- what a run left behind --------------------------------------------------------------------


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
    (what a resumed, sharded or clustered run must reproduce). The reference runs in this process: the runs
    compared with it in other processes show that nothing of a process's state reaches the output."""
    from latentsync_cli.media.synthetic import make_face_clip, make_speech

    clip = make_face_clip(folder / "clip.mp4", seconds, size=(320, 240), preset="ultrafast")
    voice = make_speech(folder / "voice.wav", seconds, use_espeak=False)
    single = folder / "single.mp4"
    ran = run_cli_here("sync", clip, voice, "-o", single, *flags)
    assert ran.code == 0, ran.stderr
    return {"clip": clip, "voice": voice, "single": single, "folder": folder}

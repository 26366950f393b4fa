r"""How a sync job shows its progress: rich bars on a terminal, plain or JSON lines in a log.

The pipeline reports through the `Progress` protocol of pipeline/lipsync.py (`start`,
`advance`, `message`); every display here implements it and is a context manager.
`choose_progress(kind, console)` picks one for the `--progress` flag:

    bar    rich bars on the console with fps and ETA columns; a one-line summary is left
           when they close, e.g. `done 242/242 frames in 81.2s (3.0 fps)`
    lines  plain text lines, for render-farm logs (Deadline, OpenCue, Slurm)
    json   the same events as `lines`, one JSON object per line
    none   nothing
    auto   bar on a terminal that can redraw a line, lines otherwise

`bar` asked for where bars cannot be drawn (a log file, a pipe, TERM=dumb: rich would
show nothing until the job ends) gives lines too.

The `lines` format is fixed. Every line matches LINE_PATTERN:

    ^progress (?P<percent>\d+)% frames=(?P<done>\d+)/(?P<total>\d+) fps=(?:(?P<fps>\d+\.\d)|\?) elapsed=(?P<elapsed>\d+)s eta=(?:(?P<eta>\d+)s|\?) stage=(?P<stage>.*)$

for example `progress 37% frames=91/242 fps=3.1 elapsed=29s eta=48s stage=generate`.

    percent, frames  the "job" task: output frames written of all (0/0 before it starts)
    fps      output frames per second since the first one was written (`?` until two were)
    elapsed  whole seconds since the display was made
    eta      seconds left at that rate, rounded up (`?` while the rate is unknown)
    stage    the latest message, or the task other than "job" that advanced last,
             whichever came later ("starting" before either); it may contain spaces and
             is always last on the line

A message ("loading models") is written as a progress line whose stage is the message.
Lines are written when a message arrives, when the job task starts, when a "generate"
unit (a batch of windows) finishes, when the job's last frame is written, on any other
advance at most every `min_interval_s`, and, from the first event until `close()`, at
least every `heartbeat_s` even when nothing advanced. Each line is flushed at once.

The `json` display writes the same events as

    {"event": "progress", "percent": 37, "frames_done": 91, "frames_total": 242, "fps": 3.1,
     "elapsed_s": 29, "eta_s": 48, "stage": "generate"}      (fps, eta_s: null when unknown)
    {"event": "message", "text": "loading models"}
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from latentsync_cli.errors import UsageError
from latentsync_cli.progress import TASK_GENERATE, TASK_JOB, NoProgress

PROGRESS_CHOICES = ("auto", "bar", "lines", "json", "none")
DUMB_TERMINALS = ("dumb", "unknown")  # TERM values of terminals that cannot move the cursor (rich's list)

LINE_PATTERN = re.compile(
    r"^progress (?P<percent>\d+)% frames=(?P<done>\d+)/(?P<total>\d+) fps=(?:(?P<fps>\d+\.\d)|\?)"
    r" elapsed=(?P<elapsed>\d+)s eta=(?:(?P<eta>\d+)s|\?) stage=(?P<stage>.*)$"
)


def choose_progress(
    kind: str,
    console: Console,
    stream: TextIO | None = None,
    quiet: bool = False,
    environ: Mapping[str, str] | None = None,
):
    """The display for `--progress KIND`; `stream` (default sys.stderr) is where lines go, `environ`
    (default os.environ) says what terminal it is."""
    if kind not in PROGRESS_CHOICES:
        raise UsageError(f"--progress {kind!r}: unknown display; choose one of {', '.join(PROGRESS_CHOICES)}")
    stream = sys.stderr if stream is None else stream
    if quiet or kind == "none":
        return SilentProgress()
    if kind in ("auto", "bar"):
        kind = "bar" if can_draw_bars(stream, os.environ if environ is None else environ) else "lines"
    if kind == "bar":
        return RichBars(console)
    if kind == "lines":
        return LineProgress(stream)
    return JsonProgress(stream)


def can_draw_bars(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is a terminal that can redraw a line (not TERM=dumb, as an Emacs shell is)."""
    return _is_terminal(stream) and environ.get("TERM", "").lower() not in DUMB_TERMINALS


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class SilentProgress(NoProgress):
    """The protocol, doing nothing (--progress none, --quiet), as a display: a context manager."""

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def close(self) -> None:
        pass


# --- rich bars -----------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Units per second: frames per second, or windows per second for "generate"."""

    def render(self, task: Task) -> Text:
        if task.speed is None:
            return Text("", style="progress.data.speed")
        return Text(f"{task.speed:.1f} {task.fields.get('unit', '/s')}", style="progress.data.speed")


class RichBars:
    """One bar for the job, one per stage while it runs; a summary line when they close."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.bars = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichBars:
        self.bars.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.bars.stop()
        summary = self.summary()
        if summary is not None and not self.quiet:
            self.console.print(summary, markup=False, highlight=False)

    def start(self, task: str, total: int) -> None:
        if task in self.tasks:  # the job bar a message made before the job started
            self.bars.reset(self.tasks[task], total=total, status="")  # the stage bars say what runs now
        else:
            unit = "win/s" if task == TASK_GENERATE else "fps"
            self.tasks[task] = self.bars.add_task(task, total=total, unit=unit, status="")

    def advance(self, task: str, amount: int = 1) -> None:
        task_id = self.tasks[task]
        self.bars.advance(task_id, amount)
        if task != TASK_JOB and self.bars.tasks[task_id].finished:
            self.bars.update(task_id, visible=False)  # a finished stage leaves the screen

    def message(self, text: str) -> None:
        if TASK_JOB not in self.tasks:  # a bar without a total until the job starts
            self.tasks[TASK_JOB] = self.bars.add_task(TASK_JOB, total=None, unit="fps", status="")
        self.bars.update(self.tasks[TASK_JOB], status=" ".join(text.split()))

    def summary(self) -> str | None:
        """`done 242/242 frames in 81.2s (3.0 fps)`, or where an unfinished job stopped."""
        if TASK_JOB not in self.tasks:
            return None
        job = self.bars.tasks[self.tasks[TASK_JOB]]
        if job.total is None:
            return None
        return summary_line(int(job.completed), int(job.total), job.finished_time or job.elapsed or 0.0)


def summary_line(done: int, total: int, seconds: float) -> str:
    rate = f" ({done / seconds:.1f} fps)" if seconds > 0 else ""
    if done >= total:
        return f"done {done}/{total} frames in {seconds:.1f}s{rate}"
    return f"stopped at {done}/{total} frames after {seconds:.1f}s{rate}"


# --- lines for logs ------------------------------------------------------------------------------


@dataclass
class ProgressSnapshot:
    percent: int
    frames_done: int
    frames_total: int
    fps: float | None  # None: not known yet
    elapsed_s: int
    eta_s: int | None  # None: not known yet
    stage: str


class JobMeter:
    """The numbers a log line reports, counted from the pipeline's events (the caller locks)."""

    def __init__(self, opened_at: float):
        self.opened_at = opened_at
        self.frames_done = 0
        self.frames_total = 0
        self.first_frame_at: float | None = None
        self.frames_at_first = 0  # the rate counts the frames written after the first advance
        self.stage = "starting"

    def start(self, task: str, total: int) -> None:
        if task == TASK_JOB:
            self.frames_total = total

    def advance(self, task: str, amount: int, now: float) -> bool:
        """Count `amount` units of `task`; True when they were the job's last frames."""
        if task != TASK_JOB:
            self.stage = task
            return False
        was_finished = self.job_finished()
        self.frames_done += amount
        if self.first_frame_at is None:
            self.first_frame_at = now
            self.frames_at_first = self.frames_done
        return self.job_finished() and not was_finished

    def job_finished(self) -> bool:
        return self.frames_total > 0 and self.frames_done >= self.frames_total

    def fps(self, now: float) -> float | None:
        if self.first_frame_at is None or now <= self.first_frame_at or self.frames_done == self.frames_at_first:
            return None
        return (self.frames_done - self.frames_at_first) / (now - self.first_frame_at)

    def snapshot(self, now: float) -> ProgressSnapshot:
        fps = self.fps(now)
        left = max(self.frames_total - self.frames_done, 0)
        if self.job_finished():
            eta = 0
        else:
            eta = math.ceil(left / fps) if fps else None
        percent = min(self.frames_done * 100 // self.frames_total, 100) if self.frames_total else 0
        return ProgressSnapshot(
            percent=percent,
            frames_done=self.frames_done,
            frames_total=self.frames_total,
            fps=round(fps, 1) if fps is not None else None,
            elapsed_s=int(now - self.opened_at),
            eta_s=eta,
            stage=self.stage,
        )


class Heartbeat:
    """A daemon thread that calls `beat` every `interval_s` seconds until `stop()`."""

    def __init__(self, beat: Callable[[], None], interval_s: float):
        self.beat = beat
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)


class LogProgress:
    """What LineProgress and JsonProgress share: when to write, thread safety, the heartbeat.

    `clock` is read for every decision, so tests drive time with a fake one and call
    `tick()` themselves (heartbeat_thread=False) instead of sleeping.
    """

    def __init__(
        self,
        stream: TextIO,
        min_interval_s: float = 5.0,
        heartbeat_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_thread: bool = True,
    ):
        self.stream = stream
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.use_heartbeat_thread = heartbeat_thread
        self.lock = threading.Lock()  # advance() comes from the decode, generate and encode threads
        self.meter = JobMeter(opened_at=clock())
        self.last_line_at = self.meter.opened_at
        self.heartbeat: Heartbeat | None = None
        self.closed = False
        self.broken = False  # the stream failed: the job goes on without progress lines

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()  # outside the lock: a beat in flight needs it to finish

    def start(self, task: str, total: int) -> None:
        with self.lock:
            self.meter.start(task, total)
            if task == TASK_JOB:
                self._write_progress(self.clock())
            self._start_heartbeat()

    def advance(self, task: str, amount: int = 1) -> None:
        with self.lock:
            now = self.clock()
            job_ended = self.meter.advance(task, amount, now)
            if task == TASK_GENERATE or job_ended or now - self.last_line_at >= self.min_interval_s:
                self._write_progress(now)
            self._start_heartbeat()

    def message(self, text: str) -> None:
        with self.lock:
            text = " ".join(str(text).split())
            self.meter.stage = text
            self._write_message(text, self.clock())
            self._start_heartbeat()

    def tick(self) -> None:
        """Write a line if none was written for `heartbeat_s` (the heartbeat thread calls this)."""
        with self.lock:
            now = self.clock()
            if not self.closed and now - self.last_line_at >= self.heartbeat_s:
                self._write_progress(now)

    def _start_heartbeat(self) -> None:
        if self.use_heartbeat_thread and self.heartbeat is None and not self.closed:
            self.heartbeat = Heartbeat(self.tick, interval_s=min(1.0, self.heartbeat_s))

    def _write_progress(self, now: float) -> None:
        self._write(self.format_progress(self.meter.snapshot(now)), now)

    def _write_message(self, text: str, now: float) -> None:
        self._write(self.format_message(text, self.meter.snapshot(now)), now)

    def _write(self, line: str, now: float) -> None:
        self.last_line_at = now
        if self.broken:
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or file must not fail the job
            self.broken = True

    def format_progress(self, snapshot: ProgressSnapshot) -> str:
        raise NotImplementedError

    def format_message(self, text: str, snapshot: ProgressSnapshot) -> str:
        raise NotImplementedError


class LineProgress(LogProgress):
    """Plain `progress ...` lines in the format of LINE_PATTERN (see the module docstring)."""

    def format_progress(self, snapshot: ProgressSnapshot) -> str:
        return progress_line(snapshot)

    def format_message(self, text: str, snapshot: ProgressSnapshot) -> str:
        return progress_line(snapshot)  # the message is the snapshot's stage


class JsonProgress(LogProgress):
    """One JSON object per line: progress events and message events (see the module docstring)."""

    def format_progress(self, snapshot: ProgressSnapshot) -> str:
        return json.dumps({"event": "progress", **asdict(snapshot)})

    def format_message(self, text: str, snapshot: ProgressSnapshot) -> str:
        return json.dumps({"event": "message", "text": text})


def progress_line(snapshot: ProgressSnapshot) -> str:
    fps = f"{snapshot.fps:.1f}" if snapshot.fps is not None else "?"
    eta = f"{snapshot.eta_s}s" if snapshot.eta_s is not None else "?"
    return (
        f"progress {snapshot.percent}% frames={snapshot.frames_done}/{snapshot.frames_total} fps={fps}"
        f" elapsed={snapshot.elapsed_s}s eta={eta} stage={snapshot.stage}"
    )

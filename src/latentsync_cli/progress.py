"""How the core reports progress: the one protocol between a running job and whatever displays it.

The pipeline calls `start(task, total)` when a task begins, `advance(task, n)`
as units finish (from several threads) and `message(text)` to say what it is
doing. The CLI's displays (cli/progress.py), a Ray worker's relay and the tests
implement it; the core never imports a display. A leaf module: it imports
nothing, so reading the task names costs nothing.
"""

from __future__ import annotations

from typing import Protocol

# The tasks of a job, and their units.
TASK_JOB = "job"  # output frames written
TASK_DECODE = "decode + align"  # frames decoded and aligned
TASK_GENERATE = "generate"  # windows generated (or taken from the work dir)
TASK_ENCODE = "restore + encode"  # frames restored and encoded


class Progress(Protocol):
    def start(self, task: str, total: int) -> None: ...

    def advance(self, task: str, amount: int = 1) -> None: ...

    def message(self, text: str) -> None: ...


class NoProgress:
    """Reports nothing (the default)."""

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, amount: int = 1) -> None:
        pass

    def message(self, text: str) -> None:
        pass

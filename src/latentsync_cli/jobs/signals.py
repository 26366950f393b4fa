"""SIGINT and SIGTERM become an exception, so that every `finally` (temporary files, child processes) runs
before the process exits 130 or 143."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from latentsync_cli.errors import ExitCode, Interrupted

_SIGNAL_EXIT_CODES = {
    signal.SIGINT: ("SIGINT", ExitCode.INTERRUPTED),
    signal.SIGTERM: ("SIGTERM", ExitCode.TERMINATED),
}


class _Stop(BaseException):
    """Carries `Interrupted` out of the job. A BaseException, so that `except Exception` blocks on the way
    (e.g. "this checkpoint is corrupt" around a torch.load) cannot turn a signal into another error."""

    def __init__(self, error: Interrupted):
        super().__init__(error.message)
        self.error = error


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise `Interrupted` from the block on SIGINT/SIGTERM, after every `finally` in it has run.

    The exception carries exit code 130 (SIGINT) or 143 (SIGTERM). Only the main
    thread can install handlers; elsewhere this is a no-op.
    """

    def on_signal(signum, _frame):
        name, code = _SIGNAL_EXIT_CODES[signal.Signals(signum)]
        # A second signal while cleaning up must not interrupt the cleanup itself.
        for sig in _SIGNAL_EXIT_CODES:
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop(Interrupted(name, code))

    try:
        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNAL_EXIT_CODES}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except _Stop as stop:
        raise stop.error from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

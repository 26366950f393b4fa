"""Errors a user can act on, each with its documented exit code.

Everything the tool can diagnose (a bad file, a bad flag, missing weights)
raises one of these with a one-line message that names the thing and says
what to do. The CLI prints that line and exits with `exit_code`; anything
else is a bug and exits with INTERNAL (the traceback is shown with --debug).
The README's exit-code table is written from `ExitCode`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it (run again with --debug for the traceback)
    USAGE = 2  # bad flags, unknown mode or preset, invalid presets file
    NOT_AVAILABLE = 3  # the option needs an optional extra this install lacks (--ray without Ray)
    BAD_INPUT = 4  # an input file is missing, unreadable, or has no usable face/speech
    WEIGHTS = 5  # model weights are missing, corrupt or do not match the architecture
    OUTPUT = 6  # the output cannot be written (exists, unwritable, disk full)
    OUT_OF_MEMORY = 7  # even the smallest memory setting does not fit on the device
    BATCH_FAILED = 8  # a batch finished but one or more of its jobs failed
    INCOMPLETE = 9  # --finalize found windows missing in the work dir (a shard has not run yet)
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error (a bug); rerun with --debug and report the traceback",
    ExitCode.USAGE: "invalid usage: unknown or conflicting flags, bad mode/preset name, invalid presets file",
    ExitCode.NOT_AVAILABLE: "option needs an optional extra this install lacks (--ray: latentsync[ray])",
    ExitCode.BAD_INPUT: "bad input: missing, unreadable or unusable video/image/audio, or no face found",
    ExitCode.WEIGHTS: "model weights missing, corrupt or mismatched (see `latentsync models`)",
    ExitCode.OUTPUT: "output cannot be written: exists (use --overwrite), same as an input, unwritable, disk full",
    ExitCode.OUT_OF_MEMORY: "out of device memory even at the smallest memory setting",
    ExitCode.BATCH_FAILED: "batch run finished with at least one failed job",
    ExitCode.INCOMPLETE: "--finalize: windows are missing in the work dir (run the shards it names first)",
    ExitCode.INTERRUPTED: "interrupted by SIGINT (Ctrl-C); temporary files removed",
    ExitCode.TERMINATED: "terminated by SIGTERM; temporary files removed",
}


class LatentsyncError(Exception):
    """An error with a one-line, actionable message and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str):
        # One line, always: multi-line text from libraries is folded.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)

    @classmethod
    def with_code(cls, message: str, exit_code: int) -> LatentsyncError:
        """An error with the message and exit code another process reported (a Ray worker, say)."""
        error = cls(message)
        error.exit_code = ExitCode(exit_code)
        return error


class UsageError(LatentsyncError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """An invalid presets/override file."""


class NotAvailableError(LatentsyncError):
    """The option needs an optional extra that is not installed here: the command is fine, the install is not."""

    exit_code = ExitCode.NOT_AVAILABLE


class InputError(LatentsyncError):
    exit_code = ExitCode.BAD_INPUT


class WeightsError(LatentsyncError):
    exit_code = ExitCode.WEIGHTS


class OutputError(LatentsyncError):
    exit_code = ExitCode.OUTPUT


class DeviceMemoryError(LatentsyncError):
    exit_code = ExitCode.OUT_OF_MEMORY


class BatchFailedError(LatentsyncError):
    exit_code = ExitCode.BATCH_FAILED


class IncompleteWorkError(LatentsyncError):
    exit_code = ExitCode.INCOMPLETE


class Interrupted(LatentsyncError):
    """Raised from a signal handler so that cleanup code runs on the way out."""

    def __init__(self, signal_name: str, exit_code: ExitCode):
        super().__init__(f"{signal_name} received: stopped, temporary files removed")
        self.exit_code = exit_code

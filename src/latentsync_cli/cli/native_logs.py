"""Keep native libraries' log spam off the user's stderr.

MediaPipe's C++ core (absl/glog, TFLite) writes lines such as
"W0000 ... inference_feedback_manager.cc ..." straight to file descriptor 2 on
every graph start, and no environment variable turns them off. Render farms
parse stderr, so these lines are dropped here:

- Python's own `sys.stderr` (rich output, warnings, tracebacks) is moved to a
  duplicate of the real stderr, so it is untouched and still a terminal.
- File descriptor 2 (what C/C++ code and child processes write to) becomes a
  pipe; a thread forwards everything except the known noise to the real stderr.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

NOISE_LINE = re.compile(
    rb"^(?:[WI]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]"  # absl/glog: W0000 00:00:... file.cc:114] ...
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
_NOISE_PREFIXES = (b"W0", b"I0", b"INFO: Created", b"WARNING: All log")


def _could_become_noise(partial: bytes) -> bool:
    """True when an unfinished line might still turn out to be a noise line."""
    return any(prefix.startswith(partial[: len(prefix)]) for prefix in _NOISE_PREFIXES)


def _forward(read_fd: int, real_fd: int) -> None:
    pending = b""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NOISE_LINE.match(line))
        # Progress bars redraw without newlines: pass a partial line on at once
        # unless it may still become a noise line.
        if pending and not _could_become_noise(pending):
            kept += pending
            pending = b""
        if kept:
            os.write(real_fd, kept)
    if pending and not NOISE_LINE.match(pending):
        os.write(real_fd, pending)
    os.close(read_fd)


@contextmanager
def filtered_native_stderr() -> Iterator[None]:
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")
    try:
        sys.stderr.flush()
        real_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    original_stderr = sys.stderr
    # Move Python's stderr off fd 2 only when it writes there; a host that
    # captured it (a test runner, an embedding program) keeps its own.
    moves_python_stderr = _writes_to_fd2(original_stderr)
    if moves_python_stderr:
        sys.stderr = io.TextIOWrapper(
            os.fdopen(os.dup(real_fd), "wb", buffering=0), encoding="utf-8", errors="replace", line_buffering=True
        )
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, real_fd), name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_fd, 2)  # closes our end of the pipe: the forwarder sees EOF
        forwarder.join(timeout=2)
        if moves_python_stderr:
            sys.stderr.close()
            sys.stderr = original_stderr
        os.close(real_fd)


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False

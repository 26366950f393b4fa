"""Native log spam on file descriptor 2 is dropped; everything else reaches stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_native_noise_is_dropped_and_other_output_kept():
    script = textwrap.dedent(
        """
        import os, sys
        from latentsync_cli.cli.native_logs import filtered_native_stderr
        with filtered_native_stderr():
            os.write(2, b"W0000 00:00:1795322143.876348   13157 inference_feedback_manager.cc:114] Feedback\\n")
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"native line kept\\n")
            os.write(2, b"progress 50%\\r")
            print("python line kept", file=sys.stderr)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "W0000" not in done.stderr and "XNNPACK" not in done.stderr
    assert "native line kept" in done.stderr
    assert "progress 50%" in done.stderr
    assert "python line kept" in done.stderr

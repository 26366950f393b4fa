"""Every documented exit code is real: in the README's table, raised by the code, and seen through the CLI.

Codes 2, 4, 5, 6, 8, 9, 130 and 143 go through the real CLI in test_bad_inputs,
test_cli_sync, test_batch, test_shards and test_resume. The three that need a
fault the tests cannot make with files are here: a bug (1) and a GPU that is
out of memory at every setting (7) are injected into the CLI run in this
process; a missing optional extra (3) is a real subprocess whose Python path
hides Ray.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
import torch
from clitools import FAST, leftovers, run_cli, run_cli_here

from latentsync_cli import errors
from latentsync_cli.errors import ExitCode
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.pipeline.lipsync import LipsyncPipeline

REPO = Path(__file__).resolve().parents[1]
SECONDS = 0.2  # five frames: one short window


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exit-codes")
    return {
        "clip": make_face_clip(folder / "clip.mp4", SECONDS, size=(320, 240), preset="ultrafast"),
        "voice": make_speech(folder / "voice.wav", SECONDS, use_espeak=False),
    }


def readme_exit_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", table, flags=re.M)}


def raised_error_classes() -> set[str]:
    """Names of the classes in `raise Name(...)` anywhere in the package."""
    names = set()
    for path in (REPO / "src" / "latentsync_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                names.add(node.exc.func.id)
    return names


def test_every_exit_code_is_in_the_readme_and_raised_somewhere():
    assert set(readme_exit_codes()) == {int(code) for code in ExitCode}
    raised = raised_error_classes()
    error_classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)]
    for code in ExitCode:
        if code in (ExitCode.OK, ExitCode.INTERNAL, ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            continue  # success, any unexpected exception, and the signal handler's Interrupted(..., code)
        classes = {cls.__name__ for cls in error_classes if getattr(cls, "exit_code", None) == code}
        assert classes & raised, f"exit code {int(code)} ({code.name}): no {classes} is raised anywhere"


def test_a_bug_exits_1_with_one_line_and_leaves_nothing(media, tmp_path, monkeypatch):
    def broken_pipeline(self, job):
        raise ZeroDivisionError("division by zero (injected by the test)")

    monkeypatch.setattr(LipsyncPipeline, "sync", broken_pipeline)
    output = tmp_path / "out.mp4"
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", output, *FAST)
    assert ran.code == ExitCode.INTERNAL == 1, ran.stderr
    assert ran.error_lines == [
        "error: internal error: ZeroDivisionError: division by zero (injected by the test) "
        "(rerun with --debug and report it)"
    ], ran.stderr
    assert "Traceback" not in ran.stderr
    assert not output.exists() and leftovers(tmp_path) == []


def test_out_of_memory_at_every_setting_exits_7_with_one_line_and_leaves_nothing(media, tmp_path, monkeypatch):
    calls = []

    def full_device(self, *args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    monkeypatch.setattr(UNet3DConditionModel, "forward", full_device)
    output = tmp_path / "out.mp4"
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", output, "--json", *FAST)
    assert ran.code == ExitCode.OUT_OF_MEMORY == 7, ran.stderr
    assert len(ran.error_lines) == 1 and "window 0" in ran.error_lines[0], ran.stderr
    assert json.loads(ran.stdout) == {"error": ran.error_lines[0].removeprefix("error: "), "exit_code": 7}
    assert len(calls) > 1  # every rung of the memory ladder was tried before giving up
    assert "Traceback" not in ran.stderr
    assert not output.exists() and leftovers(tmp_path) == []


def test_ray_without_the_extra_exits_3_and_names_what_to_install(media, tmp_path):
    """A real process on a Python path where `import ray` fails, as on a machine without the extra."""
    blocker = tmp_path / "blocker"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    python_path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    output = tmp_path / "out.mp4"
    ran = run_cli("sync", media["clip"], media["voice"], "--ray", "auto", "-o", output, *FAST,
                  env={"PYTHONPATH": python_path})  # fmt: skip
    assert ran.code == ExitCode.NOT_AVAILABLE == 3, ran.stderr
    assert len(ran.error_lines) == 1 and "pip install 'latentsync[ray]'" in ran.error_lines[0], ran.stderr
    assert "Traceback" not in ran.stderr
    assert not output.exists() and leftovers(tmp_path) == []

"""`latentsync benchmark` end to end on the CPU: tiny model, a short synthetic clip, the real pipeline."""

import contextlib
import io
import json
import os
from dataclasses import dataclass

import pytest

from latentsync_cli import __version__
from latentsync_cli.bench.runner import CPU_LABEL
from latentsync_cli.benchmark_data import cache
from latentsync_cli.cli import main
from latentsync_cli.settings.benchmark_pick import pick_from_benchmark
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import choose_device, resolve_settings

pytestmark = pytest.mark.slow


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def _run(args: list[str], env: dict, capfd=None) -> Done:
    """`latentsync ARGS` in this process (one import of torch for all tests), with `env` set.

    The CLI moves Python's stderr to a duplicate of file descriptor 2, so stderr
    is read at the descriptor level (pytest's capfd); without capfd only stdout is kept.
    """
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("LATENTSYNC_PRESETS", raising=False)
        if capfd is not None:
            capfd.readouterr()
        with contextlib.redirect_stdout(stdout):
            try:
                main(args)
                code = 0
            except SystemExit as exit_:
                code = exit_.code or 0
    stderr = capfd.readouterr().err if capfd is not None else ""
    return Done(code, stdout.getvalue(), stderr)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return {
        "LATENTSYNC_CACHE_DIR": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a machine with a GPU
    }


@pytest.fixture(scope="module")
def quick_run(env, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("report")
    args = ["benchmark", "--quick", "--json", "--duration", "0.2", "--modes", "normal,turbo"]
    done = _run(args + ["--gpu-price", "2", "--report", str(report_dir)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), report_dir


@pytest.fixture(scope="module")
def cpu_record():
    return choose_device(probe_devices(environ={"CUDA_VISIBLE_DEVICES": ""}).devices, "cpu")


def test_quick_benchmark_measures_each_mode_with_and_without_deepcache(quick_run):
    entry, _ = quick_run
    names = [config["name"] for config in entry["configs"]]
    assert names == ["normal", "normal+deepcache", "turbo", "turbo+deepcache"]
    for config in entry["configs"]:
        assert config["error"] is None
        assert config["label"] == CPU_LABEL
        assert config["seconds_per_output_second"] > 0 and config["realtime_factor"] > 0
        assert config["stages"]["denoise"] > 0
        assert config["unet_steps"]["full"] >= 1
        assert config["fidelity"] is None  # random weights
        if config["settings"]["deepcache"] and config["settings"]["steps"] > 1:
            assert config["unet_steps"]["cached"] >= 1
    assert entry["label"] == CPU_LABEL
    assert "random weights" in entry["fidelity_note"]
    assert entry["weights"]["id"] == "random-tiny"
    assert {row["mode"] for row in entry["costs"]} == {"normal", "turbo"}


def test_cache_entry_has_the_device_key(quick_run, env, cpu_record):
    entry, _ = quick_run
    with open(os.path.join(env["LATENTSYNC_CACHE_DIR"], cache.CACHE_FILE_NAME), encoding="utf-8") as handle:
        stored = json.load(handle)
    (saved,) = stored["entries"]
    assert saved["key"] == entry["key"]
    key = saved["key"]
    assert key["device"] == cpu_record.name
    assert key["latentsync"] == __version__ and key["weights"] == "random-tiny"
    assert key["torch"] == __import__("torch").__version__
    assert saved["date"][:4].isdigit() and "T" in saved["date"]


def test_report_has_summary_json_and_plot(quick_run):
    entry, report_dir = quick_run
    assert CPU_LABEL in (report_dir / "summary.txt").read_text()
    assert json.loads((report_dir / "benchmark.json").read_text())["configs"] == entry["configs"]
    assert (report_dir / "speed.png").read_bytes().startswith(b"\x89PNG")


def test_auto_picks_from_the_cache_this_run_wrote(quick_run, env, cpu_record, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, env["LATENTSYNC_CACHE_DIR"])
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    table = load_presets(environ={})
    pick = pick_from_benchmark(cpu_record, table.length_class(30.0), table)
    assert pick is not None and "not representative" in pick["description"]
    # The CPU run used fewer steps; the pick carries the mode's own.
    assert pick["steps"] == table.modes[pick["mode"]].steps
    resolved = resolve_settings(table, SettingsRequest(quality="auto", device="cpu"), [cpu_record], 30.0, pick)
    assert resolved.sources["mode"] == "benchmark cache"


def test_show_then_clear(quick_run, env, capfd):
    shown = _run(["benchmark", "--show", "--json"], env, capfd)
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["entries"]) == 1

    human = _run(["benchmark", "--show"], env, capfd)
    assert human.returncode == 0 and "turbo+deepcache" in human.stderr

    cleared = _run(["benchmark", "--clear"], env, capfd)
    assert cleared.returncode == 0 and "removed 1" in cleared.stderr
    empty = _run(["benchmark", "--show", "--json"], env, capfd)
    assert json.loads(empty.stdout)["entries"] == []
    assert "no benchmark" in _run(["benchmark", "--show"], env, capfd).stderr


def test_bad_flags_are_one_line_usage_errors(env, capfd):
    cases = (
        ["--quick", "--full"],
        ["--duration", "0"],
        ["--weights", "huge"],
        ["--clear", "--show"],
        ["--video", "x.mp4"],
        ["--modes", "warp"],
    )
    for args in cases:
        done = _run(["benchmark", *args], env, capfd)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

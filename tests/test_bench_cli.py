"""`latentsync benchmark` end to end on the CPU: tiny model, a short synthetic clip, the real pipeline."""

import json
import os

import pytest
from clitools import run_cli_here

from latentsync_cli import __version__
from latentsync_cli.bench.runner import CPU_LABEL
from latentsync_cli.benchmark_data import cache
from latentsync_cli.settings.benchmark_pick import pick_from_benchmark
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import choose_device, resolve_settings

pytestmark = pytest.mark.slow


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
    done = run_cli_here(*args, "--gpu-price", "2", "--report", report_dir, env=env)
    assert done.code == 0, done.stderr[-2000:]
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


def test_show_then_clear(quick_run, env):
    shown = run_cli_here("benchmark", "--show", "--json", env=env)
    assert shown.code == 0, shown.stderr
    assert len(json.loads(shown.stdout)["entries"]) == 1

    human = run_cli_here("benchmark", "--show", env=env)
    assert human.code == 0 and "turbo+deepcache" in human.stderr

    cleared = run_cli_here("benchmark", "--clear", env=env)
    assert cleared.code == 0 and "removed 1" in cleared.stderr
    empty = run_cli_here("benchmark", "--show", "--json", env=env)
    assert json.loads(empty.stdout)["entries"] == []
    assert "no benchmark" in run_cli_here("benchmark", "--show", env=env).stderr


def test_bad_flags_are_one_line_usage_errors(env):
    cases = (
        ["--quick", "--full"],
        ["--duration", "0"],
        ["--weights", "huge"],
        ["--clear", "--show"],
        ["--audio", "x.wav"],
        ["--modes", "warp"],
    )
    for args in cases:
        done = run_cli_here("benchmark", *args, env=env)
        assert done.code == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

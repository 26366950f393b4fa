"""`latentsync presets ...` end to end: exit codes, JSON alone on stdout, one-line errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from clitools import run_cli, run_cli_here

from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets

BROKEN = "[modes.fast]\nwindow = 30\n"


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch) -> Path:
    """The user config folder at a path the tests know (conftest.py already isolates it)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture(scope="module")
def module_environment() -> dict[str, str | None]:
    """What a module fixture sees: such fixtures are set up before any function-scoped one."""
    return {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "LATENTSYNC_PRESETS")}


def test_module_fixtures_see_isolated_user_folders(module_environment, tmp_path_factory):
    """A module fixture that runs the CLI reads no real ~/.config and no $LATENTSYNC_PRESETS."""
    assert module_environment["LATENTSYNC_PRESETS"] is None
    assert Path(module_environment["XDG_CONFIG_HOME"]).is_relative_to(tmp_path_factory.getbasetemp())


def test_resolve_json_has_values_and_sources():
    ran = run_cli_here("presets", "resolve", "--mode", "turbo", "--quality", "draft", "--duration", "30", "--json")
    assert ran.code == 0
    data = json.loads(ran.stdout)  # stdout is pure JSON
    for name in ("steps", "scheduler", "window", "guidance", "deepcache_interval"):
        assert name in data["settings"] and name in data["sources"]
    assert data["settings"]["scheduler"] == "euler" and data["sources"]["scheduler"] == "mode"
    assert data["settings"]["steps"] == 4 and data["sources"]["steps"] == "quality"


def test_resolve_reports_a_user_flag():
    ran = run_cli_here("presets", "resolve", "--mode", "fast", "--steps", "7")
    assert ran.code == 0 and ran.stdout == ""
    steps_row = next(line for line in ran.stderr.splitlines() if line.split()[:1] == ["steps"])
    assert steps_row.split()[1] == "7" and "user flag" in steps_row


def test_resolve_auto_notes_the_missing_benchmark():
    ran = run_cli_here("presets", "resolve", "--quality", "auto", "--json")
    assert ran.code == 0
    assert json.loads(ran.stdout)["notes"] == ["no benchmark for this GPU; run `latentsync benchmark`"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mode", "warp"], "allowed: normal, fast, turbo, ultra"),
        (["--guidance", "0.5"], "--guidance 0.5"),
        (["--window", "25"], "--window 25"),
        (["--steps", "x"], "--steps"),
        (["--steps", "1001", "--scheduler", "ddim"], "--steps 1001: allowed: 1 to 998"),
        (["--steps", "1000000000000"], "--steps 1000000000000: allowed: 1 to 998"),
        (["--steps", "99999999999999999999"], "--steps 99999999999999999999: allowed: 1 to 998"),
    ],
)
def test_resolve_usage_errors_exit_2_with_one_line(args, expected):
    ran = run_cli_here("presets", "resolve", *args, "--json")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.stderr.strip().splitlines()) == 1 and expected in ran.stderr


def test_broken_override_via_flag_and_env(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    ran = run_cli_here("presets", "resolve", "--presets", str(bad), "--json")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.stderr.strip().splitlines()) == 1 and "modes.fast.window" in ran.stderr and str(bad) in ran.stderr
    monkeypatch.setenv("LATENTSYNC_PRESETS", str(bad))
    ran = run_cli_here("presets", "list")
    assert ran.code == 2 and "modes.fast.window" in ran.stderr


def test_out_of_range_preset_value_is_one_line_before_any_model_work(tmp_path):
    bad = tmp_path / "branch.toml"
    bad.write_text("[modes.turbo]\ndeepcache_branch = 99\n")
    ran = run_cli_here("presets", "resolve", "--mode", "turbo", "--presets", str(bad), "--json")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.stderr.strip().splitlines()) == 1
    assert f"{bad}: modes.turbo.deepcache_branch = 99 is out of range; allowed: 0 to 11" in ran.stderr


def test_a_folder_at_the_user_presets_path_is_one_line(tmp_path):
    folder = tmp_path / "config" / "latentsync" / "presets.toml"
    folder.mkdir(parents=True)
    ran = run_cli_here("presets", "resolve", "--json")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.stderr.strip().splitlines()) == 1 and str(folder) in ran.stderr and "folder" in ran.stderr


def test_list_json_is_the_merged_table(tmp_path):
    override = tmp_path / "mine.toml"
    override.write_text("[modes.fast]\nsteps = 10\n")
    ran = run_cli_here("presets", "list", "--presets", str(override), "--json")
    assert ran.code == 0
    data = json.loads(ran.stdout)
    assert data["modes"]["fast"]["steps"] == 10 and data["modes"]["normal"]["steps"] == 20
    assert set(data) == {"modes", "quality", "levels", "tiers", "length", "auto"}


def test_list_tables_go_to_stderr_and_quiet_silences_them():
    ran = run_cli_here("presets", "list")
    assert ran.code == 0 and ran.stdout == "" and "Speed modes" in ran.stderr and "turbo" in ran.stderr
    assert "\x1b[" not in ran.stderr  # NO_COLOR
    ran = run_cli_here("--quiet", "presets", "list")
    assert ran.code == 0 and ran.stdout == "" and ran.stderr == ""


def test_show():
    ran = run_cli_here("presets", "show", "fast", "--json")
    assert ran.code == 0
    assert set(json.loads(ran.stdout)) == {"modes", "quality"}  # a mode and a quality preset are both called fast
    ran = run_cli_here("presets", "show", "modes.fast", "--json")
    assert set(json.loads(ran.stdout)) == {"modes"}
    ran = run_cli_here("presets", "show", "warp")
    assert ran.code == 2 and ran.stdout == "" and "warp" in ran.stderr


def test_path(tmp_path):
    override = tmp_path / "mine.toml"
    ran = run_cli_here("presets", "path", "--presets", str(override), "--json")
    assert ran.code == 0
    data = json.loads(ran.stdout)
    assert data["explicit"] == str(override) and data["explicit_from"] == "--presets"
    assert data["user"].startswith(str(tmp_path / "config")) and data["user_exists"] is False
    assert data["builtin"].endswith("presets.toml")


def test_init_writes_a_loadable_file_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out" / "presets.toml"
    ran = run_cli_here("presets", "init", "--path", str(target))
    assert ran.code == 0 and str(target) in ran.stderr
    text = target.read_text()
    assert text.startswith("#") and "[modes.custom]" in text
    assert load_presets(target, environ={}).modes["custom"].scheduler == "dpmpp_2m"
    ran = run_cli_here("presets", "init", "--path", str(target))
    assert ran.code == 6 and "--force" in ran.stderr
    assert run_cli_here("presets", "init", "--path", str(target), "--force").code == 0
    ran = run_cli_here("presets", "resolve", "--presets", str(target), "--mode", "custom", "--json")
    assert ran.code == 0 and json.loads(ran.stdout)["settings"]["mode"] == "custom"


def test_init_default_goes_to_the_user_config_dir(tmp_path):
    ran = run_cli_here("presets", "init")
    assert ran.code == 0
    assert (tmp_path / "config" / "latentsync" / "presets.toml").is_file() or sys.platform != "linux"


def test_gpu_json():
    ran = run_cli_here("presets", "gpu", "--json")
    assert ran.code == 0
    data = json.loads(ran.stdout)
    assert data["devices"][-1]["backend"] == "cpu" and data["devices"][-1]["tier"] == "cpu"
    if all(d.backend == "cpu" for d in probe_devices().devices):
        assert data["selected"] == {"device": "cpu", "tier": "cpu", "level": "conservative"}


def test_real_process_acceptance(tmp_path):
    """The acceptance commands in a fresh interpreter: JSON alone on stdout, exit 2 for a broken file."""
    command = ["presets", "resolve", "--mode", "turbo", "--quality", "draft", "--duration", "30", "--json"]
    done = run_cli(*command, timeout=120)
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["sources"]["deepcache_interval"] == "mode"

    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    done = run_cli(*command, timeout=120, env={"LATENTSYNC_PRESETS": str(bad)})
    assert done.code == 2 and done.stdout == ""
    assert len(done.error_lines) == 1 and "modes.fast.window" in done.error_lines[0]

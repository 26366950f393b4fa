"""`latentsync presets ...` end to end: exit codes, JSON alone on stdout, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from latentsync_cli.cli import main
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets

BROKEN = "[modes.fast]\nwindow = 30\n"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No user override file, no $LATENTSYNC_PRESETS, no colour."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("LATENTSYNC_PRESETS", raising=False)


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_resolve_json_has_values_and_sources(capsys):
    code, out, _ = run(
        capsys, "presets", "resolve", "--mode", "turbo", "--quality", "draft", "--duration", "30", "--json"
    )
    assert code == 0
    data = json.loads(out)  # stdout is pure JSON
    for name in ("steps", "scheduler", "window", "guidance", "deepcache_interval"):
        assert name in data["settings"] and name in data["sources"]
    assert data["settings"]["scheduler"] == "euler" and data["sources"]["scheduler"] == "mode"
    assert data["settings"]["steps"] == 4 and data["sources"]["steps"] == "quality"


def test_resolve_reports_a_user_flag(capsys):
    code, out, err = run(capsys, "presets", "resolve", "--mode", "fast", "--steps", "7")
    assert code == 0 and out == ""
    steps_row = next(line for line in err.splitlines() if line.split()[:1] == ["steps"])
    assert steps_row.split()[1] == "7" and "user flag" in steps_row


def test_resolve_auto_notes_the_missing_benchmark(capsys):
    code, out, _ = run(capsys, "presets", "resolve", "--quality", "auto", "--json")
    assert code == 0
    assert json.loads(out)["notes"] == ["no benchmark for this GPU; run `latentsync benchmark`"]


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
def test_resolve_usage_errors_exit_2_with_one_line(capsys, args, expected):
    code, out, err = run(capsys, "presets", "resolve", *args, "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err


def test_broken_override_via_flag_and_env(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    code, out, err = run(capsys, "presets", "resolve", "--presets", str(bad), "--json")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "modes.fast.window" in err and str(bad) in err
    monkeypatch.setenv("LATENTSYNC_PRESETS", str(bad))
    code, _, err = run(capsys, "presets", "list")
    assert code == 2 and "modes.fast.window" in err


def test_out_of_range_preset_value_is_one_line_before_any_model_work(capsys, tmp_path):
    bad = tmp_path / "branch.toml"
    bad.write_text("[modes.turbo]\ndeepcache_branch = 99\n")
    code, out, err = run(capsys, "presets", "resolve", "--mode", "turbo", "--presets", str(bad), "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"{bad}: modes.turbo.deepcache_branch = 99 is out of range; allowed: 0 to 11" in err


def test_a_folder_at_the_user_presets_path_is_one_line(capsys, tmp_path):
    folder = tmp_path / "config" / "latentsync" / "presets.toml"
    folder.mkdir(parents=True)
    code, out, err = run(capsys, "presets", "resolve", "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(folder) in err and "folder" in err


def test_list_json_is_the_merged_table(capsys, tmp_path):
    override = tmp_path / "mine.toml"
    override.write_text("[modes.fast]\nsteps = 10\n")
    code, out, err = run(capsys, "presets", "list", "--presets", str(override), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["modes"]["fast"]["steps"] == 10 and data["modes"]["normal"]["steps"] == 20
    assert set(data) == {"modes", "quality", "levels", "tiers", "length", "auto"}


def test_list_tables_go_to_stderr_and_quiet_silences_them(capsys):
    code, out, err = run(capsys, "presets", "list")
    assert code == 0 and out == "" and "Speed modes" in err and "turbo" in err
    assert "\x1b[" not in err  # NO_COLOR
    code, out, err = run(capsys, "--quiet", "presets", "list")
    assert code == 0 and out == "" and err == ""


def test_show(capsys):
    code, out, _ = run(capsys, "presets", "show", "fast", "--json")
    assert code == 0
    assert set(json.loads(out)) == {"modes", "quality"}  # a mode and a quality preset are both called fast
    code, out, _ = run(capsys, "presets", "show", "modes.fast", "--json")
    assert set(json.loads(out)) == {"modes"}
    code, out, err = run(capsys, "presets", "show", "warp")
    assert code == 2 and out == "" and "warp" in err


def test_path(capsys, tmp_path):
    override = tmp_path / "mine.toml"
    code, out, _ = run(capsys, "presets", "path", "--presets", str(override), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["explicit"] == str(override) and data["explicit_from"] == "--presets"
    assert data["user"].startswith(str(tmp_path / "config")) and data["user_exists"] is False
    assert data["builtin"].endswith("presets.toml")


def test_init_writes_a_loadable_file_and_refuses_to_overwrite(capsys, tmp_path):
    target = tmp_path / "out" / "presets.toml"
    code, out, err = run(capsys, "presets", "init", "--path", str(target))
    assert code == 0 and str(target) in err
    text = target.read_text()
    assert text.startswith("#") and "[modes.custom]" in text
    assert load_presets(target, environ={}).modes["custom"].scheduler == "dpmpp_2m"
    code, _, err = run(capsys, "presets", "init", "--path", str(target))
    assert code == 6 and "--force" in err
    assert run(capsys, "presets", "init", "--path", str(target), "--force")[0] == 0
    code, out, _ = run(capsys, "presets", "resolve", "--presets", str(target), "--mode", "custom", "--json")
    assert code == 0 and json.loads(out)["settings"]["mode"] == "custom"


def test_init_default_goes_to_the_user_config_dir(capsys, tmp_path):
    code, _, _ = run(capsys, "presets", "init")
    assert code == 0
    assert (tmp_path / "config" / "latentsync" / "presets.toml").is_file() or sys.platform != "linux"


def test_gpu_json(capsys):
    code, out, _ = run(capsys, "presets", "gpu", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["devices"][-1]["backend"] == "cpu" and data["devices"][-1]["tier"] == "cpu"
    if all(d.backend == "cpu" for d in probe_devices().devices):
        assert data["selected"] == {"device": "cpu", "tier": "cpu", "level": "conservative"}


def test_real_process_acceptance(tmp_path):
    """The acceptance commands in a fresh interpreter: JSON alone on stdout, exit 2 for a broken file."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "NO_COLOR": "1"}
    env.pop("LATENTSYNC_PRESETS", None)
    command = [
        sys.executable,
        "-m",
        "latentsync_cli",
        "presets",
        "resolve",
        "--mode",
        "turbo",
        "--quality",
        "draft",
        "--duration",
        "30",
        "--json",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sources"]["deepcache_interval"] == "mode"

    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    env["LATENTSYNC_PRESETS"] = str(bad)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "modes.fast.window" in errors[0]

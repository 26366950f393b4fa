"""The built-in preset table, the override merge and the one-line errors for bad files."""

from __future__ import annotations

import pytest
import tomllib

from latentsync_cli.constants import MAX_WINDOW, SCHEDULERS
from latentsync_cli.errors import ConfigError, ExitCode
from latentsync_cli.settings import presets as presets_module
from latentsync_cli.settings.presets import build_table, deep_merge, load_presets, locate_preset_files


@pytest.fixture
def builtin():
    return load_presets(environ={})


@pytest.fixture
def no_user_file(tmp_path, monkeypatch):
    """Point the user override file at an empty folder so the real one is never read."""
    monkeypatch.setattr(presets_module, "user_presets_path", lambda: tmp_path / "user" / "presets.toml")
    return tmp_path / "user" / "presets.toml"


def builtin_data() -> dict:
    return tomllib.loads(presets_module._builtin_location().read_text(encoding="utf-8"))


def test_builtin_table_has_the_documented_entries(builtin):
    assert list(builtin.modes) == ["normal", "fast", "turbo", "ultra"]
    assert {name: q.step_scale for name, q in builtin.quality.items() if not q.auto} == {
        "draft": 0.5,
        "fast": 0.7,
        "balanced": 1.0,
        "quality": 1.5,
        "ultra": 2.0,
    }
    assert builtin.quality["auto"].auto
    assert list(builtin.levels) == ["conservative", "balanced", "aggressive"]
    assert {t.backend for t in builtin.tiers.values()} == {"cpu", "mps", "cuda"}
    assert builtin.auto.fidelity_floor["mouth_ssim"] == pytest.approx(0.90)


def test_normal_mode_is_upstream_reference_quality(builtin):
    normal = builtin.modes["normal"]
    assert (normal.steps, normal.scheduler, normal.guidance, normal.window, normal.deepcache) == (
        20,
        "ddim",
        1.5,
        16,
        False,
    )


def test_faster_modes_are_cheaper(builtin):
    def unet_cost(mode):  # full-pass equivalents per frame; a DeepCache step costs about 11 %
        full = len(range(0, mode.steps, mode.deepcache_interval)) if mode.deepcache else mode.steps
        cached = mode.steps - full
        cfg = 2 if mode.guidance > 1.0 else 1
        return (full + 0.11 * cached) * cfg

    costs = [unet_cost(builtin.modes[name]) for name in ("normal", "fast", "turbo", "ultra")]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == 4
    for mode in builtin.modes.values():
        assert 1 <= mode.window <= MAX_WINDOW and mode.scheduler in SCHEDULERS
        assert 1 <= mode.min_steps <= mode.steps


@pytest.mark.parametrize(
    "seconds, length_class",
    [
        (0.5, "short"),
        (4.99, "short"),
        (5.0, "short"),
        (5.01, "medium"),
        (20.0, "medium"),
        (20.5, "long"),
        (3600, "long"),
        (None, "medium"),
    ],
)
def test_length_classes(builtin, seconds, length_class):
    assert builtin.length_class(seconds) == length_class


def test_override_merges_per_entry_and_adds_modes(tmp_path, no_user_file):
    override = tmp_path / "mine.toml"
    override.write_text(
        "[modes.fast]\nsteps = 10\n\n"
        '[modes.slow]\nsteps = 40\nmin_steps = 20\nscheduler = "unipc"\nguidance = 2\nwindow = 24\n'
        "deepcache = false\ndeepcache_interval = 3\ndeepcache_branch = 0\nface_detect_stride = 1\n"
        "[auto.fidelity_floor]\nmouth_psnr_db = 30.0\n"
    )
    table = load_presets(override, environ={})
    assert table.modes["fast"].steps == 10
    assert table.modes["fast"].scheduler == "dpmpp_2m"  # the rest of the entry is kept
    assert table.modes["slow"].guidance == 2.0 and isinstance(table.modes["slow"].guidance, float)
    assert table.auto.fidelity_floor == {"mouth_ssim": 0.9, "mouth_psnr_db": 30.0}
    assert table.files[-1] == str(override)


def test_file_precedence(tmp_path, no_user_file):
    no_user_file.parent.mkdir(parents=True)
    no_user_file.write_text("[modes.fast]\nsteps = 11\n")
    from_env = tmp_path / "env.toml"
    from_env.write_text("[modes.fast]\nsteps = 9\n")
    from_flag = tmp_path / "flag.toml"
    from_flag.write_text("[modes.fast]\nsteps = 7\n")
    env = {"LATENTSYNC_PRESETS": str(from_env)}
    assert load_presets(environ={}).modes["fast"].steps == 11
    assert load_presets(environ=env).modes["fast"].steps == 9
    assert load_presets(from_flag, environ=env).modes["fast"].steps == 7
    files = locate_preset_files(from_flag, env)
    assert files.explicit_from == "--presets" and files.override == from_flag


def test_json_layout_loads_back_as_the_same_table(builtin):
    again = build_table([("dumped", builtin.to_dict())])
    assert again.modes == builtin.modes and again.levels == builtin.levels and again.length == builtin.length
    assert again.auto == builtin.auto and again.tiers == builtin.tiers and again.quality == builtin.quality


def test_deep_merge_keeps_both_sides():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": 4}) == {
        "a": {"x": 1, "y": 3},
        "b": 1,
        "c": 4,
    }


BAD_FILES = {
    "syntax": ("[modes.fast\nsteps = 3\n", ["invalid TOML"]),
    "unknown key": ("[modes.fast]\nstepz = 3\n", ["modes.fast.stepz", "allowed:", "steps"]),
    "wrong type": ('[modes.fast]\nsteps = "ten"\n', ["modes.fast.steps", "integer"]),
    "bool for int": ("[modes.fast]\nsteps = true\n", ["modes.fast.steps", "integer"]),
    "window > 24": ("[modes.fast]\nwindow = 30\n", ["modes.fast.window", "1 to 24"]),
    "steps < 1": ("[modes.fast]\nsteps = 0\n", ["modes.fast.steps", "1 to 998"]),
    "steps > timesteps": ("[modes.fast]\nsteps = 999\n", ["modes.fast.steps = 999", "1 to 998"]),
    "huge steps": ("[modes.fast]\nsteps = 99999999999999999999\n", ["modes.fast.steps", "1 to 998"]),
    "min_steps > timesteps": ("[modes.fast]\nmin_steps = 5000\n", ["modes.fast.min_steps", "1 to 998"]),
    "deepcache_branch": ("[modes.turbo]\ndeepcache_branch = 99\n", ["modes.turbo.deepcache_branch = 99", "0 to 11"]),
    "huge branch": ("[modes.turbo]\ndeepcache_branch = 1000000000000\n", ["modes.turbo.deepcache_branch", "0 to 11"]),
    "negative branch": ("[modes.turbo]\ndeepcache_branch = -1\n", ["modes.turbo.deepcache_branch", "0 to 11"]),
    "interval 0": ("[modes.fast]\ndeepcache_interval = 0\n", ["modes.fast.deepcache_interval", "1 to 998"]),
    "huge stride": ("[modes.fast]\nface_detect_stride = 10000000\n", ["modes.fast.face_detect_stride", "1 to 1500"]),
    "rule interval": ("[length.long]\ndeepcache_interval = 0\n", ["length.long.deepcache_interval", "1 to 998"]),
    "windows per call": ("[levels.balanced]\nwindows_per_call = 65\n", ["levels.balanced.windows_per_call", "1 to 64"]),
    "memory fraction 0": ("[levels.balanced]\nmemory_fraction = 0\n", ["balanced.memory_fraction", "> 0 and <= 1"]),
    "memory fraction > 1": ("[levels.balanced]\nmemory_fraction = 1.5\n", ["memory_fraction = 1.5", "> 0 and <= 1"]),
    "huge guidance": ("[modes.fast]\nguidance = 1" + "0" * 400 + "\n", ["modes.fast.guidance", ">= 1"]),
    "infinite guidance": ("[modes.fast]\nguidance = inf\n", ["modes.fast.guidance", ">= 1"]),
    "step_scale": ("[quality.ultra]\nstep_scale = 1e9\n", ["quality.ultra.step_scale", "> 0 and <= 998"]),
    "min memory": ("[tiers.large_gpu]\nmin_memory_gb = -1\n", ["tiers.large_gpu.min_memory_gb", ">= 0"]),
    "max seconds": ("[length.short]\nmax_seconds = 0\n", ["length.short.max_seconds", "> 0"]),
    "infinite floor": ("[auto.fidelity_floor]\nmouth_ssim = nan\n", ["auto.fidelity_floor.mouth_ssim", "finite"]),
    "guidance < 1": ("[modes.turbo]\nguidance = 0.5\n", ["modes.turbo.guidance", ">= 1"]),
    "scheduler": ('[modes.fast]\nscheduler = "lms"\n', ["modes.fast.scheduler", "ddim, dpmpp_2m, euler, unipc"]),
    "unknown table": ("[mode.fast]\nsteps = 3\n", ["[mode]", "modes"]),
    "bad name": ("[modes.Fast]\nsteps = 3\n", ["modes.Fast", "lowercase"]),
    "incomplete new mode": ("[modes.mine]\nsteps = 3\n", ["modes.mine", "missing", "min_steps"]),
    "dangling level": ('[tiers.cpu]\nlevel = "max"\n', ["tiers.cpu.level", "conservative"]),
    "min above steps": ("[modes.fast]\nmin_steps = 13\n", ["modes.fast.min_steps", "steps = 12"]),
    "precision": ('[levels.balanced]\nprecision = "fp8"\n', ["levels.balanced.precision", "bf16"]),
    "floor not a number": ('[auto.fidelity_floor]\nmouth_ssim = "high"\n', ["auto.fidelity_floor.mouth_ssim"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_override_file_fails_with_one_line(case, tmp_path, no_user_file):
    text, expected = BAD_FILES[case]
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_presets(bad, environ={})
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(str(bad))
    for part in expected:
        assert part in message
    assert caught.value.exit_code == ExitCode.USAGE


def test_missing_override_file_is_a_config_error(tmp_path, no_user_file):
    with pytest.raises(ConfigError, match="LATENTSYNC_PRESETS"):
        load_presets(environ={"LATENTSYNC_PRESETS": str(tmp_path / "nope.toml")})


def test_a_folder_at_the_user_presets_path_is_a_config_error(no_user_file):
    no_user_file.mkdir(parents=True)
    with pytest.raises(ConfigError) as caught:
        load_presets(environ={})
    message = caught.value.message
    assert message.startswith(str(no_user_file)) and "folder" in message and "\n" not in message
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_folder_named_as_the_presets_file_is_a_config_error(tmp_path, no_user_file):
    with pytest.raises(ConfigError, match="folder.*--presets"):
        load_presets(tmp_path, environ={})


def test_the_range_checks_match_the_unet(builtin):
    """deepcache_branch names a skip tensor: the limit is the real UNet's, 0 .. num_skips - 1."""
    from latentsync_cli.models.unet_config import UNetConfig
    from latentsync_cli.settings.limits import LIMITS
    from latentsync_cli.weights.checkpoint import build_meta_unet

    unet = build_meta_unet(UNetConfig.latentsync_1_6())
    assert (LIMITS["deepcache_branch"].minimum, LIMITS["deepcache_branch"].maximum) == (0, unet.num_skips - 1)


def test_builtin_table_goes_through_the_same_checks():
    data = builtin_data()
    data["modes"]["normal"]["window"] = 25
    with pytest.raises(ConfigError, match=r"presets.toml: modes.normal.window = 25"):
        build_table([("presets.toml", data)])
    data = builtin_data()
    del data["length"]["long"]  # then no class covers the longest videos
    with pytest.raises(ConfigError, match="exactly one"):
        build_table([("presets.toml", data)])

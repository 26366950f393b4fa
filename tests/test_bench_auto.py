from dataclasses import replace

import pytest

from latentsync_cli.benchmark_data import cache
from latentsync_cli.benchmark_data.entries import BenchmarkEntry
from latentsync_cli.settings.benchmark_pick import pick_from_benchmark
from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings, resolve_settings

H100 = DeviceRecord(
    backend="cuda",
    name="NVIDIA H100 80GB HBM3",
    index=0,
    total_memory_bytes=85_520_809_984,
    compute_capability=(9, 0),
    driver_version="550.54",
)


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user override file
    return load_presets(environ={})


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(table, name, mode, speed, ssim, changes=None, identical=False):
    mode_settings = table.modes[mode].settings()
    settings = replace(RunSettings(mode=mode, **mode_settings), **(changes or {}))
    fidelity = None
    if ssim is not None:
        fidelity = {"mouth_psnr": 30.0, "mouth_ssim": ssim, "temporal_consistency": 0.95, "identical": identical}
    return {
        "name": name,
        "mode": mode,
        "changes": changes or {},
        "settings": settings.to_dict(),
        "seconds_per_output_second": speed,
        "fidelity": fidelity,
        "error": None,
    }


def _write_entry(table, device, weights="latentsync-1.6", random=False, date="2026-11-22T05:00:00+00:00", label=""):
    def ssim(value):
        return None if random else value

    configs = [
        _config(table, "normal", "normal", 2.0, ssim(1.0), identical=not random),
        _config(table, "normal+deepcache", "normal", 0.9, ssim(0.96), {"deepcache": True}),
        _config(table, "fast+deepcache", "fast", 0.6, ssim(0.93)),
        _config(table, "fast", "fast", 1.1, ssim(0.95), {"deepcache": False}),
        _config(table, "turbo+deepcache", "turbo", 0.4, ssim(0.88)),  # fastest, below the 0.90 floor
        _config(table, "turbo", "turbo", 0.7, ssim(0.91), {"deepcache": False}),
    ]
    entry = {
        "key": cache.make_key(device, weights).to_dict(),
        "date": date,
        "level": "quick",
        "weights": {"id": weights, "description": "", "is_random": random},
        "label": label,
        "reference": "normal",
        "configs": configs,
    }
    cache.save_entry(BenchmarkEntry.from_dict(entry))
    return entry


def test_no_entry_means_no_pick(table):
    assert pick_from_benchmark(H100, "medium", table) is None
    _write_entry(table, replace(H100, name="NVIDIA L4"))
    assert pick_from_benchmark(H100, "medium", table) is None


def test_fastest_above_the_floor_wins_not_the_fastest(table):
    _write_entry(table, H100)
    pick = pick_from_benchmark(H100, "long", table)
    # turbo+deepcache is faster (0.4) but its SSIM 0.88 is under the 0.90 floor.
    assert pick["mode"] == "fast" and pick["deepcache"] is True
    assert pick["steps"] == table.modes["fast"].steps
    assert "fast+deepcache" in pick["description"]
    assert "mouth ssim 0.93 (floor 0.90)" in pick["description"]
    assert "NVIDIA H100 80GB HBM3" in pick["description"] and "2026-11-22" in pick["description"]


def test_raising_the_floor_changes_the_pick(table):
    _write_entry(table, H100)
    strict = replace(table, auto=replace(table.auto, fidelity_floor={"mouth_ssim": 0.955}))
    assert pick_from_benchmark(H100, "long", strict)["mode"] == "normal"
    impossible = replace(table, auto=replace(table.auto, fidelity_floor={"mouth_ssim": 1.5}))
    pick = pick_from_benchmark(H100, "long", impossible)
    # Only the reference itself (identical output) is left.
    assert pick["mode"] == "normal" and pick["deepcache"] is False
    assert "identical to normal" in pick["description"]


def test_short_videos_exclude_configs_the_length_rule_turns_off(table):
    assert table.length["short"].deepcache is False
    _write_entry(table, H100)
    pick = pick_from_benchmark(H100, "short", table)
    assert pick["deepcache"] is False
    assert pick["mode"] == "turbo"  # 0.7 s/s, SSIM 0.91: fastest without DeepCache above the floor


def test_a_named_mode_restricts_the_pick(table):
    _write_entry(table, H100)
    assert pick_from_benchmark(H100, "long", table, mode="normal")["deepcache"] is True


def test_random_weights_pick_by_speed_and_say_so(table):
    _write_entry(table, H100, weights="random", random=True)
    pick = pick_from_benchmark(H100, "long", table)
    assert pick["mode"] == "turbo" and pick["deepcache"] is True
    assert "fidelity unknown (random weights)" in pick["description"]
    assert pick_from_benchmark(H100, "short", table)["deepcache"] is False


def test_real_weights_entry_preferred_and_cpu_label_carried(table):
    _write_entry(table, H100, weights="random", random=True, date="2026-11-23T00:00:00+00:00")
    _write_entry(table, H100, weights="latentsync-1.6", random=False, date="2026-11-20T00:00:00+00:00")
    assert "fidelity unknown" not in pick_from_benchmark(H100, "long", table)["description"]

    cpu = DeviceRecord(backend="cpu", name="Test CPU (2 cores)", total_memory_bytes=24_000_000_000)
    _write_entry(table, cpu, weights="random-tiny", random=True, label="CPU, tiny model: not representative")
    assert "not representative" in pick_from_benchmark(cpu, "medium", table)["description"]


def test_stale_entry_is_used_with_a_warning(table):
    entry = _write_entry(table, H100)
    entry["key"]["torch"] = "1.0.0"
    cache._write_records([entry], cache.cache_file())
    pick = pick_from_benchmark(H100, "long", table)
    assert pick["mode"] == "fast"
    assert "torch 1.0.0" in pick["description"] and "again" in pick["description"]


def test_resolve_takes_the_pick_and_names_the_benchmark_cache(table):
    _write_entry(table, H100)
    duration_s = 30.0
    pick = pick_from_benchmark(H100, table.length_class(duration_s), table)
    resolved = resolve_settings(table, SettingsRequest(quality="auto"), [H100], duration_s, benchmark_pick=pick)
    assert resolved.settings.mode == "fast"
    assert resolved.sources["mode"] == "benchmark cache"
    assert any("benchmark pick" in note for note in resolved.notes)


def test_a_cpu_run_with_fewer_steps_picks_the_modes_own_steps(table):
    cpu = DeviceRecord(backend="cpu", name="Test CPU (2 cores)", total_memory_bytes=24_000_000_000)
    entry = _write_entry(table, cpu, weights="random-tiny", random=True)
    for config in entry["configs"]:
        config["mode_steps"] = config["settings"]["steps"]
        config["settings"]["steps"] = 2  # what the CPU run measured with
    cache.save_entry(BenchmarkEntry.from_dict(entry))
    pick = pick_from_benchmark(cpu, "long", table)
    assert pick["steps"] == table.modes[pick["mode"]].steps

import json
from dataclasses import replace

import pytest
import torch

from latentsync_cli import __version__
from latentsync_cli.benchmark_data import cache
from latentsync_cli.benchmark_data.entries import BenchmarkEntry, CacheKey, CaseResult, StressSummary, WeightsInfo
from latentsync_cli.settings.device_record import DeviceRecord


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path))
    return tmp_path


def _entry(key: CacheKey, date: str = "2026-11-22T04:00:00+00:00", marker: str = "", level: str = "quick"):
    """An entry with no configurations; `marker` goes in its label, to tell entries apart."""
    return BenchmarkEntry(
        key=key,
        date=date,
        level=level,
        device=None,
        tier="",
        weights=WeightsInfo(choice=key.weights, id=key.weights, description="", is_random=True),
        label=marker,
        fidelity_note=None,
        reference="normal",
        input=None,
        configs=[],
    )


H100 = CacheKey("NVIDIA H100 80GB HBM3", 79.6, "550.54", "2.13.0", "0.1.0", "latentsync-1.6")


def test_env_override_sets_the_cache_file(cache_dir):
    assert cache.cache_file() == cache_dir / "benchmarks.json"


def test_make_key_uses_installed_versions_and_rounds_memory():
    gpu = DeviceRecord(
        "cuda", "NVIDIA H100 80GB HBM3", index=0, total_memory_bytes=85_520_809_984, driver_version="550.54"
    )
    key = cache.make_key(gpu, "random")
    assert (key.device, key.driver, key.weights) == ("NVIDIA H100 80GB HBM3", "550.54", "random")
    assert key.torch == torch.__version__
    assert key.latentsync == __version__
    assert key.memory_gb == 85.5
    assert cache.make_key(DeviceRecord("cpu", "Some CPU (2 cores)"), "random-tiny").driver == ""


def test_missing_or_corrupt_file_is_an_empty_cache(cache_dir):
    assert cache.load_entries() == []
    cache.cache_file().write_text("{not json")
    assert cache.load_entries() == []
    cache.cache_file().write_text(json.dumps({"entries": [{"key": {"device": "x"}}, "junk"]}))
    assert cache.load_entries() == []


def test_same_key_replaces_and_other_devices_are_kept(cache_dir):
    other_gpu = replace(H100, device="NVIDIA L4", memory_gb=22.0)
    cache.save_entry(_entry(H100, marker="first"))
    cache.save_entry(_entry(other_gpu, marker="l4"))
    cache.save_entry(_entry(H100, marker="second"))
    markers = sorted(entry.label for entry in cache.load_entries())
    assert markers == ["l4", "second"]


def test_other_weights_on_the_same_software_are_kept_but_stale_entries_go(cache_dir):
    random_weights = replace(H100, weights="random")
    cache.save_entry(_entry(H100, marker="checkpoint"))
    cache.save_entry(_entry(random_weights, marker="random"))
    assert sorted(e.label for e in cache.load_entries()) == ["checkpoint", "random"]

    newer_torch = replace(random_weights, torch="2.14.0")
    assert cache.is_stale(cache.load_entries()[0], newer_torch)
    cache.save_entry(_entry(newer_torch, marker="new torch"))
    assert [e.label for e in cache.load_entries()] == ["new torch"]

    newer_latentsync = replace(newer_torch, latentsync="0.2.0")
    cache.save_entry(_entry(newer_latentsync, marker="new latentsync"))
    assert [e.label for e in cache.load_entries()] == ["new latentsync"]


def test_device_entries_newest_first_and_clear_removes_only_this_device(cache_dir):
    other_gpu = replace(H100, device="NVIDIA L4")
    cache.save_entry(_entry(H100, date="2026-11-20T00:00:00+00:00", marker="old"))
    cache.save_entry(_entry(replace(H100, weights="random"), date="2026-11-22T00:00:00+00:00", marker="new"))
    cache.save_entry(_entry(other_gpu, marker="l4"))
    assert [e.label for e in cache.device_entries(H100)] == ["new", "old"]
    # A different driver is a different device record.
    assert cache.device_entries(replace(H100, driver="560.1")) == []

    assert cache.clear_device(H100) == 2
    assert [e.label for e in cache.load_entries()] == ["l4"]
    assert cache.clear_device(H100) == 0


def test_unwritable_cache_is_a_one_line_output_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(blocker / "sub"))
    with pytest.raises(cache.OutputError, match="LATENTSYNC_CACHE_DIR"):
        cache.save_entry(_entry(H100))


def test_a_stress_run_keeps_the_measured_configurations(cache_dir):
    quick = replace(_entry(H100, marker="quick"), configs=[CaseResult("normal", "normal", {}, {})])
    cache.store_benchmark(quick)
    summary = StressSummary("x", 4.0, 2.0, 9, [0.1] * 9, 0.01, [(0.0, 10), (0.25, 12)], 0.0)
    stress = replace(_entry(H100, marker="stress", level="stress"), configs=[CaseResult("x", "normal", {}, {})])
    cache.store_benchmark(replace(stress, stress=summary))
    (entry,) = cache.load_entries()
    assert [config.name for config in entry.configs] == ["normal"] and entry.stress == summary
    # Without an earlier entry the stress run is stored as it is.
    cache.clear_device(H100)
    cache.store_benchmark(stress)
    assert cache.load_entries()[0].level == "stress"


def test_entries_this_version_does_not_replace_are_written_back_unchanged(cache_dir):
    """Another latentsync version sharing the file may write fields this one does not know."""
    other = {"key": replace(H100, device="NVIDIA L4").to_dict(), "date": "2026-01-01", "future_field": [1, 2]}
    cache.cache_file().write_text(json.dumps({"format": 1, "entries": [other]}))
    cache.save_entry(_entry(H100))
    stored = json.loads(cache.cache_file().read_text())["entries"]
    assert stored[0] == other and stored[1] == _entry(H100).to_dict()

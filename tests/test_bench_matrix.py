import pytest

from latentsync_cli.bench.matrix import FULL_WINDOWS, plan_cases
from latentsync_cli.constants import SCHEDULERS
from latentsync_cli.settings.device_record import Capabilities
from latentsync_cli.settings.run_settings import RunSettings

CPU = Capabilities(fp16=False, bf16=False, tf32=False, cuda_graphs=False, compile=False)
H100 = Capabilities(fp16=True, bf16=True, tf32=True, cuda_graphs=True, compile=True)
BASES = {
    "normal": RunSettings(mode="normal", steps=20, scheduler="ddim", window=16, deepcache=False),
    "turbo": RunSettings(mode="turbo", steps=8, scheduler="euler", window=12, deepcache=True, guidance=1.0),
}


def test_quick_is_every_mode_with_deepcache_off_and_on():
    cases = plan_cases("quick", BASES, CPU)
    assert [case.name for case in cases] == ["normal", "normal+deepcache", "turbo", "turbo+deepcache"]
    settings = {case.name: case.settings(BASES[case.mode]) for case in cases}
    assert settings["normal+deepcache"].deepcache is True and settings["normal+deepcache"].steps == 20
    assert settings["turbo"].deepcache is False and settings["turbo"].scheduler == "euler"
    # A case records only what differs from its mode.
    assert cases[0].changes == {} and cases[3].changes == {}


def test_full_varies_one_setting_at_a_time_and_only_what_the_device_can_run():
    cpu_cases = plan_cases("full", BASES, CPU)
    names = [case.name for case in cpu_cases]
    assert len(names) == len(set(names))
    for case in cpu_cases:
        assert len(case.changes) <= 1
        assert "compile" not in case.changes and "cuda_graphs" not in case.changes
        assert case.changes.get("precision", "fp32") == "fp32"
    normal_schedulers = {case.settings(BASES["normal"]).scheduler for case in cpu_cases if case.mode == "normal"}
    assert normal_schedulers == set(SCHEDULERS)
    assert "normal+g1" in names and "turbo+deepcache+g1.5" in names  # guidance with and without CFG, per mode
    normal_windows = {case.settings(BASES["normal"]).window for case in cpu_cases if case.mode == "normal"}
    assert normal_windows == set(FULL_WINDOWS)

    gpu_names = [case.name for case in plan_cases("full", BASES, H100)]
    for expected in ("normal+compile", "normal+cudagraphs", "normal+bf16", "turbo+deepcache+fp16", "normal+2/call"):
        assert expected in gpu_names
    assert len(gpu_names) > len(names)


def test_stress_is_one_run_of_normal():
    (case,) = plan_cases("stress", BASES, H100)
    assert case.mode == "normal" and case.changes == {}


def test_unknown_level():
    with pytest.raises(ValueError):
        plan_cases("huge", BASES, CPU)

"""Settings resolution: what one run computes with, decided once before any model work.

    limits.py         every setting's allowed range (one Limit per setting)
    device_record.py  what a device probe found, its capabilities and GPU tier
    hardware.py       the probe itself (NVML -> torch.cuda -> MPS -> CPU)
    presets.py        presets.toml (built in) and the user's override -> PresetTable
    request.py        SettingsRequest: what the user asked for, each option declared once
    run_settings.py   RunSettings (what the pipeline reads) and resolve_settings (pure)
    benchmark_pick.py quality `auto`: the fastest good-enough configuration of the benchmark cache
    resolution.py     a request resolved on this machine (preset files, probed devices, benchmark cache)
"""

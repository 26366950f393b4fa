"""The per-device benchmark cache: one JSON file, one entry per device and weights.

An entry is keyed by the device (name, memory, driver), the software that
measured it (torch and latentsync versions) and the weights. Saving an entry
replaces the one with the same key, and any entry for the same device that
was measured by other software (a stale one), whatever its weights. Entries
for other devices sharing the file (a home folder on a cluster) are kept.

The file lives in the platformdirs user cache dir (app "latentsync"), or in
$LATENTSYNC_CACHE_DIR when that is set (tests use it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import torch

from latentsync_cli import __version__
from latentsync_cli.errors import OutputError
from latentsync_cli.device_record import BYTES_PER_GB, DeviceRecord

CACHE_DIR_ENV = "LATENTSYNC_CACHE_DIR"
CACHE_FILE_NAME = "benchmarks.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CacheKey:
    device: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    memory_gb: float  # device memory in GB (10^9 bytes), rounded to 0.1
    driver: str  # GPU driver (or "" on CPU)
    torch: str
    latentsync: str
    weights: str  # ModelBundle.weights_id

    def same_device(self, other: CacheKey) -> bool:
        return (self.device, self.memory_gb, self.driver) == (other.device, other.memory_gb, other.driver)

    def same_software(self, other: CacheKey) -> bool:
        return (self.torch, self.latentsync) == (other.torch, other.latentsync)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CacheKey:
        return cls(
            device=str(values["device"]),
            memory_gb=round(float(values["memory_gb"]), 1),
            driver=str(values.get("driver", "")),
            torch=str(values["torch"]),
            latentsync=str(values["latentsync"]),
            weights=str(values["weights"]),
        )


def make_key(device: DeviceRecord, weights: str) -> CacheKey:
    """The key for a measurement made now on `device`, with the installed torch and latentsync."""
    return CacheKey(
        device=device.name,
        memory_gb=round((device.total_memory_bytes or 0) / BYTES_PER_GB, 1),
        driver=device.driver_version or "",
        torch=torch.__version__,
        latentsync=__version__,
        weights=weights,
    )


def cache_file() -> Path:
    folder = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("latentsync")
    return Path(folder).expanduser() / CACHE_FILE_NAME


def load_entries(path: Path | None = None) -> list[dict]:
    """Every entry in the cache file; a missing or unreadable file is an empty cache."""
    path = path or cache_file()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = content.get("entries") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if _has_valid_key(entry)]


def entry_key(entry: dict) -> CacheKey:
    return CacheKey.from_dict(entry["key"])


def is_stale(entry: dict, current: CacheKey) -> bool:
    """An entry measured by other torch or latentsync versions than the ones installed now."""
    return not entry_key(entry).same_software(current)


def save_entry(entry: dict, path: Path | None = None) -> Path:
    """Add `entry` (with a "key" dict), replacing the same key and this device's stale entries."""
    path = path or cache_file()
    new_key = entry_key(entry)
    kept = []
    for old in load_entries(path):
        old_key = entry_key(old)
        replaced = old_key.same_device(new_key) and (
            old_key.weights == new_key.weights or not old_key.same_software(new_key)
        )
        if not replaced:
            kept.append(old)
    kept.append(entry)
    _write_entries(kept, path)
    return path


def store_benchmark(entry: dict, path: Path | None = None) -> Path:
    """Save a benchmark run. A stress run adds its "stress" section to an existing entry with the
    same key (keeping that entry's measured configurations) instead of replacing it."""
    if entry.get("level") == "stress":
        for old in load_entries(path):
            if entry_key(old) == entry_key(entry) and old.get("level") != "stress":
                return save_entry({**old, "stress": entry.get("stress")}, path)
    return save_entry(entry, path)


def device_entries(current: CacheKey, path: Path | None = None) -> list[dict]:
    """This device's entries (any weights, stale ones included), newest first."""
    entries = [entry for entry in load_entries(path) if entry_key(entry).same_device(current)]
    return sorted(entries, key=lambda entry: str(entry.get("date", "")), reverse=True)


def clear_device(current: CacheKey, path: Path | None = None) -> int:
    """Remove this device's entries; returns how many were removed."""
    path = path or cache_file()
    entries = load_entries(path)
    kept = [entry for entry in entries if not entry_key(entry).same_device(current)]
    removed = len(entries) - len(kept)
    if removed:
        _write_entries(kept, path)
    return removed


def _has_valid_key(entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), dict):
        return False
    try:
        CacheKey.from_dict(entry["key"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _write_entries(entries: list[dict], path: Path) -> None:
    text = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=2, default=str)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise OutputError(
            f"{path}: cannot write the benchmark cache ({error.strerror}); set {CACHE_DIR_ENV} to a writable folder"
        ) from None

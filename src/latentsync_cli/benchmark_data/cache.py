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
from pathlib import Path
from typing import Any

import platformdirs
import torch

from latentsync_cli import __version__
from latentsync_cli.benchmark_data.entries import BenchmarkEntry, CacheKey
from latentsync_cli.errors import OutputError
from latentsync_cli.settings.device_record import BYTES_PER_GB, DeviceRecord

CACHE_DIR_ENV = "LATENTSYNC_CACHE_DIR"
CACHE_FILE_NAME = "benchmarks.json"
CACHE_FORMAT = 1


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


def load_entries(path: Path | None = None) -> list[BenchmarkEntry]:
    """Every entry in the cache file; a missing or unreadable file is an empty cache."""
    return [entry for _, entry in _load_records(path or cache_file())]


def is_stale(entry: BenchmarkEntry, current: CacheKey) -> bool:
    """An entry measured by other torch or latentsync versions than the ones installed now."""
    return not entry.key.same_software(current)


def save_entry(entry: BenchmarkEntry, path: Path | None = None) -> Path:
    """Add `entry`, replacing the same key and this device's stale entries."""
    return _save_record(entry.to_dict(), entry.key, path or cache_file())


def store_benchmark(entry: BenchmarkEntry, path: Path | None = None) -> Path:
    """Save a benchmark run. A stress run adds its "stress" section to an existing entry with the
    same key (keeping that entry's measured configurations) instead of replacing it."""
    path = path or cache_file()
    if entry.level == "stress":
        for record, old in _load_records(path):
            if old.key == entry.key and old.level != "stress":
                stress = None if entry.stress is None else entry.stress.to_dict()
                return _save_record({**record, "stress": stress}, entry.key, path)
    return save_entry(entry, path)


def device_entries(current: CacheKey, path: Path | None = None) -> list[BenchmarkEntry]:
    """This device's entries (any weights, stale ones included), newest first."""
    entries = [entry for entry in load_entries(path) if entry.key.same_device(current)]
    return sorted(entries, key=lambda entry: entry.date, reverse=True)


def clear_device(current: CacheKey, path: Path | None = None) -> int:
    """Remove this device's entries; returns how many were removed."""
    path = path or cache_file()
    records = _load_records(path)
    kept = [record for record, entry in records if not entry.key.same_device(current)]
    removed = len(records) - len(kept)
    if removed:
        _write_records(kept, path)
    return removed


# The file keeps each entry as it was written: entries this version does not replace are written
# back unchanged, whatever fields another latentsync version sharing the file gave them.


def _load_records(path: Path) -> list[tuple[dict[str, Any], BenchmarkEntry]]:
    """(entry as stored, entry as read) for every readable entry of the file."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    records = content.get("entries") if isinstance(content, dict) else None
    if not isinstance(records, list):
        return []
    readable = []
    for record in records:
        try:
            readable.append((record, BenchmarkEntry.from_dict(record)))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # not an entry (hand-edited, or from a broken write): skipped, as if absent
    return readable


def _save_record(record: dict[str, Any], key: CacheKey, path: Path) -> Path:
    kept = []
    for old_record, old in _load_records(path):
        replaced = old.key.same_device(key) and (old.key.weights == key.weights or not old.key.same_software(key))
        if not replaced:
            kept.append(old_record)
    kept.append(record)
    _write_records(kept, path)
    return path


def _write_records(records: list[dict[str, Any]], path: Path) -> None:
    text = json.dumps({"format": CACHE_FORMAT, "entries": records}, indent=2, default=str)
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

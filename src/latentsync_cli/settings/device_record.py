"""A device as probed or recorded, and what it can do. A leaf module: it imports nothing of the package.

`classify(device, tiers)` is pure: from a `DeviceRecord` (probed by
hardware.py, or recorded in a test or a benchmark cache) to the device's tier
and its capabilities. A tier is anything with a name, a backend and a
min_memory_gb (presets.Tier is one), so this module need not know the preset
table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

BACKENDS = ("cuda", "mps", "cpu")
BYTES_PER_GB = 1_000_000_000  # GB as graphics cards are sold, not GiB


@dataclass(frozen=True)
class DeviceRecord:
    """One device as probed; plain values only, so it round-trips through JSON."""

    backend: str  # "cuda" | "mps" | "cpu"
    name: str
    index: int | None = None  # N in cuda:N, as torch numbers the visible GPUs
    total_memory_bytes: int | None = None
    free_memory_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    uuid: str | None = None
    source: str = ""  # which probe found it: "nvml", "torch.cuda", "torch.mps", "os"

    @property
    def torch_device(self) -> str:
        """The device string torch takes: "cuda:0", "mps" or "cpu"."""
        if self.backend == "cuda":
            return f"cuda:{self.index or 0}"
        return self.backend

    @property
    def memory_gb(self) -> float | None:
        if self.total_memory_bytes is None:
            return None
        return self.total_memory_bytes / BYTES_PER_GB

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.compute_capability is not None:
            values["compute_capability"] = list(self.compute_capability)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeviceRecord:
        known = {f.name for f in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if kept.get("compute_capability") is not None:
            kept["compute_capability"] = tuple(kept["compute_capability"])
        return cls(**kept)


@dataclass(frozen=True)
class Capabilities:
    fp16: bool  # fast half precision: tensor cores (compute capability 7.0+) or MPS
    bf16: bool  # compute capability 8.0+
    tf32: bool  # compute capability 8.0+
    cuda_graphs: bool
    compile: bool  # torch.compile's GPU backend (Triton) needs compute capability 7.0+

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(frozen=True)
class Classification:
    tier: str
    capabilities: Capabilities


class TierThreshold(Protocol):
    """What classify reads of a tier: the backend it is for and the memory it needs."""

    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str: ...

    @property
    def min_memory_gb(self) -> float: ...


def capabilities_of(device: DeviceRecord) -> Capabilities:
    if device.backend == "cuda":
        capability = device.compute_capability or (0, 0)
        tensor_cores = capability >= (7, 0)
        ampere = capability >= (8, 0)
        return Capabilities(fp16=tensor_cores, bf16=ampere, tf32=ampere, cuda_graphs=True, compile=tensor_cores)
    if device.backend == "mps":
        return Capabilities(fp16=True, bf16=False, tf32=False, cuda_graphs=False, compile=False)
    return Capabilities(fp16=False, bf16=False, tf32=False, cuda_graphs=False, compile=False)


def auto_precision(capabilities: Capabilities) -> str:
    """bf16 where supported, else fp16 where it is fast, else fp32."""
    if capabilities.bf16:
        return "bf16"
    if capabilities.fp16:
        return "fp16"
    return "fp32"


def choose_tier(device: DeviceRecord, tiers: Sequence[TierThreshold]) -> str:
    """The tier of the device's backend with the largest min_memory_gb its memory reaches."""
    candidates = sorted((t for t in tiers if t.backend == device.backend), key=lambda t: t.min_memory_gb)
    if not candidates:
        raise ValueError(f"no tier for backend {device.backend!r}")
    memory_gb = device.memory_gb or 0.0
    chosen = candidates[0]
    for tier in candidates:
        if memory_gb >= tier.min_memory_gb:
            chosen = tier
    return chosen.name


def classify(device: DeviceRecord, tiers: Sequence[TierThreshold]) -> Classification:
    return Classification(tier=choose_tier(device, tiers), capabilities=capabilities_of(device))

"""Which devices this machine has, and what each one can do.

`probe_devices()` asks NVML (through pynvml) first, then torch.cuda, then
Apple MPS, and always lists the CPU last. It never raises: a backend that
fails is noted in `HardwareReport.problems` and the next one is tried.

`classify(device, tiers)` is pure: from a `DeviceRecord` (probed, or recorded
in a test or a benchmark cache) to the device's tier and its capabilities.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentsync_cli.presets import Tier

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
class HardwareReport:
    devices: tuple[DeviceRecord, ...]  # CUDA GPUs (or the MPS device) first, the CPU last
    problems: tuple[str, ...] = ()  # why a backend was skipped, e.g. "NVML: library not found"

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices], "problems": list(self.problems)}


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


# ---------------------------------------------------------------------------
# Pure classification


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


def choose_tier(device: DeviceRecord, tiers: Sequence[Tier]) -> str:
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


def classify(device: DeviceRecord, tiers: Sequence[Tier]) -> Classification:
    return Classification(tier=choose_tier(device, tiers), capabilities=capabilities_of(device))


# ---------------------------------------------------------------------------
# Probing (never raises)


def probe_devices(nvml: Any = None, environ: Mapping[str, str] | None = None) -> HardwareReport:
    """Find the devices: NVML -> torch.cuda -> MPS, then the CPU.

    `nvml` is the pynvml module (imported here when None); `environ` supplies
    CUDA_VISIBLE_DEVICES (os.environ when None).
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    if nvml is None:
        nvml = _import_nvml(problems)
    gpus = _probe_nvml(nvml, environ.get("CUDA_VISIBLE_DEVICES"), problems) if nvml is not None else []
    if not gpus:
        gpus = _probe_torch_cuda(problems)
    if not gpus:
        gpus = _probe_mps(problems)
    return HardwareReport(devices=tuple(gpus) + (_cpu_record(),), problems=tuple(problems))


def _import_nvml(problems: list[str]) -> Any:
    try:
        with warnings.catch_warnings():
            # The `pynvml` distribution warns that it is deprecated; its module still works.
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except Exception as error:  # ImportError, or a broken install
        problems.append(f"NVML: pynvml cannot be imported ({error})")
        return None
    return pynvml


def _probe_nvml(nvml: Any, cuda_visible_devices: str | None, problems: list[str]) -> list[DeviceRecord]:
    try:
        nvml.nvmlInit()
    except Exception as error:
        problems.append(f"NVML: {_describe(error)}")
        return []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda_version = _cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion())
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_text(nvml.nvmlDeviceGetUUID(handle)) for handle in handles]
        records = []
        for torch_index, nvml_index in enumerate(visible_nvml_indices(cuda_visible_devices, uuids)):
            handle = handles[nvml_index]
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            records.append(
                DeviceRecord(
                    backend="cuda",
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    index=torch_index,
                    total_memory_bytes=int(memory.total),
                    free_memory_bytes=int(memory.free),
                    compute_capability=(int(major), int(minor)),
                    driver_version=driver,
                    cuda_version=cuda_version,
                    uuid=uuids[nvml_index],
                    source="nvml",
                )
            )
        return records
    except Exception as error:
        problems.append(f"NVML: {_describe(error)}")
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass  # shutting down is best effort; the records are already read


def visible_nvml_indices(cuda_visible_devices: str | None, uuids: Sequence[str]) -> list[int]:
    """NVML indices in the order torch numbers them under CUDA_VISIBLE_DEVICES.

    Like CUDA, parsing stops at the first entry that is not a known index or
    GPU UUID (so "" hides every GPU). Integer entries are taken as NVML
    (PCI bus) order, which matches CUDA unless CUDA_DEVICE_ORDER is left at
    FASTEST_FIRST on a machine with mixed GPUs.
    """
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        if entry.isdigit() and int(entry) < len(uuids):
            index = int(entry)
        elif entry.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        else:
            break
        if index in chosen:
            break
        chosen.append(index)
    return chosen


def _probe_torch_cuda(problems: list[str]) -> list[DeviceRecord]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        records = []
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            free_bytes, _ = torch.cuda.mem_get_info(index)
            records.append(
                DeviceRecord(
                    backend="cuda",
                    name=properties.name,
                    index=index,
                    total_memory_bytes=int(properties.total_memory),
                    free_memory_bytes=int(free_bytes),
                    compute_capability=(properties.major, properties.minor),
                    cuda_version=torch.version.cuda,
                    source="torch.cuda",
                )
            )
        return records
    except Exception as error:
        problems.append(f"torch.cuda: {_describe(error)}")
        return []


def _probe_mps(problems: list[str]) -> list[DeviceRecord]:
    try:
        import torch

        if not torch.backends.mps.is_available():
            return []
        total = None
        if hasattr(torch.mps, "recommended_max_memory"):
            total = int(torch.mps.recommended_max_memory())
        return [DeviceRecord(backend="mps", name="Apple GPU (MPS)", total_memory_bytes=total, source="torch.mps")]
    except Exception as error:
        problems.append(f"MPS: {_describe(error)}")
        return []


def _cpu_record() -> DeviceRecord:
    cores = os.cpu_count() or 1
    page_bytes = _sysconf("SC_PAGE_SIZE")
    total = free = None
    if page_bytes is not None:
        total_pages = _sysconf("SC_PHYS_PAGES")
        free_pages = _sysconf("SC_AVPHYS_PAGES")
        total = page_bytes * total_pages if total_pages is not None else None
        free = page_bytes * free_pages if free_pages is not None else None
    return DeviceRecord(
        backend="cpu",
        name=f"{_cpu_model()} ({cores} cores)",
        total_memory_bytes=total,
        free_memory_bytes=free,
        source="os",
    )


def _sysconf(name: str) -> int | None:
    try:
        return int(os.sysconf(name))
    except (AttributeError, ValueError, OSError):
        return None  # not available on this OS (Windows; macOS has no free-page count)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine() or "CPU"


def _text(value: Any) -> str:
    """NVML returns bytes in older pynvml versions and str in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version_text(version: int) -> str:
    """NVML's 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _describe(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__

"""Which devices this machine has.

`probe_devices()` asks NVML (through pynvml) first, then torch.cuda, then
Apple MPS, and always lists the CPU last. It never raises: a backend that
fails is noted in `HardwareReport.problems` and the next one is tried.

What a device can do, and its tier, are read from its `DeviceRecord` in
device_record.py (pure, no probing).
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from latentsync_cli.settings.device_record import DeviceRecord


@dataclass(frozen=True)
class HardwareReport:
    devices: tuple[DeviceRecord, ...]  # CUDA GPUs (or the MPS device) first, the CPU last
    problems: tuple[str, ...] = ()  # why a backend was skipped, e.g. "NVML: library not found"

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices], "problems": list(self.problems)}


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

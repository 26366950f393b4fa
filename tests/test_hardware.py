"""Device probing (never crashes) and the pure tier classifier on recorded devices."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from latentsync_cli.settings.device_record import DeviceRecord, auto_precision, capabilities_of, classify
from latentsync_cli.settings.hardware import probe_devices, visible_nvml_indices
from latentsync_cli.settings.presets import load_presets

MIB = 1024 * 1024


def cuda(name: str, mebibytes: int, capability: tuple[int, int]) -> DeviceRecord:
    """A CUDA device as NVML reports it (total memory in MiB, as nvidia-smi shows it)."""
    return DeviceRecord(
        backend="cuda", name=name, index=0, total_memory_bytes=mebibytes * MIB, compute_capability=capability
    )


CPU = DeviceRecord(backend="cpu", name="CPU", total_memory_bytes=32 * 10**9)
MPS = DeviceRecord(backend="mps", name="Apple GPU (MPS)", total_memory_bytes=16 * 10**9)

# label -> (record, tier, its default level, fast precisions, precision "auto")
# fmt: off
RECORDED = {
    "T4":            (cuda("Tesla T4", 15360, (7, 5)),         "medium_gpu", "balanced",     "fp16",           "fp16"),
    "RTX 3060 12GB": (cuda("GeForce RTX 3060", 12288, (8, 6)), "medium_gpu", "balanced",     "fp16 bf16 tf32", "bf16"),
    "RTX 4090":      (cuda("GeForce RTX 4090", 24564, (8, 9)), "large_gpu",  "aggressive",   "fp16 bf16 tf32", "bf16"),
    "A100 40GB":     (cuda("A100-SXM4-40GB", 40960, (8, 0)),   "large_gpu",  "aggressive",   "fp16 bf16 tf32", "bf16"),
    "A100 80GB":     (cuda("A100-SXM4-80GB", 81920, (8, 0)),   "large_gpu",  "aggressive",   "fp16 bf16 tf32", "bf16"),
    "H100 80GB":     (cuda("H100 80GB HBM3", 81559, (9, 0)),   "large_gpu",  "aggressive",   "fp16 bf16 tf32", "bf16"),
    "GTX 1070":      (cuda("GeForce GTX 1070", 8192, (6, 1)),  "small_gpu",  "conservative", "",               "fp32"),
    "CPU":           (CPU,                                     "cpu",        "conservative", "",               "fp32"),
    "MPS":           (MPS,                                     "mps",        "conservative", "fp16",           "fp16"),
}
# fmt: on


@pytest.fixture(scope="module")
def tiers():
    return list(load_presets(environ={}).tiers.values())


@pytest.mark.parametrize("name", list(RECORDED))
def test_classify_recorded_devices(name, tiers):
    record, tier, level, fast, precision = RECORDED[name]
    found = classify(record, tiers)
    assert found.tier == tier
    assert {t.name: t.level for t in tiers}[found.tier] == level
    caps = found.capabilities
    assert {p for p in ("fp16", "bf16", "tf32") if getattr(caps, p)} == set(fast.split())
    assert auto_precision(caps) == precision


@pytest.mark.parametrize(
    "total_bytes, tier",
    [
        (11_999_000_000, "small_gpu"),
        (12 * 10**9, "medium_gpu"),
        (23_999_000_000, "medium_gpu"),
        (24 * 10**9, "large_gpu"),
    ],
)
def test_tier_boundaries_are_in_gigabytes(total_bytes, tier, tiers):
    record = DeviceRecord(backend="cuda", name="x", total_memory_bytes=total_bytes, compute_capability=(8, 6))
    assert classify(record, tiers).tier == tier


def test_unknown_memory_gets_the_smallest_cuda_tier(tiers):
    assert classify(DeviceRecord(backend="cuda", name="x", compute_capability=(9, 0)), tiers).tier == "small_gpu"


def test_only_cuda_gets_cuda_graphs_and_compile():
    assert capabilities_of(RECORDED["H100 80GB"][0]).cuda_graphs
    assert capabilities_of(RECORDED["H100 80GB"][0]).compile
    assert not capabilities_of(RECORDED["GTX 1070"][0]).compile  # Triton needs compute capability 7.0
    for name in ("CPU", "MPS"):
        caps = capabilities_of(RECORDED[name][0])
        assert not caps.cuda_graphs and not caps.compile


def test_device_record_round_trips_through_json():
    record = RECORDED["H100 80GB"][0]
    again = DeviceRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert again.torch_device == "cuda:0"


def test_probe_on_this_machine_lists_the_cpu_last():
    report = probe_devices()
    assert report.devices[-1].backend == "cpu"
    assert report.devices[-1].total_memory_bytes is None or report.devices[-1].total_memory_bytes > 0
    json.dumps(report.to_dict())  # plain values only


class FakeNvml:
    """Recorded answers of NVML on a two-GPU machine (T4 and A100)."""

    def __init__(self, fail_at: str | None = None):
        self.fail_at = fail_at
        self.gpus = [
            ("Tesla T4", 15360 * MIB, 15000 * MIB, (7, 5), "GPU-aaaa-1111"),
            ("NVIDIA A100-SXM4-80GB", 81920 * MIB, 80000 * MIB, (8, 0), "GPU-bbbb-2222"),
        ]
        self.shut_down = False

    def _maybe_fail(self, step: str) -> None:
        if self.fail_at == step:
            raise RuntimeError(f"NVML error in {step}")

    def nvmlInit(self):
        self._maybe_fail("init")

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"  # older pynvml versions return bytes

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        self._maybe_fail("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUUID(self, handle):
        return self.gpus[handle][4]

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._maybe_fail("memory")
        return SimpleNamespace(total=self.gpus[handle][1], free=self.gpus[handle][2], used=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.gpus[handle][3]


def test_probe_reads_every_gpu_from_nvml():
    nvml = FakeNvml()
    report = probe_devices(nvml=nvml, environ={})
    gpus = [d for d in report.devices if d.backend == "cuda"]
    assert [g.name for g in gpus] == ["Tesla T4", "NVIDIA A100-SXM4-80GB"]
    assert [g.torch_device for g in gpus] == ["cuda:0", "cuda:1"]
    assert gpus[1].compute_capability == (8, 0)
    assert gpus[1].total_memory_bytes == 81920 * MIB and gpus[1].free_memory_bytes == 80000 * MIB
    assert gpus[0].driver_version == "550.54.15" and gpus[0].cuda_version == "12.4"
    assert report.devices[-1].backend == "cpu"
    assert nvml.shut_down


def test_probe_follows_cuda_visible_devices():
    report = probe_devices(nvml=FakeNvml(), environ={"CUDA_VISIBLE_DEVICES": "GPU-bbbb"})
    gpus = [d for d in report.devices if d.backend == "cuda"]
    assert [(g.name, g.index) for g in gpus] == [("NVIDIA A100-SXM4-80GB", 0)]


@pytest.mark.parametrize("step", ["init", "count", "memory"])
def test_probe_falls_through_on_any_nvml_error(step):
    report = probe_devices(nvml=FakeNvml(fail_at=step), environ={})
    assert report.devices[-1].backend == "cpu"
    assert any(p.startswith("NVML:") and step in p for p in report.problems)
    assert all(d.source != "nvml" for d in report.devices)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, [0, 1, 2]),
        ("", []),
        ("2", [2]),
        ("2,0", [2, 0]),
        ("0,7,1", [0]),  # like CUDA: stop at the first invalid entry
        ("1,1", [1]),
        ("GPU-cc", [2]),
        ("MIG-xyz", []),
    ],
)
def test_visible_nvml_indices(value, expected):
    assert visible_nvml_indices(value, ["GPU-aa1", "GPU-bb2", "GPU-cc3"]) == expected

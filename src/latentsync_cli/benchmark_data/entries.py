"""What a benchmark run measured: one `BenchmarkEntry` per run, one `CaseResult` per configuration.

The runner builds these, the cache stores them as JSON, the report and the
`auto` pick read them. `to_dict()` gives the JSON layout of the cache file and
of `latentsync benchmark --json`; `from_dict()` reads it back, filling what an
older file lacks with the defaults below, so old cache files still load.

A failed case (out of memory) has `measured` None: it ran nothing to time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from latentsync_cli.settings.device_record import DeviceRecord
from latentsync_cli.unet_steps import UNetSteps
from latentsync_cli.weights.info import WeightsInfo


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

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CacheKey:
        return cls(
            device=str(values["device"]),
            memory_gb=round(float(values["memory_gb"]), 1),
            driver=str(values.get("driver", "")),
            torch=str(values["torch"]),
            latentsync=str(values["latentsync"]),
            weights=str(values["weights"]),
        )


@dataclass(frozen=True)
class Measurements:
    """Speed, stage split, UNet passes, memory and optimizations of one successful case."""

    output_s: float
    frames: int
    windows: int
    wall_s: float
    seconds_per_output_second: float
    realtime_factor: float
    stages: dict[str, float]  # the report's groups: landmarks, vae, denoise, restore, encode, other
    stage_seconds: dict[str, float]  # the pipeline's own stage names
    bottleneck: str
    unet_steps: UNetSteps
    peak_memory_gb: float | None  # GPU only
    peak_rss_gb: float  # the whole process so far, not only this case
    optimizations: list[str] = field(default_factory=list)
    memory_downgrades: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["unet_steps"] = self.unet_steps.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Measurements:
        steps = values.get("unet_steps") or {}
        return cls(
            output_s=values.get("output_s", 0.0),
            frames=values.get("frames", 0),
            windows=values.get("windows", 0),
            wall_s=values.get("wall_s", 0.0),
            seconds_per_output_second=values["seconds_per_output_second"],
            realtime_factor=values.get("realtime_factor", 0.0),
            stages=dict(values.get("stages") or {}),
            stage_seconds=dict(values.get("stage_seconds") or {}),
            bottleneck=values.get("bottleneck", ""),
            unet_steps=UNetSteps.from_dict(steps),
            peak_memory_gb=values.get("peak_memory_gb"),
            peak_rss_gb=values.get("peak_rss_gb", 0.0),
            optimizations=list(values.get("optimizations") or []),
            memory_downgrades=list(values.get("memory_downgrades") or []),
        )


@dataclass(frozen=True)
class StressSummary:
    """Throughput drift and memory growth over one long run."""

    name: str
    output_s: float
    wall_s: float
    unet_calls: int
    denoise_s_per_call: list[float]
    throughput_drift: float | None  # last quarter vs first, + is slower; None under 4 calls
    memory_samples: list[tuple[float, int]]  # (seconds since start, bytes)
    memory_growth_gb: float | None

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["memory_samples"] = [list(sample) for sample in self.memory_samples]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StressSummary:
        return cls(
            name=values.get("name", ""),
            output_s=values.get("output_s", 0.0),
            wall_s=values.get("wall_s", 0.0),
            unet_calls=values.get("unet_calls", 0),
            denoise_s_per_call=list(values.get("denoise_s_per_call") or []),
            throughput_drift=values.get("throughput_drift"),
            memory_samples=[tuple(sample) for sample in values.get("memory_samples") or []],
            memory_growth_gb=values.get("memory_growth_gb"),
        )


@dataclass(frozen=True)
class CaseResult:
    """One configuration of the matrix, as run."""

    name: str  # e.g. "turbo+deepcache"
    mode: str
    changes: dict[str, Any]  # RunSettings fields changed from the mode's own settings
    settings: dict[str, Any]  # RunSettings.to_dict() as run (a CPU run uses fewer steps)
    fidelity: dict[str, Any] | None = None  # metric name -> value against the reference; None: random weights
    label: str = ""
    error: str | None = None  # why the case failed ("out of memory: ..."), else None
    measured: Measurements | None = None  # None when the case failed
    stress: StressSummary | None = None  # stress level only
    first_run_s: float | None = None  # the unmeasured GPU warm-up run
    fidelity_error: str | None = None  # why fidelity could not be measured
    mode_steps: int | None = None  # the mode's own steps, which a pick sets

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout: the measurements inline; stress and fidelity_error only when there are some."""
        values: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode,
            "changes": dict(self.changes),
            "settings": dict(self.settings),
            "fidelity": self.fidelity,
            "label": self.label,
            "error": self.error,
        }
        if self.measured is not None:
            values.update(self.measured.to_dict())
        if self.stress is not None:
            values["stress"] = self.stress.to_dict()
        values["first_run_s"] = self.first_run_s
        if self.fidelity_error is not None:
            values["fidelity_error"] = self.fidelity_error
        values["mode_steps"] = self.mode_steps
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CaseResult:
        measured = None
        if not values.get("error") and values.get("seconds_per_output_second") is not None:
            measured = Measurements.from_dict(values)
        stress = values.get("stress")
        return cls(
            name=str(values["name"]),
            mode=str(values.get("mode", "")),
            changes=dict(values.get("changes") or {}),
            settings=dict(values.get("settings") or {}),
            fidelity=values.get("fidelity"),
            label=values.get("label", ""),
            error=values.get("error"),
            measured=measured,
            stress=StressSummary.from_dict(stress) if stress else None,
            first_run_s=values.get("first_run_s"),
            fidelity_error=values.get("fidelity_error"),
            mode_steps=values.get("mode_steps"),
        )


@dataclass(frozen=True)
class BenchmarkInput:
    """The clip the cases ran on: made here ("synthetic") or given by the user."""

    source: str  # "synthetic" | "user"
    duration_s: float | None
    frames: int | None
    seed: int
    video: str | None = None  # user clips only
    audio: str | None = None

    def describe(self) -> str:
        if self.source == "user":
            return f"{self.video} with {self.audio or 'its own speech'}"
        return f"synthetic face clip and speech, {self.duration_s:g} s"

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"source": self.source}
        if self.source == "user":
            values.update(video=self.video, audio=self.audio)
        values.update(duration_s=self.duration_s, frames=self.frames, seed=self.seed)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BenchmarkInput:
        known = {f.name for f in fields(cls)}
        defaults = {"source": "synthetic", "duration_s": None, "frames": None, "seed": 0}
        return cls(**{**defaults, **{key: value for key, value in values.items() if key in known}})


@dataclass(frozen=True)
class EncoderParity:
    """Which encoder `auto` takes here and, where both ran, NVENC's PSNR against libx264."""

    chosen: str  # what `--encoder auto` takes on this machine
    reason: str  # why (the NVENC probe's answer)
    frames: int = 0  # frames encoded by each encoder (0: nothing was compared)
    psnr_db: float | None = None  # h264_nvenc's frames against libx264's; None where NVENC did not run
    fps: dict[str, float] = field(default_factory=dict)  # encoder -> frames per second, writing the clip

    def describe(self) -> str:
        if self.psnr_db is None:
            return f"encoder: {self.chosen} ({self.reason}); NVENC vs libx264 not compared"
        speeds = ", ".join(f"{name} {fps:.0f} fps" for name, fps in self.fps.items())
        return f"encoder: {self.chosen}; NVENC vs libx264 PSNR {self.psnr_db:.2f} dB over {self.frames} frames ({speeds})"

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "reason": self.reason, "frames": self.frames, "psnr_db": self.psnr_db,
                "fps": dict(self.fps)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EncoderParity:
        return cls(
            chosen=str(values.get("chosen", "")),
            reason=str(values.get("reason", "")),
            frames=int(values.get("frames", 0)),
            psnr_db=values.get("psnr_db"),
            fps=dict(values.get("fps") or {}),
        )


@dataclass(frozen=True)
class BenchmarkEntry:
    """One benchmark run on one device: what the cache stores and the report reads."""

    key: CacheKey
    date: str  # ISO 8601, UTC
    level: str  # quick | full | stress
    device: DeviceRecord | None
    tier: str
    weights: WeightsInfo
    label: str  # "CPU, tiny model: not representative" on a CPU, else ""
    fidelity_note: str | None  # why fidelity is missing (random weights), else None
    reference: str  # the name of the reference case
    input: BenchmarkInput | None
    configs: list[CaseResult]
    stress: StressSummary | None = None
    encoders: EncoderParity | None = None  # None: an entry from before the encoder comparison

    @property
    def has_fidelity(self) -> bool:
        """Real weights: the cases' outputs were compared with the reference's."""
        return not self.weights.is_random

    def to_dict(self) -> dict[str, Any]:
        device = None if self.device is None else {**self.device.to_dict(), "tier": self.tier}
        return {
            "key": self.key.to_dict(),
            "date": self.date,
            "level": self.level,
            "device": device,
            "weights": self.weights.to_dict(),
            "label": self.label,
            "fidelity_note": self.fidelity_note,
            "reference": self.reference,
            "input": None if self.input is None else self.input.to_dict(),
            "configs": [config.to_dict() for config in self.configs],
            "stress": None if self.stress is None else self.stress.to_dict(),
            "encoders": None if self.encoders is None else self.encoders.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BenchmarkEntry:
        """An entry as the cache file holds it; KeyError, TypeError or ValueError when it is malformed."""
        device = values.get("device")
        weights = values.get("weights") or {}
        source = values.get("input")
        stress = values.get("stress")
        encoders = values.get("encoders")
        return cls(
            key=CacheKey.from_dict(values["key"]),
            date=str(values.get("date", "")),
            level=str(values.get("level", "")),
            device=DeviceRecord.from_dict(device) if device else None,
            tier=str(device.get("tier", "")) if device else "",
            weights=WeightsInfo.from_dict(weights),
            label=str(values.get("label") or ""),
            fidelity_note=values.get("fidelity_note"),
            reference=str(values.get("reference") or ""),
            input=BenchmarkInput.from_dict(source) if source else None,
            configs=[CaseResult.from_dict(config) for config in values.get("configs") or []],
            stress=StressSummary.from_dict(stress) if stress else None,
            encoders=EncoderParity.from_dict(encoders) if encoders else None,
        )

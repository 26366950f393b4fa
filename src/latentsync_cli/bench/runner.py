"""Run the benchmark: every case of the matrix through the real pipeline, timed, then compared.

The inputs are made here (a real face photo moving over frames and a
speech-like signal, in a temporary folder removed afterwards) unless the user
gives a clip. Every case is a `sync` job run through the job API, exactly as
`latentsync sync` runs it (prepare -> claim_output -> execute: the job's own
encoder choice, its speech decoded once, its output claimed), with the one
model cache of jobs/models.py, which loads the models once per precision and
hands each case its models in a known state. The first case is the reference
(`normal` at this device's settings); with trained weights every other case's
output is compared with its output in the mouth region.

The result is one `BenchmarkEntry` (bench/results.py), which the cache stores
and the report reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentsync_cli.bench import metrics
from latentsync_cli.bench.encoders import measure_encoder_parity
from latentsync_cli.bench.fidelity import ReferenceOutput
from latentsync_cli.bench.matrix import BenchCase, plan_cases
from latentsync_cli.benchmark_data import cache
from latentsync_cli.benchmark_data.entries import (
    BenchmarkEntry,
    BenchmarkInput,
    CaseResult,
    EncoderParity,
    Measurements,
    StressSummary,
)
from latentsync_cli.constants import DEFAULT_SEED, FPS
from latentsync_cli.errors import DeviceMemoryError, InputError, UsageError, WeightsError
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.run import check_face, claim_output, execute, prepare
from latentsync_cli.media.audio import audio_duration_s
from latentsync_cli.media.encode import choose_encoder
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.settings.device_record import DeviceRecord, capabilities_of
from latentsync_cli.settings.hardware import HardwareReport
from latentsync_cli.settings.presets import PresetTable
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings, resolve_settings
from latentsync_cli.weights.files import locate_weights
from latentsync_cli.weights.info import WeightsInfo

if TYPE_CHECKING:
    from latentsync_cli.pipeline import SyncResult

CPU_LABEL = "CPU, tiny model: not representative"
RANDOM_WEIGHTS_NOTE = (
    "random weights: the output is not a lip-sync, so its similarity to `normal` says nothing about quality "
    "(timings are exact: compute does not depend on weight values); install the real weights with "
    "`latentsync models download` to measure fidelity"
)
DEFAULT_DURATION_S = {"gpu": 10.0, "cpu": 0.5}  # CPU: one 16-frame window per mode
STRESS_DURATION_S = {"gpu": 120.0, "cpu": 4.0}
# On a CPU even the tiny model is slow: the steps are scaled down (keeping the modes' order).
CPU_STEP_SCALE = 0.15
CPU_MIN_STEPS = 2
MEMORY_SAMPLE_INTERVAL_S = 0.25
WARM_UP_DURATION_S = 0.3

# The stage split the report shows, from the pipeline's stage names.
STAGE_GROUPS = {
    "landmarks": ("landmarks", "align"),
    "vae": ("VAE encode", "VAE decode"),
    "denoise": ("denoise",),
    "restore": ("restore",),
    "encode": ("encode", "mux"),
    "other": ("decode", "audio features"),
}


@dataclass(frozen=True)
class BenchmarkRequest:
    level: str = "quick"
    duration_s: float | None = None  # None: DEFAULT_DURATION_S (STRESS_DURATION_S for stress)
    weights: str = "auto"  # auto | checkpoint | random | random-tiny
    checkpoint_dir: Path | None = None
    video: Path | None = None
    audio: Path | None = None
    seed: int = DEFAULT_SEED
    modes: tuple[str, ...] = ()  # () = every mode of the table; the reference mode is always measured


def run_benchmark(
    request: BenchmarkRequest,
    table: PresetTable,
    device: DeviceRecord,
    progress: Callable[[str], None] = lambda text: None,
) -> BenchmarkEntry:
    """Measure every case of `request.level` on `device` and return the benchmark entry."""
    check_request(request, table)
    on_cpu = device.backend == "cpu"
    weights = choose_weights(request.weights, device, request.checkpoint_dir)
    bases = mode_settings(table, device, request.seed, request.modes)
    mode_steps = {mode: settings.steps for mode, settings in bases.items()}
    if on_cpu:
        bases = {mode: replace(settings, steps=cpu_steps(settings.steps)) for mode, settings in bases.items()}
    cases = plan_cases(request.level, bases, capabilities_of(device))
    cases = order_by_precision(cases, bases)
    reference = cases[0]
    duration_s = request.duration_s or _default_duration(request.level, on_cpu)

    workspace = Path(tempfile.mkdtemp(prefix="latentsync-benchmark-"))
    runner = CaseRunner(table, device, weights, request.checkpoint_dir, request.seed, on_cpu, workspace)
    try:
        video, audio, source = prepare_inputs(workspace, request, duration_s)
        progress(f"input: {source.describe()}")
        if on_cpu:
            progress("warming up")
            warm_up(cases[0], bases, runner)
        real = real_frames(request, runner)
        results = measure_cases(cases, bases, runner, video, audio, request.level, progress, real)
        encoders = compare_encoders(video, workspace, device, progress)
        # The steps the mode really runs (a pick sets these), whatever a CPU run measured with.
        results = [replace(result, mode_steps=mode_steps[result.mode]) for result in results]
        frames = next((result.measured.frames for result in results if result.measured is not None), source.frames)
        weights_info = runner.weights_info or WeightsInfo(weights, weights, "", weights != "checkpoint")
    finally:
        runner.models.release()
        shutil.rmtree(workspace, ignore_errors=True)

    return BenchmarkEntry(
        key=cache.make_key(device, weights_info.id),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        level=request.level,
        device=device,
        tier=bases[reference.mode].tier,
        weights=weights_info,
        label=CPU_LABEL if on_cpu else "",
        fidelity_note=RANDOM_WEIGHTS_NOTE if weights_info.is_random else None,
        reference=reference.name,
        input=replace(source, frames=frames),
        configs=results,
        stress=results[0].stress if request.level == "stress" else None,
        encoders=encoders,
    )


def measure_cases(
    cases: list[BenchCase],
    bases: dict[str, RunSettings],
    runner: CaseRunner,
    video: Path,
    audio: Path,
    level: str,
    progress: Callable[[str], None],
    real: ReferenceOutput | None = None,
) -> list[CaseResult]:
    """Run every case; on a GPU each one runs twice and the second run is measured.

    The first case is the reference: with trained weights, every output is
    compared with its output, and with the input's real frames (`real`) when the
    input speaks its own speech.
    """
    warm_each = not runner.on_cpu  # first GPU runs pay for kernel selection and compilation
    results = []
    reference: ReferenceOutput | None = None
    for number, case in enumerate(cases, start=1):
        progress(f"[{number}/{len(cases)}] {case.name}")
        output = runner.workspace / f"case-{number:03d}.mp4"
        first_run_s = None
        if warm_each:
            first = runner.run(case, bases[case.mode], video, audio, output)
            first_run_s = first.measured.wall_s if first.measured is not None else None
            output.unlink(missing_ok=True)
        watcher = MemoryWatcher(torch.device(runner.device.torch_device)) if level == "stress" else None
        result = runner.run(case, bases[case.mode], video, audio, output, watcher)
        fidelity = fidelity_error = None
        if runner.weights_info is not None and not runner.weights_info.is_random and result.error is None:
            try:
                if number == 1:
                    reference = ReferenceOutput(output)
                if reference is not None:
                    fidelity = reference.compare(output)
                if real is not None:
                    fidelity = {**(fidelity or {}), "real_frames": real.compare(output, match_length=True)}
            except ValueError as error:  # no face in the reference output, or a frame count mismatch
                fidelity_error = str(error)
        label = CPU_LABEL if runner.on_cpu else ""
        result = replace(result, first_run_s=first_run_s, fidelity=fidelity, fidelity_error=fidelity_error, label=label)
        output.unlink(missing_ok=True)
        results.append(result)
        if result.error:
            progress(f"    failed: {result.error}")
        else:
            progress(f"    {result.measured.seconds_per_output_second:.2f} s per output second")
    return results


def compare_encoders(
    video: Path, workspace: Path, device: DeviceRecord, progress: Callable[[str], None]
) -> EncoderParity:
    """NVENC's PSNR against libx264 on the benchmark's clip, where `--encoder auto` takes NVENC here."""
    parity = measure_encoder_parity(video, workspace, choose_encoder("auto", device=device.torch_device))
    progress(parity.describe())
    return parity


def warm_up(case: BenchCase, bases: dict[str, RunSettings], runner: CaseRunner) -> None:
    """One short unmeasured run, so that one-time start-up costs do not land on the first case."""
    folder = runner.workspace / "warm-up"
    folder.mkdir()
    video = make_face_clip(folder / "face.mp4", WARM_UP_DURATION_S, preset="ultrafast")
    audio = make_speech(folder / "speech.wav", WARM_UP_DURATION_S)
    runner.run(case, bases[case.mode], video, audio, folder / "out.mp4")
    shutil.rmtree(folder, ignore_errors=True)


# --- choices ---------------------------------------------------------------------------------


def check_request(request: BenchmarkRequest, table: PresetTable) -> None:
    """UsageError for flags that do not go together, before any work."""
    if request.audio is not None and request.video is None:
        raise UsageError("--audio goes with --video: give a video (alone: with its own speech), or neither")
    for flag, path in (("--video", request.video), ("--audio", request.audio)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag} {path}: file not found; check the path")
    unknown = [mode for mode in request.modes if mode not in table.modes]
    if unknown:
        raise UsageError(f"--modes {unknown[0]}: unknown mode; allowed: {', '.join(table.modes)}")


def choose_weights(requested: str, device: DeviceRecord, checkpoint_dir: Path | None) -> str:
    """auto: the real checkpoint when it is here, else random (full size); always random-tiny on a CPU."""
    on_cpu = device.backend == "cpu"
    if requested == "auto":
        if on_cpu:
            return "random-tiny"
        try:
            locate_weights(checkpoint_dir, allow_download=False)
        except WeightsError:
            return "random"
        return "checkpoint"
    if on_cpu and requested in ("random", "checkpoint"):
        raise UsageError(
            f"--weights {requested}: the full-size model takes hours per configuration on a CPU; "
            "use --weights random-tiny (the default here)"
        )
    if requested not in ("checkpoint", "random", "random-tiny", "proxy"):
        raise UsageError(f"--weights {requested}: allowed: auto, checkpoint, random, random-tiny, proxy")
    return requested


def mode_settings(
    table: PresetTable, device: DeviceRecord, seed: int, modes: tuple[str, ...] = ()
) -> dict[str, RunSettings]:
    """Each mode's settings on this device at quality `balanced`, the reference mode first."""
    reference = table.auto.reference_mode
    wanted = [reference] + [mode for mode in modes if mode != reference] if modes else list(table.modes)
    bases = {}
    for mode in wanted:
        request = SettingsRequest(mode=mode, quality="balanced", seed=seed)
        bases[mode] = resolve_settings(table, request, [device]).settings
    # The reference mode first: every other case is compared with its output.
    return {reference: bases.pop(reference), **bases} if reference in bases else bases


def cpu_steps(steps: int) -> int:
    """Fewer steps for a CPU run, in the same order between modes."""
    return max(CPU_MIN_STEPS, round(steps * CPU_STEP_SCALE))


def order_by_precision(cases: list[BenchCase], bases: dict[str, RunSettings]) -> list[BenchCase]:
    """The reference first, then the cases at the device's precision, then the others (fewer model loads)."""
    reference, others = cases[0], cases[1:]
    default_precision = bases[reference.mode].precision
    same = [case for case in others if case.settings(bases[case.mode]).precision == default_precision]
    different = [case for case in others if case.settings(bases[case.mode]).precision != default_precision]
    different.sort(key=lambda case: case.settings(bases[case.mode]).precision)
    return [reference] + same + different


def _default_duration(level: str, on_cpu: bool) -> float:
    durations = STRESS_DURATION_S if level == "stress" else DEFAULT_DURATION_S
    return durations["cpu" if on_cpu else "gpu"]


# --- inputs ----------------------------------------------------------------------------------


def real_frames(request: BenchmarkRequest, runner: CaseRunner) -> ReferenceOutput | None:
    """The input video's own frames as a reference, when it speaks its own speech (--video alone) and the
    weights are trained: each output's mouth is then also scored against the real one."""
    if request.video is None or request.audio is not None or request.weights in ("random", "random-tiny"):
        return None
    return ReferenceOutput(Path(request.video))


def prepare_inputs(workspace: Path, request: BenchmarkRequest, duration_s: float) -> tuple[Path, Path, BenchmarkInput]:
    """The video and audio to run on, and what they are for the entry."""
    if request.video is not None:  # alone: with its own speech (sync reads a video's audio track)
        speech = request.audio if request.audio is not None else request.video
        length = audio_duration_s(speech)
        source = BenchmarkInput(
            source="user",
            video=str(request.video),
            audio=str(request.audio) if request.audio is not None else None,
            duration_s=length,
            frames=None if length is None else round(length * FPS),
            seed=request.seed,
        )
        return Path(request.video), Path(speech), source
    video = make_face_clip(workspace / "face.mp4", duration_s, preset="ultrafast")
    audio = make_speech(workspace / "speech.wav", duration_s)
    frames = round(duration_s * FPS)
    source = BenchmarkInput(source="synthetic", duration_s=duration_s, frames=frames, seed=request.seed)
    return video, audio, source


# --- one case --------------------------------------------------------------------------------


def case_request(case: BenchCase, base: RunSettings, seed: int, device: DeviceRecord, on_cpu: bool) -> SettingsRequest:
    """The `sync` flags of one case: its mode at quality balanced, and each setting the case changes."""
    steps = base.steps if on_cpu else None  # on a CPU: the scaled-down steps (cpu_steps) as an explicit flag
    return SettingsRequest(mode=case.mode, quality="balanced", seed=seed, device=device.torch_device, steps=steps,
                           **case.changes)  # fmt: skip


class CaseRunner:
    """Runs the cases of one benchmark as `sync` jobs, through the job API, with one model cache."""

    def __init__(self, table: PresetTable, device: DeviceRecord, weights: str, checkpoint_dir: Path | None,
                 seed: int, on_cpu: bool, workspace: Path):  # fmt: skip
        self.table = table
        self.device = device
        self.hardware = HardwareReport((device,))
        self.weights = weights
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed
        self.on_cpu = on_cpu
        self.workspace = workspace
        self.models = ModelCache()
        self.weights_info: WeightsInfo | None = None  # what the cases ran with, once one has run
        self.videos_with_a_face: set[Path] = set()  # inputs check_face has passed: every case reads the same one

    def job(self, case: BenchCase, base: RunSettings, video: Path, audio: Path, output: Path) -> Job:
        request = case_request(case, base, self.seed, self.device, self.on_cpu)
        return Job(video, audio, output, request, weights=self.weights, checkpoint_dir=self.checkpoint_dir,
                   overwrite=True)  # fmt: skip

    def run(
        self, case: BenchCase, base: RunSettings, video: Path, audio: Path, output: Path,
        watcher: MemoryWatcher | None = None,
    ) -> CaseResult:  # fmt: skip
        """One `sync` job of `case`, measured. An out-of-memory case is recorded as failed, not fatal."""
        prepared = prepare(self.job(case, base, video, audio, output), self.table, self.hardware)
        settings = prepared.resolved.settings
        result = CaseResult(name=case.name, mode=case.mode, changes=dict(case.changes), settings=settings.to_dict())
        if settings.compile:
            # Each case compiles as a fresh `sync` would; otherwise the cases' graphs pile up
            # in dynamo's cache until its size limit silently sends later cases back to eager.
            torch._dynamo.reset()
        try:
            if watcher is not None:
                watcher.start()
            with claim_output(prepared) as scratch:
                if video not in self.videos_with_a_face:
                    check_face(prepared)
                    self.videos_with_a_face.add(video)
                finished = execute(prepared, self.models.get(prepared), scratch)
        except DeviceMemoryError as error:
            return replace(result, error=f"out of memory: {error.message}")
        finally:
            if watcher is not None:
                watcher.stop()
        self.weights_info = finished.weights
        measured = measurements(finished.result)
        stress = None if watcher is None else stress_summary(case.name, measured, settings, finished.result, watcher)
        return replace(result, measured=measured, stress=stress)


def measurements(sync: SyncResult) -> Measurements:
    """Speed, stage split, UNet steps, peak memory and optimizations of one SyncResult."""
    peak_gpu = sync.peak_gpu_bytes
    return Measurements(
        output_s=round(sync.output_seconds, 4),
        frames=sync.frames,
        windows=sync.windows,
        wall_s=round(sync.wall_s, 4),
        seconds_per_output_second=round(metrics.seconds_per_output_second(sync.wall_s, sync.output_seconds), 4),
        realtime_factor=round(metrics.realtime_factor(sync.wall_s, sync.output_seconds), 4),
        stages=group_stages(sync.stage_seconds),
        stage_seconds={name: round(seconds, 4) for name, seconds in sync.stage_seconds.items()},
        bottleneck=sync.verdict,
        # What the UNet did on each step, summed over its UNet calls (counted by the denoising loop).
        unet_steps=sync.unet_steps,
        peak_memory_gb=None if peak_gpu is None else round(peak_gpu / 1e9, 3),
        peak_rss_gb=round(sync.peak_rss_bytes / 1e9, 3),  # whole process so far, not only this case
        optimizations=list(sync.optimizations),
        memory_downgrades=list(sync.memory_downgrades),
    )


def group_stages(stage_seconds: dict[str, float]) -> dict[str, float]:
    """The pipeline's stages summed into the report's groups (unknown stages count as "other")."""
    grouped = dict.fromkeys(STAGE_GROUPS, 0.0)
    for stage, seconds in stage_seconds.items():
        group = next((name for name, members in STAGE_GROUPS.items() if stage in members), "other")
        grouped[group] += seconds
    return {name: round(seconds, 4) for name, seconds in grouped.items()}


# --- stress ----------------------------------------------------------------------------------


class MemoryWatcher:
    """Samples allocated device memory (or resident memory on a CPU) on a background thread."""

    def __init__(self, device: torch.device, interval_s: float = MEMORY_SAMPLE_INTERVAL_S):
        self.device = device
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._origin = 0.0

    def start(self) -> None:
        self._origin = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._origin, self.read_bytes()))
            self._stop.wait(self.interval_s)

    def read_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return resident_bytes()


def resident_bytes() -> int:
    """Current resident memory of this process (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def stress_summary(
    name: str, measured: Measurements, settings: RunSettings, sync: SyncResult, watcher: MemoryWatcher
) -> StressSummary:
    """Throughput drift (denoise time per UNet call, last quarter vs first) and memory growth over the run.

    A shorter last window would look like a speed-up, so only full-size calls are compared.
    """
    denoise_spans = [event["dur"] / 1e6 for event in sync.trace if event["name"] == "denoise"]
    frames_per_call = settings.window * settings.windows_per_call
    full_calls = denoise_spans
    if measured.frames % frames_per_call != 0:
        full_calls = denoise_spans[:-1]
    return StressSummary(
        name=name,
        output_s=measured.output_s,
        wall_s=measured.wall_s,
        unet_calls=len(denoise_spans),
        denoise_s_per_call=[round(seconds, 4) for seconds in denoise_spans],
        throughput_drift=relative_drift(full_calls),
        memory_samples=[(round(t, 2), size) for t, size in watcher.samples],
        memory_growth_gb=memory_growth_gb(watcher.samples),
    )


def relative_drift(values: list[float]) -> float | None:
    """(mean of the last quarter / mean of the first quarter) - 1; positive means it got slower."""
    if len(values) < 4:
        return None
    quarter = len(values) // 4
    first = sum(values[:quarter]) / quarter
    last = sum(values[-quarter:]) / quarter
    return round(last / first - 1.0, 4) if first > 0 else None


def memory_growth_gb(samples: list[tuple[float, int]]) -> float | None:
    """Mean memory over the last quarter of the run minus the mean over its first quarter, in GB."""
    if len(samples) < 4:
        return None
    quarter = len(samples) // 4
    first = sum(size for _, size in samples[:quarter]) / quarter
    last = sum(size for _, size in samples[-quarter:]) / quarter
    return round((last - first) / 1e9, 4)

"""One lip-sync job, from a request to a finished MP4.

    job = Job(video=Path("talk.mp4"), audio=Path("voice.wav"), settings=SettingsRequest(mode="turbo"))
    prepared = prepare(job)               # every check that needs no model; speech decoded; settings resolved
    with claim_output(prepared) as scratch:   # the output is this job's until it ends (a second job is refused)
        models = ModelCache().get(prepared)   # the weights (kept for the next job with the same weights/device/precision)
        finished = execute(prepared, models, scratch, progress)   # -> FinishedJob

`run(job, cache, progress)` does all of it. The order makes mistakes cost
nothing: flags first, then the input files, the output path and the media,
and only then the weights. Nothing is written at the output path unless the
job succeeds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentsync_cli.constants import FPS, WEIGHT_CHOICES
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.hardware import HardwareReport, probe_devices
from latentsync_cli.jobs.outputs import check_output_path, default_output_path
from latentsync_cli.jobs.scratch import job_scratch_dir, remove_stale_scratch
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.media.audio import SAMPLE_RATE
from latentsync_cli.media.encode import DEFAULT_CRF, ENCODER_CHOICES, EncoderChoice, choose_encoder
from latentsync_cli.models.weight_files import check_weights_available
from latentsync_cli.presets import PresetTable, load_presets
from latentsync_cli.progress import NoProgress, Progress
from latentsync_cli.resolution import BenchmarkPicker, no_benchmark, resolve_request
from latentsync_cli.settings import ResolvedSettings, SettingsRequest, check_request

if TYPE_CHECKING:  # heavy modules (torch, diffusers, MediaPipe): imported only where a job runs
    from latentsync_cli.models.weights import ModelBundle
    from latentsync_cli.pipeline import SyncResult

MIN_SPEECH_SAMPLES = SAMPLE_RATE // FPS  # one output frame
LOOP_MODES = ("pingpong", "loop", "freeze")
FACE_CHOICES = ("largest", "center")


@dataclass(frozen=True)
class Job:
    """What one `latentsync sync` is asked to do. Paths may be relative; nothing is checked yet."""

    video: Path
    audio: Path | None = None  # None: the video's own audio track
    output: Path | None = None  # None: <video stem>_synced.mp4 beside the video
    settings: SettingsRequest = field(default_factory=SettingsRequest)
    weights: str = "auto"  # one of WEIGHT_CHOICES
    checkpoint_dir: Path | None = None
    loop: str = "pingpong"  # how a video shorter than the speech continues
    face: str = "largest"  # which face when there are several
    mask_feather: float = 0.0
    crf: int = DEFAULT_CRF
    encoder: str = "auto"  # auto | libx264 | h264_nvenc (auto: NVENC where it opens on a CUDA machine)
    overwrite: bool = False
    work_dir: Path | None = None  # keep finished windows here, so that a killed job resumes
    keep_output: bool = True  # False: `profile` without -o (the MP4 is made in a temporary folder and dropped)
    shard: Shard | None = None  # compute only this shard's windows into the work dir (no output is written)
    finalize: bool = False  # only restore, encode and mux the windows in the work dir (all must be there)


@dataclass(frozen=True)
class PreparedJob:
    """A job whose flags, files, output path and settings have been checked, before any model work."""

    job: Job
    video: Path  # absolute
    audio: Path | None  # absolute
    output: Path | None  # absolute; None when the MP4 is not kept
    speech: np.ndarray  # float32 mono 16 kHz, decoded once for the whole job
    resolved: ResolvedSettings
    encoder: EncoderChoice  # the H.264 encoder and why
    warnings: tuple[str, ...] = ()  # for the user: notes of the resolution, silent speech, ...


@dataclass(frozen=True)
class WeightsInfo:
    choice: str  # what --weights asked for
    id: str  # what was loaded (a checkpoint digest or "random-...")
    description: str
    is_random: bool
    is_proxy: bool = False  # the small model trained on three clips

    def to_dict(self) -> dict:
        return {"choice": self.choice, "id": self.id, "description": self.description, "is_random": self.is_random,
                "is_proxy": self.is_proxy}


@dataclass(frozen=True)
class FinishedJob:
    prepared: PreparedJob
    result: SyncResult
    weights: WeightsInfo

    @property
    def output_kept(self) -> bool:
        return self.prepared.output is not None


# --- the job ---------------------------------------------------------------------------------


def run(
    job: Job,
    cache: ModelCache | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> FinishedJob:
    """Check, claim the output, load the weights, run. `warn(text)` hears what the user should know
    (silent speech, random weights, ...); `progress` is started only once every check has passed."""
    warn = warn or (lambda text: None)
    progress = progress or NoProgress()
    prepared = prepare(job)
    for warning in prepared.warnings:
        warn(warning)
    with claim_output(prepared) as scratch:
        progress.message(f"loading the {job.weights} weights")
        models = (cache or ModelCache()).get(prepared)
        if models.note is not None:
            warn(models.note)  # random weights or the proxy: "... the video is not a lip-sync" / "... not LatentSync 1.6's"
        return execute(prepared, models, scratch, progress)


def prepare(
    job: Job,
    table: PresetTable | None = None,
    hardware: HardwareReport | None = None,
    pick_from_benchmark: BenchmarkPicker | None = None,
) -> PreparedJob:
    """Every check that needs no model: flags, input files, their streams, the output path, the settings.

    `table` and `hardware` default to this machine's preset table and probed
    devices; `pick_from_benchmark` to its benchmark cache (asked only for quality auto).
    """
    # Cheapest first, so that a mistake costs no more than starting the program: flags, paths,
    # then the device probe (it may import torch), the media, and the settings for the speech length.
    table = table if table is not None else load_presets(job.settings.presets_file)
    check_flags(job, table)
    video = existing_input(job.video, "video")
    audio = existing_input(job.audio, "audio") if job.audio is not None else None
    output = None
    if job.keep_output:
        wanted = job.output if job.output is not None else default_output_path(video)
        output = check_output_path(wanted, [video, audio], job.overwrite)
    check_weights_available(job.weights, _absolute(job.checkpoint_dir))  # missing weights: exit 5 in well under 3 s
    hardware = hardware if hardware is not None else probe_devices()
    resolve_request(job.settings, table, hardware, None, no_benchmark)  # flags that depend on the device
    speech, warnings = read_media(video, audio)
    speech_seconds = speech.size / SAMPLE_RATE
    resolved = resolve_request(job.settings, table, hardware, speech_seconds, pick_from_benchmark)
    encoder = choose_encoder(job.encoder, device=resolved.settings.device)
    return PreparedJob(job, video, audio, output, speech, resolved, encoder, tuple(resolved.notes) + warnings)


@contextmanager
def claim_output(prepared: PreparedJob) -> Iterator[Path]:
    """The job's scratch folder, which also claims its output until the job ends (OutputError if another
    running job holds it). Without a kept output (`profile` without -o): a temporary folder."""
    if prepared.output is None or prepared.job.shard is not None:  # nothing is written at the output path
        with tempfile.TemporaryDirectory(prefix="latentsync-") as scratch:
            yield Path(scratch)
        return
    remove_stale_scratch(prepared.output.parent)  # what SIGKILL-ed jobs of this host left behind
    with job_scratch_dir(prepared.output) as scratch:
        yield scratch


def execute(
    prepared: PreparedJob, models: ModelBundle, scratch_dir: Path, progress: Progress | None = None
) -> FinishedJob:
    """Run the pipeline in `scratch_dir` (see claim_output); with a work dir, finished windows are kept and reused."""
    from latentsync_cli.pipeline import LipsyncPipeline, SyncJob
    from latentsync_cli.timing import StageTimer

    settings = prepared.resolved.settings
    weights = WeightsInfo(prepared.job.weights, models.weights_id, models.description, models.is_random, models.is_proxy)
    target = prepared.output or scratch_dir / f"{prepared.video.stem}_profile.mp4"
    job = prepared.job
    with ExitStack() as stack:
        store = _window_store(stack, prepared, weights)
        sync_job = SyncJob(
            video=prepared.video,
            audio=prepared.audio,
            output=target,
            scratch_dir=scratch_dir,
            loop=job.loop,
            face=job.face,
            mask_feather_px=job.mask_feather,
            crf=job.crf,
            speech=prepared.speech,
            store=store,
            encoder=prepared.encoder.name,
            encoder_reason=prepared.encoder.reason,
            face_track=_stored_track(store, prepared, models.resolution) if job.work_dir is not None else None,
            shard_windows=job.shard.windows if job.shard is not None else None,
            finalize_only=job.finalize,
            comment=models.note,
        )
        pipeline = LipsyncPipeline(models, settings, StageTimer(settings.device), progress)
        result = pipeline.run(sync_job)
    return FinishedJob(prepared, result, weights)


def _stored_track(store, prepared: PreparedJob, resolution: int):
    """The face track from the work dir, computed there by the first task that needs it."""
    from latentsync_cli.face.track import track_faces

    job, stride = prepared.job, prepared.resolved.settings.face_detect_stride

    def face_track(num_frames: int):
        return store.face_track(lambda: track_faces(prepared.video, num_frames, job.loop, job.face, stride, resolution))

    return face_track


def _window_store(stack: ExitStack, prepared: PreparedJob, weights: WeightsInfo):
    """Where finished windows are kept: the job's work dir, or nowhere."""
    from latentsync_cli.jobs.workdir import WorkDirStore, job_fingerprint
    from latentsync_cli.pipeline import NoStore

    job = prepared.job
    if job.work_dir is None:
        return NoStore()
    settings = prepared.resolved.to_dict()["settings"]
    settings["device"] = settings["device"].split(":")[0]  # which GPU of a host does not change the faces
    fingerprint = job_fingerprint(
        [prepared.video, prepared.audio],
        settings,
        # What else shapes the stored faces: the weights, which face, the paste-back edge, the loop.
        {"weights": weights.to_dict(), "face": job.face, "mask_feather": job.mask_feather, "loop": job.loop},
    )
    return stack.enter_context(WorkDirStore(job.work_dir.expanduser(), fingerprint, job.shard))


# --- checks ----------------------------------------------------------------------------------


def check_flags(job: Job, table: PresetTable) -> None:
    """UsageError for a bad flag (or batch column) that needs neither the files nor the devices."""
    check_choices(job)
    check_shard_flags(job)
    check_request(table, job.settings)


def check_shard_flags(job: Job) -> None:
    if job.shard is not None and job.finalize:
        raise UsageError("--shard and --finalize: a task either computes a shard or finalizes, not both")
    if (job.shard is not None or job.finalize) and job.work_dir is None:
        flag = "--shard" if job.shard is not None else "--finalize"
        raise UsageError(f"{flag} needs --work-dir: a folder that every task of the job can reach")
    if (job.shard is not None or job.finalize) and not job.keep_output:
        raise UsageError("--shard and --finalize belong to `sync`, which writes the output")


def check_choices(job: Job) -> None:
    for flag, value, choices in (
        ("--weights", job.weights, WEIGHT_CHOICES),
        ("--loop", job.loop, LOOP_MODES),
        ("--face", job.face, FACE_CHOICES),
        ("--encoder", job.encoder, ENCODER_CHOICES),
    ):
        if value not in choices:
            raise UsageError(f"unknown {flag} {value!r}: use one of {', '.join(choices)}")


def existing_input(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: {what} file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass a {what} file")
    return path.absolute()


def read_media(video: Path, audio: Path | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Probe the video, decode its first frame and the whole speech; returns the speech and warnings.

    A file that is not media, has no video/audio stream or no samples fails here
    with a line naming it; silent speech is valid and only warned about.
    """
    from latentsync_cli.media.audio import is_silent, load_audio
    from latentsync_cli.media.video import probe_video, read_frames

    info = probe_video(video)
    frames = read_frames(video, 1, loop="freeze")  # a damaged stream fails here, not after the models load
    try:
        next(frames)
    finally:
        frames.close()
    if audio is None and not info.has_audio:
        raise InputError(f"{video}: the video has no audio track; pass the speech as the AUDIO argument")
    speech_file = audio if audio is not None else video
    speech = load_audio(speech_file)
    if speech.size < MIN_SPEECH_SAMPLES:
        raise InputError(
            f"{speech_file}: the speech lasts {1000 * speech.size / SAMPLE_RATE:.0f} ms; "
            f"at least {1000 // FPS} ms (one video frame) is needed"
        )
    if is_silent(speech):
        return speech, (f"{speech_file}: the speech is silent (below -60 dBFS); the mouth will barely move",)
    return speech, ()


# --- models ----------------------------------------------------------------------------------


class ModelCache:
    """The models of the last job, reused by the next one when weights, device and precision are the same."""

    def __init__(self):
        self.key: tuple | None = None
        self.models: ModelBundle | None = None

    def get(self, prepared: PreparedJob) -> ModelBundle:
        from latentsync_cli.models.weights import load_models
        from latentsync_cli.optimizers.precision import dtype_for

        job, settings = prepared.job, prepared.resolved.settings
        checkpoint_dir = _absolute(job.checkpoint_dir)
        key = (job.weights, checkpoint_dir, settings.device, settings.precision)
        if key != self.key:
            self.models = None  # free the previous job's models before loading others
            self.models = load_models(
                job.weights, checkpoint_dir, settings.device, dtype_for(settings.precision), seed=0
            )
            self.key = key
        return self.models


def _absolute(folder: Path | None) -> Path | None:
    return Path(folder).expanduser().absolute() if folder is not None else None

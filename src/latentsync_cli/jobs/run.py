"""One lip-sync job, from a request to a finished MP4.

    job = Job(video=Path("talk.mp4"), audio=Path("voice.wav"), settings=SettingsRequest(mode="turbo"))
    prepared = prepare(job)               # every check that needs no model; speech decoded; settings resolved
    with claim_output(prepared) as scratch:   # the output is this job's until it ends (a second job is refused)
        models = ModelCache().get(prepared)   # the weights (kept for the next job; see jobs/models.py)
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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentsync_cli.constants import FPS
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.face.insightface_points import find_model_root, require_extra
from latentsync_cli.jobs.job import FinishedJob, Job, PreparedJob
from latentsync_cli.jobs.models import ModelCache, absolute
from latentsync_cli.jobs.outputs import check_output_path, default_output_path
from latentsync_cli.jobs.scratch import job_scratch_dir, remove_stale_scratch
from latentsync_cli.media.audio import SAMPLE_RATE
from latentsync_cli.media.encode import choose_encoder
from latentsync_cli.options import OptionError, check_options
from latentsync_cli.progress import NoProgress, Progress
from latentsync_cli.settings.hardware import HardwareReport, probe_devices
from latentsync_cli.settings.presets import PresetTable, load_presets
from latentsync_cli.settings.resolution import BenchmarkPicker, no_benchmark, resolve_request
from latentsync_cli.settings.run_settings import check_request
from latentsync_cli.weights.files import check_weights_available
from latentsync_cli.weights.info import WeightsInfo

if TYPE_CHECKING:  # heavy modules (torch, diffusers, MediaPipe): imported only where a job runs
    from latentsync_cli.face.detectors import LandmarkSource
    from latentsync_cli.jobs.workdir import WorkDirStore
    from latentsync_cli.media.video import VideoInfo
    from latentsync_cli.timing import StageTimer
    from latentsync_cli.weights.load import ModelBundle

MIN_SPEECH_SAMPLES = SAMPLE_RATE // FPS  # one output frame
MAIN_LANE = "main"  # the stage timer's lane of the job's own thread (the pipeline's too)


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
        if models.is_random:
            warn(models.description)  # e.g. "random weights (...): ..., the video is not a lip-sync"
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
    check_weights_available(job.weights, absolute(job.checkpoint_dir))  # missing weights: exit 5 in well under 3 s
    if job.face_detector == "insightface":
        find_model_root(absolute(job.checkpoint_dir))  # InsightFace's models: exit 5 before any work
    hardware = hardware if hardware is not None else probe_devices()
    resolve_request(job.settings, table, hardware, None, no_benchmark)  # flags that depend on the device
    video_info, speech, warnings = read_media(video, audio)
    speech_seconds = speech.size / SAMPLE_RATE
    resolved = resolve_request(job.settings, table, hardware, speech_seconds, pick_from_benchmark)
    check_warm_start(job, resolved.settings.warm_start, resolved.sources["warm_start"])
    encoder = choose_encoder(job.encoder, device=resolved.settings.device)
    notes = tuple(resolved.notes) + warnings
    return PreparedJob(job, video, audio, output, video_info, speech, resolved, encoder, notes)


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
    """Run the pipeline in `scratch_dir` (see claim_output); with a work dir, finished windows are kept and reused.

    The job decides what the pipeline does with each window (jobs/window_plan.py)
    and where the frames go (the output file, or nowhere for a shard).
    """
    from latentsync_cli.face.track import check_for_a_face
    from latentsync_cli.jobs.window_plan import plan_windows
    from latentsync_cli.media.encode import DEFAULT_X264_PRESET, MuxedVideo
    from latentsync_cli.models.audio_features import output_frame_count
    from latentsync_cli.pipeline import LipsyncPipeline, SyncJob
    from latentsync_cli.pipeline.windows import window_ranges
    from latentsync_cli.timing import StageTimer

    progress = progress or NoProgress()
    job, settings = prepared.job, prepared.resolved.settings
    weights = WeightsInfo(job.weights, models.weights_id, models.description, models.is_random)
    timer = StageTimer(settings.device)
    landmarks = landmark_source(prepared)
    progress.message("checking for a face")
    with timer.stage("landmarks", MAIN_LANE):
        check_for_a_face(prepared.video_info, landmarks)
    ranges = window_ranges(output_frame_count(prepared.speech.size), settings.window)
    with ExitStack() as stack:
        store = open_work_dir(stack, prepared, weights)
        track = None
        if store is not None:
            progress.message("finding the faces of the whole video")
            track = stored_track(store, prepared, landmarks, ranges[-1].stop, models.resolution, timer)
        plan = plan_windows(ranges, store, track, job.shard, job.finalize, settings.window_overlap)
        target = prepared.output or scratch_dir / f"{prepared.video.stem}_profile.mp4"
        sink = MuxedVideo(target, scratch_dir / "video.mp4", prepared.speech, plan.num_frames, FPS,
                          job.crf, DEFAULT_X264_PRESET, prepared.encoder.name)  # fmt: skip
        sync_job = SyncJob(
            video=prepared.video_info,
            speech=prepared.speech,
            plan=plan,
            sink=sink if plan.make_frames else None,
            loop=job.loop,
            landmarks=landmarks,
            mask_feather_px=job.mask_feather,
            face_track=track,
            on_generated=store.save_window if store is not None else None,
            encoder=prepared.encoder.name,
            encoder_reason=prepared.encoder.reason,
        )
        result = LipsyncPipeline(models, settings, timer, progress).run(sync_job)
    return FinishedJob(prepared, result, weights)


def landmark_source(prepared: PreparedJob) -> LandmarkSource:
    """The job's landmark detector: --face-detector, the mode's detection stride, --face."""
    from latentsync_cli.face.detectors import LandmarkSource

    job, settings = prepared.job, prepared.resolved.settings
    root = find_model_root(absolute(job.checkpoint_dir)) if job.face_detector == "insightface" else None
    return LandmarkSource(job.face_detector, settings.face_detect_stride, job.face, root,
                          use_cuda=settings.device.startswith("cuda"))  # fmt: skip


def stored_track(
    store: WorkDirStore, prepared: PreparedJob, landmarks: LandmarkSource, num_frames: int, resolution: int,
    timer: StageTimer,
):  # fmt: skip
    """The face track from the work dir, computed there by the first task that needs it."""
    from latentsync_cli.face.track import track_faces

    loop = prepared.job.loop
    with timer.stage("landmarks", MAIN_LANE):
        return store.face_track(lambda: track_faces(prepared.video_info, num_frames, loop, landmarks, resolution))


def open_work_dir(stack: ExitStack, prepared: PreparedJob, weights: WeightsInfo) -> WorkDirStore | None:
    """Where finished windows are kept: the job's work dir, or nowhere."""
    from latentsync_cli.jobs.workdir import WorkDirStore, job_fingerprint

    job = prepared.job
    if job.work_dir is None:
        return None
    settings = prepared.resolved.to_dict()["settings"]
    settings["device"] = settings["device"].split(":")[0]  # which GPU of a host does not change the faces
    fingerprint = job_fingerprint(
        [prepared.video, prepared.audio],
        settings,
        # What else shapes the stored faces: the weights, which face, the paste-back edge, the loop.
        {"weights": weights.to_dict(), "face": job.face, "face_detector": job.face_detector,
         "mask_feather": job.mask_feather, "loop": job.loop},  # fmt: skip
    )
    return stack.enter_context(WorkDirStore(job.work_dir.expanduser(), fingerprint, job.shard))


# --- checks ----------------------------------------------------------------------------------


def check_flags(job: Job, table: PresetTable) -> None:
    """UsageError for a bad flag (or batch column) that needs neither the files nor the devices."""
    try:
        check_options(job)
    except OptionError as error:
        raise UsageError(str(error)) from None
    check_shard_flags(job)
    if job.face_detector == "insightface":
        require_extra()
    check_request(table, job.settings)


def check_shard_flags(job: Job) -> None:
    if job.shard is not None and job.finalize:
        raise UsageError("--shard and --finalize: a task either computes a shard or finalizes, not both")
    if (job.shard is not None or job.finalize) and job.work_dir is None:
        flag = "--shard" if job.shard is not None else "--finalize"
        raise UsageError(f"{flag} needs --work-dir: a folder that every task of the job can reach")
    if (job.shard is not None or job.finalize) and not job.keep_output:
        raise UsageError("--shard and --finalize belong to `sync`, which writes the output")


def check_warm_start(job: Job, warm_start: bool, source: str) -> None:
    """A warm start makes each window from the previous one: such a job cannot be resumed or split."""
    if warm_start and job.work_dir is not None:
        raise UsageError(
            f"warm start (from the {source}) makes each window from the previous one, so a job with --work-dir, "
            "--shard or --ray cannot use it: add --no-warm-start (--window-overlap keeps windows independent)"
        )


def existing_input(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: {what} file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass a {what} file")
    return path.absolute()


def read_media(video: Path, audio: Path | None) -> tuple[VideoInfo, np.ndarray, tuple[str, ...]]:
    """Probe the video (once for the whole job), decode its first frame and the whole speech.

    Returns what the probe found, the speech and warnings. A file that is not
    media, has no video/audio stream or no samples fails here with a line naming
    it; silent speech is valid and only warned about.
    """
    from latentsync_cli.media.audio import is_silent, load_audio
    from latentsync_cli.media.video import probe_video, read_frames

    info = probe_video(video)
    frames = read_frames(info, 1, loop="freeze")  # a damaged stream fails here, not after the models load
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
        return info, speech, (f"{speech_file}: the speech is silent (below -60 dBFS); the mouth will barely move",)
    return info, speech, ()

"""One lip-sync job, from a request to a finished MP4.

    job = Job(video=Path("talk.mp4"), audio=Path("voice.wav"), settings=SettingsRequest(mode="turbo"))
    prepared = prepare(job)               # every check that needs no model; speech decoded; settings resolved
    with claim_output(prepared) as scratch:   # a lease on the output until the job ends (a second job is refused)
        check_face(prepared)                  # the video shows a face (execute() counts on it)
        models = ModelCache().get(prepared)   # the weights (kept for the next job; see jobs/models.py)
        finished = execute(prepared, models, scratch, progress)   # -> FinishedJob

`run(job, cache, progress)` does all of it. The order makes mistakes cost
nothing: flags first, then the input files, the output path and the media,
then a face in the video, and only then the weights. Nothing is written at
the output path unless the job succeeds.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentsync_cli.constants import FPS
from latentsync_cli.errors import InputError, UsageError
from latentsync_cli.face.insightface_points import find_model_root, require_extra
from latentsync_cli.jobs.job import FinishedJob, Job, PreparedJob
from latentsync_cli.jobs.lease import LeaseTerms
from latentsync_cli.jobs.models import ModelCache, absolute
from latentsync_cli.jobs.outputs import check_output_path, claimed_path, default_output_path
from latentsync_cli.jobs.scratch import JobScratch, job_scratch_dir, remove_stale_scratch
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.media.audio import SAMPLE_RATE, is_stream, speech_stream
from latentsync_cli.media.encode import EncoderChoice, choose_encoder
from latentsync_cli.media.outputs import FFMPEG_ENCODERS, STDOUT, OutputSpec, Speech, check_codec, choose_output
from latentsync_cli.media.pipes import STDIN, spool_stdin
from latentsync_cli.media.sequences import is_sequence_pattern, parse_rate
from latentsync_cli.models.frame_count import output_frame_count, speech_samples_for
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
    from latentsync_cli.media.outputs import OutputWriter
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
    with ExitStack() as stack:
        if job.video == STDIN:  # spooled into the job's scratch folder first: the job reads its video many times
            table = load_presets(job.settings.presets_file)
            check_flags(job, table)
            output = checked_output(job, [job.audio])  # a bad -o costs no spooling
            scratch = stack.enter_context(claim_folder(output, job.shard, LeaseTerms.from_environment(), warn))
            progress.message("reading the video from stdin")
            prepared = prepare(replace(job, video=spool_stdin(scratch.folder, job.input_fd)), table)
        else:
            prepared = prepare(job)
            scratch = stack.enter_context(claim_output(prepared, warn))
        for warning in prepared.warnings:
            warn(warning)
        progress.message("checking for a face")
        check_face(prepared)  # before the models load: a clip without a face fails in seconds
        progress.message(f"loading the {job.weights} weights")
        models = (cache or ModelCache()).get(prepared)
        if models.note is not None:
            warn(models.note)  # e.g. "random weights (...): ..., the video is not a lip-sync"
        return execute(prepared, models, scratch, progress, warn)


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
    # Cheapest first, so that a mistake costs no more than starting the program: flags, paths, the
    # media (ffmpeg), then the device probe (on a machine without NVML it imports torch, seconds) and the
    # settings for the speech length.
    table = table if table is not None else load_presets(job.settings.presets_file)
    check_flags(job, table)
    lease = LeaseTerms.from_environment()
    video = existing_video(job.video)
    audio = existing_input(job.audio, "audio") if job.audio is not None else None
    target = checked_output(replace(job, video=video), [video, audio])
    check_weights_available(job.weights, absolute(job.checkpoint_dir))  # missing weights: exit 5 in well under 3 s
    if job.face_detector == "insightface":
        find_model_root(absolute(job.checkpoint_dir))  # InsightFace's models: exit 5 before any work
    video_info, speech, warnings = read_media(video, audio, job)
    num_frames, speech = frames_and_speech(video_info, speech, job.length)
    hardware = hardware if hardware is not None else probe_devices()
    resolve_request(job.settings, table, hardware, None, no_benchmark)  # flags that depend on the device
    speech_seconds = speech.size / SAMPLE_RATE
    resolved = resolve_request(job.settings, table, hardware, speech_seconds, pick_from_benchmark)
    check_warm_start(job, resolved.settings.warm_start, resolved.sources["warm_start"])
    spec = choose_output(target, job.codec, job.format, video_info) if target is not None else None
    encoder = video_encoder(job, spec, resolved.settings.device)
    speech_file = audio or video
    # A named pipe was read once, above: the output then carries the decoded speech (output_sink).
    speech_source = None if is_stream(speech_file) else Speech(speech_file, speech_stream(speech_file))
    notes = tuple(resolved.notes) + warnings
    return PreparedJob(job, video, audio, claimed_path(target) if target is not None else None, video_info, speech,
                       resolved, encoder, num_frames, spec, speech_source, notes, lease)  # fmt: skip


def checked_output(job: Job, inputs: list[Path | None]) -> Path | None:
    """The job's output checked before any work (None when it is not kept): the file, the sequence's
    pattern or "-" (stdout), absolute."""
    if not job.keep_output:
        return None
    wanted = job.output if job.output is not None else default_output_path(job.video)
    target = check_output_path(wanted, inputs, job.overwrite, job.format)
    check_codec(target, job.codec, job.format)
    return target


def video_encoder(job: Job, spec: OutputSpec | None, device: str) -> EncoderChoice:
    """The encoder of the output's codec, and why (H.264: NVENC where it opens, --encoder)."""
    codec = spec.codec if spec is not None else "h264"
    if codec == "h264":
        return choose_encoder(job.encoder, device=device)
    if job.encoder == "h264_nvenc":
        raise UsageError(f"--encoder h264_nvenc is for H.264 output; this job writes {codec}")
    return EncoderChoice(FFMPEG_ENCODERS[codec], f"{codec} output ({'--codec' if job.codec != 'auto' else 'auto'})")


@contextmanager
def claim_output(prepared: PreparedJob, warn: Callable[[str], None] | None = None) -> Iterator[JobScratch]:
    """The job's scratch folder, which is also its lease on the output until the job ends (OutputError while
    another job's lease is live; `warn` hears it when a dead job's is taken over). Without a kept output
    (`profile` without -o, stdout, a shard): a temporary folder that claims nothing."""
    with claim_folder(prepared.output, prepared.job.shard, prepared.lease, warn) as scratch:
        yield scratch


@contextmanager
def claim_folder(
    output: Path | None, shard: Shard | None, lease: LeaseTerms, warn: Callable[[str], None] | None = None
) -> Iterator[JobScratch]:
    """The scratch folder that is the lease on `output` (a file or a sequence's folder; "-", None or a shard:
    a temporary folder that claims nothing)."""
    if output is None or output == STDOUT or shard is not None:  # nothing is written at an output path
        with tempfile.TemporaryDirectory(prefix="latentsync-") as scratch:
            yield JobScratch(Path(scratch))
        return
    output = claimed_path(output)
    with job_scratch_dir(output, lease, warn) as scratch:
        remove_stale_scratch(output.parent, lease)  # what dead jobs, on any host, left behind
        yield scratch


def execute(
    prepared: PreparedJob,
    models: ModelBundle,
    scratch: JobScratch,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> FinishedJob:
    """Run the pipeline in the job's scratch folder (see claim_output); its sink puts the output in place
    if the job still holds it. With a work dir, finished windows are kept and reused.

    The job decides what the pipeline does with each window (jobs/window_plan.py)
    and where the frames go (the output file, or nowhere for a shard). Its video
    was checked for a face (check_face) before the models were loaded.
    """
    from latentsync_cli.jobs.window_plan import plan_windows
    from latentsync_cli.pipeline import LipsyncPipeline, SyncJob
    from latentsync_cli.pipeline.windows import window_ranges
    from latentsync_cli.timing import StageTimer

    progress = progress or NoProgress()
    job, settings = prepared.job, prepared.resolved.settings
    weights = WeightsInfo(job.weights, models.weights_id, models.description, models.is_random,
                          models.is_proxy)  # fmt: skip
    timer = StageTimer(settings.device)
    landmarks = landmark_source(prepared)
    ranges = window_ranges(prepared.num_frames, settings.window)
    with ExitStack() as stack:
        store = open_work_dir(stack, prepared, weights, warn)
        track = None
        if store is not None:
            progress.message("finding the faces of the whole video")
            track = stored_track(store, prepared, landmarks, ranges[-1].stop, models.resolution, timer)
        plan = plan_windows(ranges, store, track, job.shard, job.finalize, settings.window_overlap)
        sync_job = SyncJob(
            video=prepared.video_info,
            fps=prepared.video_info.rate,
            speech=prepared.speech,
            plan=plan,
            sink=output_sink(prepared, plan.num_frames, scratch, weights.note) if plan.make_frames else None,
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


def check_face(prepared: PreparedJob) -> None:
    """InputError unless one of the video's first frames shows a face (run() checks before the models load)."""
    from latentsync_cli.face.track import check_for_a_face

    check_for_a_face(prepared.video_info, landmark_source(prepared))


def landmark_source(prepared: PreparedJob) -> LandmarkSource:
    """The job's landmark detector: --face-detector, the mode's detection stride, --face."""
    from latentsync_cli.face.detectors import LandmarkSource

    job, settings = prepared.job, prepared.resolved.settings
    root = find_model_root(absolute(job.checkpoint_dir)) if job.face_detector == "insightface" else None
    return LandmarkSource(job.face_detector, settings.face_detect_stride, job.face, root,
                          use_cuda=settings.device.startswith("cuda"))  # fmt: skip


def output_sink(prepared: PreparedJob, num_frames: int, scratch: JobScratch, comment: str | None) -> OutputWriter:
    """Where the frames go: the output (a file, a sequence, stdout), or an MP4 in the scratch folder (profile).
    Everything is written inside the scratch folder, so that it goes with the job's lease, and put in place
    only while the job still holds the output."""
    from latentsync_cli.media.encode import DEFAULT_X264_PRESET
    from latentsync_cli.media.outputs import EncodeSettings, OutputWriter

    job, info = prepared.job, prepared.video_info
    spec = prepared.output_spec
    if spec is None:  # profile without -o: made, then dropped with the scratch folder
        spec = choose_output(scratch.folder / f"{prepared.video.stem}_profile.mp4", "auto", None, info)
    encoding = EncodeSettings(job.crf, DEFAULT_X264_PRESET, prepared.encoder.name)
    duration = Fraction(num_frames) / info.rate
    speech = prepared.speech_source or decoded_speech(prepared.speech, scratch.folder)
    return OutputWriter(spec, info, speech, duration, scratch.folder, encoding, job.output_fd,
                        publish=scratch.publish, comment=comment)  # fmt: skip


def decoded_speech(speech: np.ndarray, folder: Path) -> Speech:
    """The speech as the model read it (16 kHz mono), as a WAV in `folder`: what a piped speech's output carries."""
    from latentsync_cli.media.audio import write_wav

    path = folder / "speech.wav"
    write_wav(path, speech)
    return Speech(path, speech_stream(path))


def stored_track(
    store: WorkDirStore, prepared: PreparedJob, landmarks: LandmarkSource, num_frames: int, resolution: int,
    timer: StageTimer,
):  # fmt: skip
    """The face track from the work dir, computed there by the first task that needs it."""
    from latentsync_cli.face.track import track_faces

    loop = prepared.job.loop
    with timer.stage("landmarks", MAIN_LANE):
        return store.face_track(lambda: track_faces(prepared.video_info, num_frames, loop, landmarks, resolution))


def open_work_dir(
    stack: ExitStack, prepared: PreparedJob, weights: WeightsInfo, warn: Callable[[str], None] | None
) -> WorkDirStore | None:
    """Where finished windows are kept: the job's work dir, or nowhere."""
    from latentsync_cli.jobs.workdir import WorkDirStore, job_fingerprint

    job = prepared.job
    if job.work_dir is None:
        return None
    settings = prepared.resolved.to_dict()["settings"]
    settings["device"] = settings["device"].split(":")[0]  # which GPU of a host does not change the faces
    # What else shapes the stored faces: the weights, which face, the paste-back edge, the loop, the frame
    # rate and count (which frames, and which audio rows each one takes).
    extra = {"weights": weights.to_dict(), "face": job.face, "face_detector": job.face_detector,
             "mask_feather": job.mask_feather, "loop": job.loop, "rate": str(prepared.video_info.rate),
             "frames": prepared.num_frames}  # fmt: skip
    if prepared.audio is not None and not prepared.audio.is_file():  # a named pipe: its path says nothing
        extra["speech_sha256"] = hashlib.sha256(prepared.speech.tobytes()).hexdigest()
    fingerprint = job_fingerprint([prepared.video, prepared.audio], settings, extra)
    store = WorkDirStore(job.work_dir.expanduser(), fingerprint, job.shard, prepared.lease, warn)
    return stack.enter_context(store)


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
    check_stream_flags(job)
    parse_rate(job.input_fps)
    check_request(table, job.settings)


def check_stream_flags(job: Job) -> None:
    """What stdin and stdout allow: `-` needs -o, and is one job's stream (no shards)."""
    if job.video == STDIN and job.keep_output and job.output is None:
        raise UsageError("the video comes from stdin (-): name the output with -o (a file, a sequence, or - for stdout)")
    if STDIN in (job.video, job.output) and (job.shard is not None or job.finalize):
        raise UsageError("--shard and --finalize need files every task can read and write, not - (stdin/stdout)")
    if job.audio == STDIN:
        raise UsageError("the speech cannot come from stdin: pass its file (only VIDEO may be -)")


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


def existing_video(path: Path) -> Path:
    """The video's absolute path: a file, or an image sequence's pattern or folder (checked when probed)."""
    path = Path(path).expanduser()
    if is_sequence_pattern(path) or path.is_dir():
        return path.absolute()
    return existing_input(path, "video")


def read_media(video: Path, audio: Path | None, job: Job) -> tuple[VideoInfo, np.ndarray, tuple[str, ...]]:
    """Probe the video (once for the whole job), decode its first frame and the whole speech.

    Returns what the probe found (at the output's frame rate), the speech and
    notes. A file that is not media, has no video/audio stream or no samples
    fails here with a line naming it; silent speech is valid and only warned
    about. The speech may come from a named pipe (it is read once, here); the
    video, read several times, may not. Which video stream is used is said when
    there are several.
    """
    from latentsync_cli.media.audio import is_silent, load_audio
    from latentsync_cli.media.video import probe_video, read_frames

    info, rate_notes = at_output_rate(probe_video(video, parse_rate(job.input_fps)), job)
    frames = read_frames(info, 1, loop="freeze")  # a damaged stream fails here, not after the models load
    try:
        next(frames)
    finally:
        frames.close()
    if audio is None and not info.has_audio:
        raise InputError(f"{video}: the video has no audio track; pass the speech as the AUDIO argument")
    notes = list(rate_notes)
    if info.video_streams > 1:
        notes.append(f"{video}: {info.video_streams} video streams; using {info.stream_label}")
    speech_file = audio if audio is not None else video
    speech = load_audio(speech_file)
    if speech.size < MIN_SPEECH_SAMPLES:
        raise InputError(
            f"{speech_file}: the speech lasts {1000 * speech.size / SAMPLE_RATE:.0f} ms; "
            f"at least {1000 // FPS} ms (one video frame) is needed"
        )
    if is_silent(speech):
        notes.append(f"{speech_file}: the speech is silent (below -60 dBFS); the mouth will barely move")
    return info, speech, tuple(notes)


def at_output_rate(info: VideoInfo, job: Job) -> tuple[VideoInfo, tuple[str, ...]]:
    """The video read at the output's rate: its own constant rate (--fps source), or 25 fps by timestamp."""
    from latentsync_cli.media.video import frame_timing

    if info.is_image:
        if job.length == "video":
            raise UsageError(f"{info.path} is a still image, which has no length: use --length speech")
        return info, ()
    if job.fps == "25" and job.length == "speech":
        return info, ()  # 25 fps by timestamp, as probed: no need to read the timestamps
    timing = frame_timing(info)
    if job.fps == "source" and timing.rate is not None:
        return info.at_rate(timing.rate, timing.count), ()
    note = ()
    if job.fps == "source":
        note = (f"{info.path}: the frame rate varies ({timing.count} frames in {info.duration_s:.2f} s); "
                "the output is conformed to 25 fps",)  # fmt: skip
    if timing.rate is not None:  # a constant rate conformed to 25: the frames 25 fps slots pick
        return info.at_rate(Fraction(FPS), round(timing.count * FPS / timing.rate)), note
    return info, note


def frames_and_speech(info: VideoInfo, speech: np.ndarray, length: str) -> tuple[int, np.ndarray]:
    """The output's frame count and the speech that drives it: the speech's frames (--length speech), or
    exactly the video's, the speech cut or padded with silence to make them (--length video)."""
    if length == "speech":
        return output_frame_count(speech.size, info.rate), speech
    samples = speech_samples_for(info.frame_count, info.rate)
    fitted = np.zeros(samples, dtype=np.float32)
    fitted[: min(samples, speech.size)] = speech[:samples]
    return info.frame_count, fitted

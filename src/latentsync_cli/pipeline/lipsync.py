"""LipsyncPipeline: one video and one speech track in, one lip-synced MP4 out.

    face check (first frames) -> audio features (whole file)
    then, window by window, overlapped:
      producer thread:  decode -> landmarks -> align
      this thread:      windows already in the store are loaded; the others go through
                        FaceGenerator (faces.py): VAE encode -> denoise -> VAE decode -> paste back,
                        under the out-of-memory ladder
      consumer thread:  restore into the frame -> encode
    then mux the speech in.

The whole run is inside `torch_switches` (TF32, the GPU memory cap), so the
process is left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.constants import FPS
from latentsync_cli.errors import IncompleteWorkError, InputError
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.face.restore import paste_thread_count, restore_faces
from latentsync_cli.face.restore_torch import restore_backend_for
from latentsync_cli.face.track import FaceLocator, FaceTrack
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.encode import DEFAULT_CRF, DEFAULT_X264_PRESET, VideoEncoder, mux
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.models.weights import ModelBundle
from latentsync_cli.optimizers import APPLIED, OFF, LogEntry, OptimizationLog
from latentsync_cli.optimizers.memory import MemoryLadder, MemorySettings
from latentsync_cli.optimizers.run_plan import build_run_plan
from latentsync_cli.optimizers.torch_switches import torch_switches
from latentsync_cli.optimizers.vae_memory import set_vae_memory
from latentsync_cli.pipeline.faces import FaceGenerator, restore_on_device
from latentsync_cli.pipeline.overlap import ReadAhead, run_overlapped
from latentsync_cli.pipeline.windows import NoStore, WindowInput, WindowOutput, WindowStore, window_ranges
from latentsync_cli.progress import TASK_DECODE, TASK_ENCODE, TASK_GENERATE, TASK_JOB, NoProgress, Progress
from latentsync_cli.settings import RunSettings
from latentsync_cli.timing import (
    StageTimer,
    bottleneck_verdict,
    critical_path,
    peak_gpu_bytes,
    peak_rss_bytes,
    reset_peak_gpu_memory,
)

FACE_CHECK_FRAMES = 50  # "no face" is decided on the first frames, before any model work
READ_AHEAD_FRAMES = 4  # decoded frames waiting for the face tracker (4 x 6 MB at 1080p)

# Lanes of the stage timer: which thread does the work. The models' lane is named after
# their device ("cuda", "cpu", "mps"; see FaceGenerator).
MAIN, PRODUCER, CONSUMER = "main", "producer", "consumer"


@dataclass
class SyncJob:
    video: Path
    audio: Path | None  # None: the video's own audio track
    output: Path
    scratch_dir: Path  # private temporary folder beside the output (jobs.job_scratch_dir)
    loop: str = "pingpong"  # how a video shorter than the speech continues
    face: str = "largest"  # which face when there are several: largest | center
    mask_feather_px: float = 0.0  # soften the paste-back edge (the UNet still sees upstream's mask)
    crf: int = DEFAULT_CRF
    encoder_preset: str = DEFAULT_X264_PRESET
    store: WindowStore = field(default_factory=NoStore)
    # The speech, already decoded (float32 mono 16 kHz, as media.audio.load_audio returns it);
    # None: the pipeline decodes `audio` (or the video's track) itself.
    speech: np.ndarray | None = None
    encoder: str = "libx264"  # the ffmpeg H.264 encoder (media.encode.choose_encoder)
    encoder_reason: str = "libx264"  # why, for the optimization table
    # Work dirs and shards (see jobs/shards.py):
    # face_track(num_frames): the whole video's face track, found once (None: detect while decoding)
    face_track: Callable[[int], FaceTrack] | None = None
    # shard_windows(num_windows): make only these windows, into the store, and write no video
    shard_windows: Callable[[int], range] | None = None
    finalize_only: bool = False  # every window must be in the store already (IncompleteWorkError otherwise)
    # Where the faces are pasted back: "torch" on the model's device, "opencv" on the CPU, or
    # "auto": the faster for the device (face.restore_torch.restore_backend_for).
    restore: str = "auto"
    # Written into the output's metadata: what made it, when the weights are not LatentSync 1.6's.
    comment: str | None = None


@dataclass
class SyncResult:
    output: Path
    frames: int
    output_seconds: float
    windows: int
    frames_without_face: int
    resumed_windows: int
    stage_seconds: dict[str, float]
    stage_sum_s: float  # what the run would take with no overlap
    wall_s: float
    lane_busy_s: dict[str, float]
    critical_path: dict
    verdict: str
    optimizations: list[dict]
    memory_downgrades: list[str]
    unet_full_steps: int  # denoising steps that ran the whole UNet, summed over UNet calls
    unet_cached_steps: int  # steps that reused DeepCache's deep features
    peak_gpu_bytes: int | None
    peak_rss_bytes: int
    trace: list[dict] = field(default_factory=list)  # Chrome trace events, one per stage span

    @property
    def seconds_per_output_second(self) -> float:
        return self.wall_s / self.output_seconds if self.output_seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "frames": self.frames,
            "output_seconds": round(self.output_seconds, 3),
            "windows": self.windows,
            "frames_without_face": self.frames_without_face,
            "resumed_windows": self.resumed_windows,
            "stage_seconds": {name: round(seconds, 4) for name, seconds in self.stage_seconds.items()},
            "stage_sum_s": round(self.stage_sum_s, 3),
            "wall_s": round(self.wall_s, 3),
            "seconds_per_output_second": round(self.seconds_per_output_second, 3),
            "lane_busy_s": {lane: round(seconds, 3) for lane, seconds in self.lane_busy_s.items()},
            "critical_path": self.critical_path,
            "verdict": self.verdict,
            "optimizations": self.optimizations,
            "memory_downgrades": self.memory_downgrades,
            "unet_steps": {"full": self.unet_full_steps, "cached": self.unet_cached_steps},
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
        }


class LipsyncPipeline:
    def __init__(
        self,
        models: ModelBundle,
        settings: RunSettings,
        timer: StageTimer,
        progress: Progress | None = None,
        compile_backend: str = "inductor",
    ):
        self.models = models
        self.settings = settings
        self.timer = timer
        self.progress = progress or NoProgress()
        self.device = torch.device(settings.device)
        self.resolution = models.resolution
        self.plan = build_run_plan(models.unet, models.vae, settings, self.device, models.resolution, compile_backend)
        self.ladder = MemoryLadder(self.plan.memory, self.device, self.plan.log, self._use_memory_settings)
        self.resumed_windows = 0
        # Threads for the per-frame CPU work of the run in progress: cutting the aligned faces, the CPU paste.
        self.cpu_pool: ThreadPoolExecutor | None = None

    @property
    def log(self) -> OptimizationLog:
        return self.plan.log

    # --- the job -------------------------------------------------------------------------------

    def run(self, job: SyncJob) -> SyncResult:
        self.timer.restart()
        reset_peak_gpu_memory(self.device)
        self.resumed_windows = 0
        threads = paste_thread_count()  # 1 on a 2-core machine: there a pool only slowed the paste
        with torch_switches(self.settings, self.device), ExitStack() as stack:
            self.cpu_pool = stack.enter_context(ThreadPoolExecutor(threads)) if threads > 1 else None
            return self.sync(job)

    def sync(self, job: SyncJob) -> SyncResult:
        self.progress.message("checking for a face")
        self.check_for_a_face(job)

        self.progress.message("computing audio features")
        with self.timer.stage("audio features", MAIN):
            speech = job.speech
            if speech is None:
                speech = load_audio(job.audio if job.audio is not None else job.video)
            extractor = AudioFeatureExtractor(self.models.audio_encoder, self.device)
            audio_features = extractor(speech)  # (N, 50, 384): one row per output frame
        num_frames = audio_features.shape[0]
        windows = window_ranges(num_frames, self.settings.window)
        if job.finalize_only:
            check_all_stored(job.store, len(windows))
        selected = job.shard_windows(len(windows)) if job.shard_windows is not None else range(len(windows))
        track = None
        if job.face_track is not None:
            self.progress.message("finding the faces of the whole video")
            with self.timer.stage("landmarks", MAIN):
                track = job.face_track(num_frames)
        paste_mask = torch.from_numpy(mouth_mask(self.resolution, job.mask_feather_px))[None, None].to(self.device)
        make_video = job.shard_windows is None
        restore = job.restore if job.restore != "auto" else restore_backend_for(self.device.type)
        faces = self.face_generator(audio_features, paste_mask, on_device=make_video and restore == "torch")

        frames = sum(len(windows[index]) for index in selected)
        self.progress.start(TASK_JOB, frames)
        self.progress.start(TASK_DECODE, frames)
        self.progress.start(TASK_GENERATE, len(selected))
        self.progress.start(TASK_ENCODE, frames if make_video else 0)

        silent_video = job.scratch_dir / "video.mp4"
        encode = lambda outputs: self.restore_and_encode(outputs, silent_video, job)  # noqa: E731
        frames_without_face = run_overlapped(
            produce=lambda: self.decode_and_align(job, windows, num_frames, track, set(selected)),
            process=lambda inputs: self.generate(inputs, faces, job.store),
            consume=encode if make_video else self.count_frames_without_face,
        )
        if make_video:
            with self.timer.stage("mux", MAIN):
                mux(silent_video, speech, job.output, n_frames=num_frames, comment=job.comment)
        self.timer.finish()
        return self.result(job, num_frames, len(windows), frames_without_face, faces)

    def face_generator(
        self, audio_features: torch.Tensor, paste_mask: torch.Tensor, on_device: bool = False
    ) -> FaceGenerator:
        """The job's model work: windows of aligned faces -> generated faces (see faces.py)."""
        models, plan, settings, device, timer = self.models, self.plan, self.settings, self.device, self.timer
        return FaceGenerator(models, plan, settings, device, timer, audio_features, paste_mask, on_device)

    def check_for_a_face(self, job: SyncJob) -> None:
        """InputError unless one of the first frames (the whole video when it is short) has a face."""
        info = probe_video(job.video)
        count = max(1, min(FACE_CHECK_FRAMES, info.frame_count))
        detector = MediapipeLandmarks(stride=1, choose=job.face)
        frames = read_frames(job.video, count, loop="freeze")
        try:
            for _ in range(count):
                with self.timer.stage("decode", MAIN):
                    frame = next(frames, None)
                if frame is None:
                    break
                with self.timer.stage("landmarks", MAIN):
                    found = detector.detect(frame) is not None
                if found:
                    return
        finally:
            frames.close()
            detector.close()
        raise InputError(
            f"no face found in {job.video} (checked its first {count} frames); use a video with a clearly visible face"
        )

    def result(
        self, job: SyncJob, num_frames: int, num_windows: int, frames_without_face: int, faces: FaceGenerator
    ) -> SyncResult:
        totals = self.timer.stage_totals()
        wall = self.timer.wall_s()
        busy = self.timer.lane_busy()
        return SyncResult(
            output=job.output,
            frames=num_frames,
            output_seconds=num_frames / FPS,
            windows=num_windows,
            frames_without_face=frames_without_face,
            resumed_windows=self.resumed_windows,
            stage_seconds=totals,
            stage_sum_s=sum(totals.values()),
            wall_s=wall,
            lane_busy_s=busy,
            critical_path=critical_path(busy, self.timer.lane_stages(), serial_lane=MAIN),
            verdict=bottleneck_verdict(totals, wall, self.settings),
            optimizations=self.log.to_list() + [restore_entry(faces, self.device), encoder_entry(job).to_dict()],
            memory_downgrades=list(self.ladder.downgrades),
            unet_full_steps=faces.full_steps,
            unet_cached_steps=faces.cached_steps,
            peak_gpu_bytes=peak_gpu_bytes(self.device),
            peak_rss_bytes=peak_rss_bytes(),
            trace=self.timer.chrome_trace(),
        )

    # --- producer thread: decode, landmarks, align -----------------------------------------------

    def decode_and_align(
        self, job: SyncJob, windows: list[range], num_frames: int, track: FaceTrack | None, selected: set[int]
    ) -> Iterator[WindowInput]:
        """The selected windows, decoded and aligned (faces found here, or read from the job's face track)."""
        locate = FaceLocator(self.resolution, self.settings.face_detect_stride, job.face, track)
        frames = read_frames(job.video, num_frames, loop=job.loop)
        if self.cpu_pool is not None:  # cores to spare: decode the next frames while faces are tracked
            frames = ReadAhead(frames, READ_AHEAD_FRAMES)
        try:
            for index, frame_numbers in enumerate(windows):
                stored = track is not None and job.store.has(index)  # (a track makes stored windows valid)
                wanted = index in selected and not (stored and job.shard_windows is not None)
                if index in selected and not wanted:
                    self.resumed_windows += 1  # a shard run again: its finished windows stay as they are
                # A window already in the store needs no new crops, only its affines (to paste it back).
                window = self.decode_window(frames, locate, index, frame_numbers, crops_needed=wanted and not stored)
                if wanted:
                    yield window
        finally:
            frames.close()
            locate.close()

    def decode_window(
        self, frames: Iterator[np.ndarray], locate: FaceLocator, index: int, frame_numbers: range, crops_needed: bool
    ) -> WindowInput:
        window_frames, has_face, face_frames, affines = [], [], [], []
        for number in frame_numbers:
            with self.timer.stage("decode", PRODUCER):
                frame = next(frames)
            with self.timer.stage("landmarks", PRODUCER):
                affine = locate.affine(number, frame)
            window_frames.append(frame)
            has_face.append(affine is not None)
            if affine is not None:
                face_frames.append(frame)
                affines.append(affine)
            self.progress.advance(TASK_DECODE)
        faces, face_sources = [], []  # face_sources: a repeated picture is VAE-encoded once
        if crops_needed:  # a stored window needs no new crops, only its affines (to paste it back)
            with self.timer.stage("align", PRODUCER):
                faces, face_sources = locate.faces(face_frames, affines, self.cpu_pool)
        return WindowInput(
            index=index,
            first_frame=frame_numbers.start,
            frames=window_frames,
            has_face=np.array(has_face, dtype=bool),
            faces=self.faces_to_tensor(faces),
            affines=affines,
            face_sources=np.array(face_sources, dtype=np.int64),
        )

    def faces_to_tensor(self, faces: list[np.ndarray]) -> torch.Tensor:
        """uint8 (n, R, R, 3) -> (n, 3, R, R); pinned on CUDA so the copy to the GPU can overlap."""
        if not faces:
            return torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.uint8)
        tensor = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    # --- this thread: the model work -------------------------------------------------------------

    def generate(
        self, inputs: Iterator[WindowInput], faces: FaceGenerator, store: WindowStore
    ) -> Iterator[WindowOutput]:
        """Take windows as they come, `windows_per_call` at a time, and yield their generated faces."""
        pending: list[WindowInput] = []
        for window in inputs:
            pending.append(window)
            if len(pending) >= self.ladder.current.windows_per_call:
                yield from self.generate_windows(pending, faces, store)
                pending = []
        if pending:
            yield from self.generate_windows(pending, faces, store)

    def generate_windows(
        self, windows: list[WindowInput], faces: FaceGenerator, store: WindowStore
    ) -> list[WindowOutput]:
        """`windows` finished: loaded from the store, empty (no face), or generated and saved."""
        finished: dict[int, WindowOutput] = {}
        to_generate = []
        for window in windows:
            stored = self.load_stored(window, store)
            if stored is not None:
                finished[window.index] = stored
            elif window.face_count == 0:
                empty = torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.float16)
                finished[window.index] = WindowOutput(window, empty)
            else:
                to_generate.append(window)

        if to_generate:
            where = f"window {to_generate[0].index}" + (f"-{to_generate[-1].index}" if len(to_generate) > 1 else "")
            for output in self.ladder.run(lambda memory: faces.generate(to_generate, memory), where):
                finished[output.window.index] = output
                if not isinstance(store, NoStore):
                    stored_faces = output.wait().cpu().numpy()
                    store.save(output.window.index, faces=stored_faces, flags=output.window.has_face)
        self.progress.advance(TASK_GENERATE, len(windows))
        if faces.keep_on_device:  # generated and stored windows alike, so a resumed video is the same
            with self.timer.stage("restore", self.device.type, gpu=True):
                return [restore_on_device(finished[window.index], self.device) for window in windows]
        return [finished[window.index] for window in windows]

    def load_stored(self, window: WindowInput, store: WindowStore) -> WindowOutput | None:
        """A finished window from the store, if it is there and was made from the same face frames."""
        if not store.has(window.index):
            return None
        stored = store.load(window.index)
        if not np.array_equal(np.asarray(stored["flags"], dtype=bool), window.has_face):
            return None  # faces were found in other frames this time: generate again
        self.resumed_windows += 1
        return WindowOutput(window, torch.from_numpy(np.asarray(stored["faces"], dtype=np.float16)))

    def _use_memory_settings(self, memory: MemorySettings) -> None:
        """Called by the out-of-memory ladder after each downgrade."""
        set_vae_memory(self.models.vae, memory.vae_slicing, memory.vae_tiling)
        if self.plan.graphs is not None:
            self.plan.graphs.reset()  # captured graphs hold memory, and their shapes may change
        if memory.offload:
            self.models.unet.to("cpu")
            self.models.vae.to("cpu")

    # --- consumer thread: restore and encode -----------------------------------------------------

    def restored_frames(self, output: WindowOutput) -> list[np.ndarray]:
        """The window's frames that have a face, with the generated face pasted back (on the CPU unless done)."""
        faces = output.wait()
        if output.restored is not None:
            return list(output.restored.numpy())
        window = output.window
        if not len(faces):
            return []
        with self.timer.stage("restore", CONSUMER):
            face_frames = [frame for frame, found in zip(window.frames, window.has_face) if found]
            return restore_faces(face_frames, faces.float().numpy(), window.affines, self.cpu_pool)

    def count_frames_without_face(self, outputs: Iterator[WindowOutput]) -> int:
        """The consumer of a shard: no video is made, the windows are only counted."""
        frames_without_face = 0
        for output in outputs:
            frames_without_face += int((~output.window.has_face).sum())
            self.progress.advance(TASK_JOB, len(output.window.frames))
        return frames_without_face

    def restore_and_encode(self, outputs: Iterator[WindowOutput], path: Path, job: SyncJob) -> int:
        """Paste each face back into its frame and encode every frame; returns the frames without a face."""
        encoder = None
        frames_without_face = 0
        try:
            for output in outputs:
                window = output.window
                restored = iter(self.restored_frames(output))
                for frame, found in zip(window.frames, window.has_face):
                    frame = next(restored) if found else frame  # a frame without a face stays as it was
                    frames_without_face += int(not found)
                    with self.timer.stage("encode", CONSUMER):
                        if encoder is None:
                            height, width = frame.shape[:2]
                            encoder = VideoEncoder(path, width, height, FPS, job.crf, job.encoder_preset, job.encoder)
                        encoder.write(frame)
                    self.progress.advance(TASK_ENCODE)
                    self.progress.advance(TASK_JOB)
            if encoder is None:
                raise InputError("no frames to encode: the speech is too short")
            with self.timer.stage("encode", CONSUMER):
                encoder.finish()
        except BaseException:
            if encoder is not None:
                encoder.abort()
            raise
        return frames_without_face


def check_all_stored(store: WindowStore, num_windows: int) -> None:
    """IncompleteWorkError naming the windows a finalize step cannot find in the store."""
    missing = [index for index in range(num_windows) if not store.has(index)]
    if missing:
        shown = ", ".join(str(index) for index in missing[:20]) + (", ..." if len(missing) > 20 else "")
        raise IncompleteWorkError(
            f"--finalize: windows {shown} of {num_windows} are not in the work dir yet; run their shards first"
        )


def restore_entry(faces: FaceGenerator, device: torch.device) -> dict:
    """The paste-back's row in the optimization table."""
    if faces.keep_on_device:
        detail = f"faces pasted back on {device.type} (torch); only finished frames are copied to the host"
        return LogEntry("restore on device", APPLIED, detail).to_dict()
    return LogEntry("restore on device", OFF, "faces pasted back on the CPU with OpenCV").to_dict()


def encoder_entry(job: SyncJob) -> LogEntry:
    """The encoder's row in the optimization table."""
    status = APPLIED if job.encoder != "libx264" else OFF
    return LogEntry("encoder", status, job.encoder_reason)

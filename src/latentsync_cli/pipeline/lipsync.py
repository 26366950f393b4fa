"""LipsyncPipeline: windows in, frames out.

    audio features (the whole speech)
    then, window by window, overlapped:
      producer thread:  decode -> landmarks -> align
      this thread:      finished windows are taken as they are; the others go through
                        FaceGenerator (faces.py): VAE encode -> denoise -> VAE decode -> paste back,
                        under the out-of-memory ladder
      consumer thread:  restore into the frame -> the frame sink
    then the sink finishes the output (media.outputs.OutputWriter: encoded with the speech, moved into place).

What to do with each window (make it, take it finished, pass it over) is the
job layer's decision, handed over as a WindowPlan (jobs/run.py); the pipeline
knows nothing of work dirs or shards.

The whole run is inside `torch_switches` (TF32, the GPU memory cap), so the
process is left as it was found.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from latentsync_cli.advice import bottleneck_verdict
from latentsync_cli.constants import FPS
from latentsync_cli.errors import InputError
from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.face.restore import paste_thread_count, restore_faces
from latentsync_cli.face.restore_torch import restore_backend_for
from latentsync_cli.face.track import FaceLocator, FaceTrack
from latentsync_cli.media.video import VideoInfo, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.optimizers import APPLIED, OFF, LogEntry, OptimizationLog
from latentsync_cli.optimizers.memory import MemoryLadder, MemorySettings
from latentsync_cli.optimizers.run_plan import build_run_plan
from latentsync_cli.optimizers.torch_builtins import allocator_counts, allocator_entry
from latentsync_cli.optimizers.torch_switches import torch_switches
from latentsync_cli.optimizers.vae_memory import set_vae_memory
from latentsync_cli.pipeline.faces import FaceGenerator, restore_on_device
from latentsync_cli.pipeline.overlap import ReadAhead, run_overlapped
from latentsync_cli.pipeline.overlap_blend import OverlapBlend
from latentsync_cli.pipeline.windows import (
    FrameSink,
    GeneratedListener,
    NoiseSource,
    WindowInput,
    WindowOutput,
    WindowPlan,
)
from latentsync_cli.progress import TASK_DECODE, TASK_ENCODE, TASK_GENERATE, TASK_JOB, NoProgress, Progress
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import (
    StageTimer,
    critical_path,
    peak_gpu_bytes,
    peak_rss_bytes,
    reset_peak_gpu_memory,
)
from latentsync_cli.unet_steps import UNetSteps
from latentsync_cli.weights.load import ModelBundle

READ_AHEAD_FRAMES = 4  # decoded frames waiting for the face tracker (4 x 6 MB at 1080p)

# Lanes of the stage timer: which thread does the work. The models' lane is named after
# their device ("cuda", "cpu", "mps"; see FaceGenerator).
MAIN, PRODUCER, CONSUMER = "main", "producer", "consumer"


@dataclass(frozen=True)
class DecodedFrame:
    number: int  # output frame number
    image: np.ndarray  # RGB uint8 (H, W, 3)
    affine: np.ndarray | None  # (2, 3) frame -> face, None without a face


@dataclass
class SyncJob:
    """One video, its speech, and what the job layer decided to do with them."""

    video: VideoInfo  # probed once by the job layer; read_frames does not probe it again
    speech: np.ndarray  # float32 mono 16 kHz, as media.audio.load_audio returns it
    plan: WindowPlan  # every window's frames and what to do with it
    # Output frames a second (the video's `rate`): frame i takes the audio rows at i / fps s.
    fps: Fraction = Fraction(FPS)
    sink: FrameSink | None = None  # where the output frames go (None: a plan that makes no frames)
    loop: str = "pingpong"  # how a video shorter than the speech continues
    landmarks: LandmarkSource = field(default_factory=LandmarkSource)  # the landmark detector (and which face)
    mask_feather_px: float = 0.0  # soften the paste-back edge (the UNet still sees upstream's mask)
    face_track: FaceTrack | None = None  # the whole video's faces, found once (None: found while decoding)
    on_generated: GeneratedListener | None = None  # hears every window the models make (to keep it)
    # Where the faces are pasted back: "torch" on the model's device, "opencv" on the CPU, or
    # "auto": the faster for the device (face.restore_torch.restore_backend_for).
    restore: str = "auto"
    encoder: str = "libx264"  # the sink's encoder, for the optimization table
    encoder_reason: str = "libx264"  # why, for the optimization table
    # Every random draw (None: the tool's, from the settings' seed, per window; a test injects recorded draws).
    noise: NoiseSource | None = None


@dataclass
class SyncResult:
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
    unet_steps: UNetSteps  # what the UNet did on each denoising step, summed over UNet calls
    peak_gpu_bytes: int | None
    peak_rss_bytes: int
    trace: list[dict] = field(default_factory=list)  # Chrome trace events, one per stage span

    @property
    def seconds_per_output_second(self) -> float:
        return self.wall_s / self.output_seconds if self.output_seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
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
            "unet_steps": self.unet_steps.to_dict(),
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
        # Threads for the per-frame CPU work of the run in progress: cutting the aligned faces, the CPU paste.
        self.cpu_pool: ThreadPoolExecutor | None = None
        self.allocator_at_start = (0, 0, 0)  # the caching allocator's counts when the run began

    @property
    def log(self) -> OptimizationLog:
        return self.plan.log

    # --- the job -------------------------------------------------------------------------------

    def run(self, job: SyncJob) -> SyncResult:
        """Make the job's windows and frames; the timer's wall clock runs from when the caller started it."""
        reset_peak_gpu_memory(self.device)
        self.allocator_at_start = allocator_counts(self.device)
        threads = paste_thread_count()  # 1 on a 2-core machine: there a pool only slowed the paste
        with torch_switches(self.settings, self.device), ExitStack() as stack:
            self.cpu_pool = stack.enter_context(ThreadPoolExecutor(threads)) if threads > 1 else None
            try:
                return self.sync(job)
            except BaseException:
                if job.sink is not None:
                    job.sink.abort()
                raise

    def sync(self, job: SyncJob) -> SyncResult:
        self.progress.message("computing audio features")
        with self.timer.stage("audio features", MAIN):
            extractor = AudioFeatureExtractor(self.models.audio_encoder, self.device, fps=job.fps)
            audio_features = extractor(job.speech)  # (N, 50, 384): one row per output frame
        plan = job.plan
        # The speech makes its own frames (--length speech), or at least the video's (--length video: the
        # job cut or padded it to the fewest samples that do), of which the first are taken.
        if audio_features.shape[0] < plan.num_frames:
            raise ValueError(f"the plan has {plan.num_frames} frames, the speech {audio_features.shape[0]}")
        audio_features = audio_features[: plan.num_frames]
        paste_mask = torch.from_numpy(mouth_mask(self.resolution, job.mask_feather_px))[None, None].to(self.device)
        restore = job.restore if job.restore != "auto" else restore_backend_for(self.device.type)
        on_device = plan.make_frames and restore == "torch"
        faces = self.face_generator(audio_features, paste_mask, on_device, job.noise)

        wanted = [index for index in range(len(plan.ranges)) if plan.wanted(index)]
        frames = sum(len(plan.ranges[index]) for index in wanted)
        self.progress.start(TASK_JOB, frames)
        self.progress.start(TASK_DECODE, frames)
        self.progress.start(TASK_GENERATE, len(wanted))
        self.progress.start(TASK_ENCODE, frames if plan.make_frames else 0)

        write = lambda outputs: self.restore_and_write(outputs, job.sink)  # noqa: E731
        frames_without_face = run_overlapped(
            produce=lambda: self.decode_and_align(job),
            process=lambda inputs: self.generate(inputs, faces, job),
            consume=write if plan.make_frames else self.count_frames_without_face,
        )
        if plan.make_frames:
            with self.timer.stage("mux", MAIN):
                job.sink.finish()
        self.timer.finish()
        return self.result(job, frames_without_face, faces)

    def face_generator(
        self,
        audio_features: torch.Tensor,
        paste_mask: torch.Tensor,
        on_device: bool = False,
        noise: NoiseSource | None = None,
    ) -> FaceGenerator:
        """The job's model work: windows of aligned faces -> generated faces (see faces.py)."""
        models, plan, settings, device, timer = self.models, self.plan, self.settings, self.device, self.timer
        return FaceGenerator(models, plan, settings, device, timer, audio_features, paste_mask, on_device, noise)

    def result(self, job: SyncJob, frames_without_face: int, faces: FaceGenerator) -> SyncResult:
        totals = self.timer.stage_totals()
        wall = self.timer.wall_s()
        busy = self.timer.lane_busy()
        num_frames = job.plan.num_frames
        return SyncResult(
            frames=num_frames,
            output_seconds=float(num_frames / job.fps),
            windows=len(job.plan.ranges),
            frames_without_face=frames_without_face,
            resumed_windows=job.plan.resumed,
            stage_seconds=totals,
            stage_sum_s=sum(totals.values()),
            wall_s=wall,
            lane_busy_s=busy,
            critical_path=critical_path(busy, self.timer.lane_stages(), serial_lane=MAIN),
            verdict=bottleneck_verdict(totals, wall, self.settings),
            optimizations=self.log.to_list() + [restore_entry(faces, self.device), encoder_entry(job).to_dict(),
                                                 allocator_entry(self.device, self.allocator_at_start).to_dict()],
            memory_downgrades=list(self.ladder.downgrades),
            unet_steps=faces.steps,
            peak_gpu_bytes=peak_gpu_bytes(self.device),
            peak_rss_bytes=peak_rss_bytes(),
            trace=self.timer.chrome_trace(),
        )

    # --- producer thread: decode, landmarks, align -----------------------------------------------

    def decode_and_align(self, job: SyncJob) -> Iterator[WindowInput]:
        """The windows the plan wants, decoded and aligned (faces found here, or read from the job's face track).

        Every frame up to the last wanted window is decoded once, in order (face tracking carries state
        from frame to frame); only the windows to generate are cut into aligned faces. With window
        overlap a window also takes the previous window's last frames (decoded once, kept here).
        """
        plan = job.plan
        ranges = plan.ranges[: plan.last_wanted + 1]
        locate = FaceLocator(self.resolution, job.landmarks, job.face_track)
        frames = read_frames(job.video, ranges[-1].stop if ranges else 0, loop=job.loop)
        if self.cpu_pool is not None:  # cores to spare: decode the next frames while faces are tracked
            frames = ReadAhead(frames, READ_AHEAD_FRAMES)
        decoded: list[DecodedFrame] = []
        try:
            for index, frame_numbers in enumerate(ranges):
                lead = [frame for frame in decoded if frame.number in plan.made_range(index)]
                decoded = self.decode_frames(frames, locate, frame_numbers)
                if plan.wanted(index):
                    yield self.window_input(locate, index, lead + decoded, len(lead), index in plan.generate)
        finally:
            frames.close()
            locate.close()

    def decode_frames(self, frames: Iterator[np.ndarray], locate: FaceLocator, numbers: range) -> list[DecodedFrame]:
        """The next frames of the video and their faces' affines (None: no face)."""
        decoded = []
        for number in numbers:
            with self.timer.stage("decode", PRODUCER):
                frame = next(frames)
            with self.timer.stage("landmarks", PRODUCER):
                decoded.append(DecodedFrame(number, frame, locate.affine(number, frame)))
            self.progress.advance(TASK_DECODE)
        return decoded

    def window_input(
        self, locate: FaceLocator, index: int, decoded: list[DecodedFrame], lead: int, crops_needed: bool
    ) -> WindowInput:
        """Window `index` of the decoded frames (the first `lead` of them the previous window's)."""
        with_face = [frame for frame in decoded if frame.affine is not None]
        affines = [frame.affine for frame in with_face]
        faces, face_sources = [], []  # face_sources: a repeated picture is VAE-encoded once
        if crops_needed:  # a finished window needs no new crops, only its affines (to paste it back)
            with self.timer.stage("align", PRODUCER):
                faces, face_sources = locate.faces([frame.image for frame in with_face], affines, self.cpu_pool)
        return WindowInput(
            index=index,
            first_frame=decoded[0].number,
            frames=[frame.image for frame in decoded],
            has_face=np.array([frame.affine is not None for frame in decoded], dtype=bool),
            faces=self.faces_to_tensor(faces),
            affines=affines,
            face_sources=np.array(face_sources, dtype=np.int64),
            lead=lead,
        )

    def faces_to_tensor(self, faces: list[np.ndarray]) -> torch.Tensor:
        """uint8 (n, R, R, 3) -> (n, 3, R, R); pinned on CUDA so the copy to the GPU can overlap."""
        if not faces:
            return torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.uint8)
        tensor = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    # --- this thread: the model work -------------------------------------------------------------

    def generate(self, inputs: Iterator[WindowInput], faces: FaceGenerator, job: SyncJob) -> Iterator[WindowOutput]:
        """Take windows as they come, `windows_per_call` at a time, and yield their generated faces.

        With window overlap each window waits for the next one, whose lead frames it is blended with.
        """
        blend = OverlapBlend()
        pending: list[WindowInput] = []
        for window in inputs:
            pending.append(window)
            if len(pending) >= self.ladder.current.windows_per_call:
                for output in self.generate_windows(pending, faces, job.plan, job.on_generated):
                    yield from self.restored_on_device(blend.push(output), faces)
                pending = []
        if pending:
            for output in self.generate_windows(pending, faces, job.plan, job.on_generated):
                yield from self.restored_on_device(blend.push(output), faces)
        yield from self.restored_on_device(blend.flush(), faces)

    def restored_on_device(self, outputs: list[WindowOutput], faces: FaceGenerator) -> list[WindowOutput]:
        """The windows pasted back on the model's device, where the job does that (restore_on_device)."""
        if not faces.keep_on_device or not outputs:
            return outputs
        with self.timer.stage("restore", self.device.type, gpu=True):  # generated and finished windows alike
            return [restore_on_device(output, self.device) for output in outputs]

    def generate_windows(
        self,
        windows: list[WindowInput],
        faces: FaceGenerator,
        plan: WindowPlan,
        on_generated: GeneratedListener | None = None,
    ) -> list[WindowOutput]:
        """`windows` done: taken finished, empty (no face), or generated (and told to `on_generated`), unblended."""
        done: dict[int, WindowOutput] = {}
        to_generate = []
        for window in windows:
            if window.index in plan.finished:
                done[window.index] = WindowOutput(window, torch.from_numpy(plan.finished[window.index]()))
            elif window.face_count == 0:
                empty = torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.float16)
                done[window.index] = WindowOutput(window, empty)
            else:
                to_generate.append(window)

        if to_generate:
            where = f"window {to_generate[0].index}" + (f"-{to_generate[-1].index}" if len(to_generate) > 1 else "")
            for output in self.ladder.run(lambda memory: faces.generate(to_generate, memory), where):
                done[output.window.index] = output
                if on_generated is not None:
                    on_generated(output.window.index, output.wait().cpu().numpy(), output.window.has_face)
        self.progress.advance(TASK_GENERATE, len(windows))
        return [done[window.index] for window in windows]

    def _use_memory_settings(self, memory: MemorySettings) -> None:
        """Called by the out-of-memory ladder after each downgrade."""
        set_vae_memory(self.models.vae, memory.vae_slicing, memory.vae_tiling)
        if self.plan.graphs is not None:
            self.plan.graphs.reset()  # captured graphs hold memory, and their shapes may change
        if memory.offload:
            self.models.unet.to("cpu")
            self.models.vae.to("cpu")

    # --- consumer thread: restore and write ------------------------------------------------------

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
        """The consumer of a plan that makes no frames: the windows are only counted."""
        frames_without_face = 0
        for output in outputs:
            frames_without_face += int((~output.window.has_face).sum())
            self.progress.advance(TASK_JOB, len(output.window.frames))
        return frames_without_face

    def restore_and_write(self, outputs: Iterator[WindowOutput], sink: FrameSink) -> int:
        """Paste each face back into its frame and hand every frame to `sink`; returns the frames without a face."""
        frames_without_face = written = 0
        for output in outputs:
            window = output.window
            restored = iter(self.restored_frames(output))
            for frame, found in zip(window.frames, window.has_face):
                frame = next(restored) if found else frame  # a frame without a face stays as it was
                frames_without_face += int(not found)
                with self.timer.stage("encode", CONSUMER):
                    sink.write(frame)
                written += 1
                self.progress.advance(TASK_ENCODE)
                self.progress.advance(TASK_JOB)
        if written == 0:
            raise InputError("no frames to encode: the speech is too short")
        with self.timer.stage("encode", CONSUMER):
            sink.end_of_frames()
        return frames_without_face


def restore_entry(faces: FaceGenerator, device: torch.device) -> dict:
    """The paste-back's row in the optimization table."""
    if faces.keep_on_device:
        detail = f"faces pasted back on {device.type} (torch); only finished frames are copied to the host"
        return LogEntry("restore on device", APPLIED, detail).to_dict()
    return LogEntry("restore on device", OFF, "faces pasted back on the CPU with OpenCV").to_dict()


def encoder_entry(job: SyncJob) -> LogEntry:
    """The encoder's row in the optimization table."""
    status = APPLIED if job.encoder == "h264_nvenc" else OFF  # the one encoder that is a speed-up
    return LogEntry("encoder", status, job.encoder_reason)

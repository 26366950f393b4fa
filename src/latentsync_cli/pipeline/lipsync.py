"""LipsyncPipeline: one video and one speech track in, one lip-synced MP4 out.

    face check (first frames) -> audio features (whole file)
    then, window by window, overlapped:
      producer thread:  decode -> landmarks -> align
      this thread:      VAE encode -> denoise -> VAE decode -> paste the unmasked pixels back
      consumer thread:  restore into the frame -> encode
    then mux the speech in.

What runs on the GPU follows upstream (LATENTSYNC_REFERENCE.md): one initial
noise shared by all frames, masked and reference latents sampled from the VAE,
the 13-channel UNet input, classifier-free guidance with zero audio, and the
unmasked pixels pasted back after decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from latentsync_cli.errors import InputError
from latentsync_cli.face.align import FaceAligner
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.face.mask import latent_mask, mouth_mask
from latentsync_cli.face.restore import restore_faces
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.encode import VideoEncoder, mux
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.models.vae import decode_latents, encode_latents
from latentsync_cli.models.weights import ModelBundle
from latentsync_cli.optimizers.memory import MemoryLadder, MemorySettings, on_device
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.optimizers.stack import apply_optimizations
from latentsync_cli.optimizers.vae_memory import set_vae_memory
from latentsync_cli.pipeline.denoise import DenoiseInputs, denoise, pad_inputs
from latentsync_cli.pipeline.overlap import run_overlapped
from latentsync_cli.pipeline.windows import (
    NoStore,
    WindowInput,
    WindowOutput,
    WindowStore,
    shared_noise,
    window_generator,
    window_ranges,
)
from latentsync_cli.settings import RunSettings
from latentsync_cli.timing import (
    StageTimer,
    bottleneck_verdict,
    critical_path,
    peak_gpu_bytes,
    peak_rss_bytes,
    reset_peak_gpu_memory,
)

FPS = 25
FACE_CHECK_FRAMES = 50  # "no face" is decided on the first frames, before any model work

# Lanes of the stage timer: which thread does the work.
MAIN, PRODUCER, GPU, CONSUMER = "main", "producer", "gpu", "consumer"

# Progress tasks (the CLI shows one bar each).
TASK_JOB = "job"
TASK_DECODE = "decode + align"
TASK_GENERATE = "generate"
TASK_ENCODE = "restore + encode"


class Progress(Protocol):
    def start(self, task: str, total: int) -> None: ...

    def advance(self, task: str, amount: int = 1) -> None: ...


class NoProgress:
    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, amount: int = 1) -> None:
        pass


@dataclass
class SyncJob:
    video: Path
    audio: Path | None  # None: the video's own audio track
    output: Path
    scratch_dir: Path  # private temporary folder beside the output (jobs.job_scratch_dir)
    loop: str = "pingpong"  # how a video shorter than the speech continues
    face: str = "largest"  # which face when there are several: largest | center
    mask_feather_px: float = 0.0  # soften the paste-back edge (the UNet still sees upstream's mask)
    crf: int = 18
    # x264 "medium" (upstream's) encodes 1080p at a few frames per second on a small CPU and
    # becomes the bottleneck of the CPU lanes; "veryfast" is 2.3x faster at the same CRF.
    encoder_preset: str = "veryfast"
    store: WindowStore = field(default_factory=NoStore)
    speech: np.ndarray | None = None  # the decoded speech (float32 mono 16 kHz); None: decode the file here


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
        self.latent_size = models.resolution // 8
        self.plan = apply_optimizations(
            models.unet, models.vae, settings, self.device, models.resolution, compile_backend
        )
        self.ladder = MemoryLadder(self.plan.memory, self.device, self.plan.log, self._use_memory_settings)
        # The UNet's mask channel and the masked image use upstream's hard-edged mask.
        unet_mask = mouth_mask(self.resolution)
        self.image_mask = torch.from_numpy(unet_mask)[None, None].to(self.device)  # (1, 1, R, R)
        self.latent_mask = torch.from_numpy(latent_mask(unet_mask, self.latent_size))[None, None, None]
        self.noise = shared_noise(settings.seed, self.latent_size)
        self.resumed_windows = 0
        self.unet_steps = {"full": 0, "cached": 0}

    @property
    def log(self):
        return self.plan.log

    # --- the job -------------------------------------------------------------------------------

    def run(self, job: SyncJob) -> SyncResult:
        self.timer.restart()
        reset_peak_gpu_memory(self.device)
        self.resumed_windows = 0
        self.unet_steps = {"full": 0, "cached": 0}
        self.check_for_a_face(job)

        with self.timer.stage("audio features", MAIN):
            audio = job.speech if job.speech is not None else load_audio(job.audio or job.video)
            extractor = AudioFeatureExtractor(self.models.audio_encoder, self.device)
            audio_features = extractor(audio)  # (N, 50, 384): one row per output frame
        num_frames = audio_features.shape[0]
        windows = window_ranges(num_frames, self.settings.window)
        paste_mask = torch.from_numpy(mouth_mask(self.resolution, job.mask_feather_px))[None, None].to(self.device)

        self.progress.start(TASK_JOB, num_frames)
        self.progress.start(TASK_DECODE, num_frames)
        self.progress.start(TASK_GENERATE, len(windows))
        self.progress.start(TASK_ENCODE, num_frames)

        silent_video = job.scratch_dir / "video.mp4"
        frames_without_face = run_overlapped(
            produce=lambda: self.decode_and_align(job, windows, num_frames),
            process=lambda inputs: self.generate(inputs, audio_features, paste_mask, job.store),
            consume=lambda outputs: self.restore_and_encode(outputs, silent_video, job.crf, job.encoder_preset),
        )
        with self.timer.stage("mux", MAIN):
            mux(silent_video, audio, job.output, n_frames=num_frames)
        self.timer.finish()
        return self.result(job, num_frames, len(windows), frames_without_face)

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

    def result(self, job: SyncJob, num_frames: int, num_windows: int, frames_without_face: int) -> SyncResult:
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
            optimizations=self.log.to_list(),
            memory_downgrades=list(self.ladder.downgrades),
            unet_full_steps=self.unet_steps["full"],
            unet_cached_steps=self.unet_steps["cached"],
            peak_gpu_bytes=peak_gpu_bytes(self.device),
            peak_rss_bytes=peak_rss_bytes(),
            trace=self.timer.chrome_trace(),
        )

    # --- producer thread: decode, landmarks, align -----------------------------------------------

    def decode_and_align(self, job: SyncJob, windows: list[range], num_frames: int) -> Iterator[WindowInput]:
        detector = MediapipeLandmarks(stride=self.settings.face_detect_stride, choose=job.face)
        aligner = FaceAligner(self.resolution)
        frames = read_frames(job.video, num_frames, loop=job.loop)
        try:
            for index, frame_numbers in enumerate(windows):
                window_frames, has_face, faces, affines = [], [], [], []
                for _ in frame_numbers:
                    with self.timer.stage("decode", PRODUCER):
                        frame = next(frames)
                    with self.timer.stage("landmarks", PRODUCER):
                        found = detector.detect(frame)
                    window_frames.append(frame)
                    has_face.append(found is not None)
                    if found is not None:
                        with self.timer.stage("align", PRODUCER):
                            aligned = aligner.align(frame, found.points)
                        faces.append(aligned.face)
                        affines.append(aligned.affine)
                    self.progress.advance(TASK_DECODE)
                yield WindowInput(
                    index=index,
                    first_frame=frame_numbers.start,
                    frames=window_frames,
                    has_face=np.array(has_face, dtype=bool),
                    faces=self.faces_to_tensor(faces),
                    affines=affines,
                )
        finally:
            frames.close()
            detector.close()

    def faces_to_tensor(self, faces: list[np.ndarray]) -> torch.Tensor:
        """uint8 (n, R, R, 3) -> (n, 3, R, R); pinned on CUDA so the copy to the GPU can overlap."""
        if not faces:
            return torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.uint8)
        tensor = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    # --- this thread: the GPU work ---------------------------------------------------------------

    def generate(
        self, inputs: Iterator[WindowInput], audio_features: torch.Tensor, paste_mask: torch.Tensor, store: WindowStore
    ) -> Iterator[WindowOutput]:
        """Take windows as they come, `windows_per_call` at a time, and yield their generated faces."""
        pending: list[WindowInput] = []
        for window in inputs:
            pending.append(window)
            if len(pending) >= self.ladder.current.windows_per_call:
                yield from self.generate_windows(pending, audio_features, paste_mask, store)
                pending = []
        if pending:
            yield from self.generate_windows(pending, audio_features, paste_mask, store)

    def generate_windows(
        self, windows: list[WindowInput], audio_features: torch.Tensor, paste_mask: torch.Tensor, store: WindowStore
    ) -> list[WindowOutput]:
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
            outputs = self.ladder.run(
                lambda memory: self.generate_with(memory, to_generate, audio_features, paste_mask), where
            )
            for output in outputs:
                finished[output.window.index] = output
                if not isinstance(store, NoStore):
                    store.save(output.window.index, faces=output.wait().numpy(), flags=output.window.has_face)
        self.progress.advance(TASK_GENERATE, len(windows))
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

    def generate_with(
        self,
        memory: MemorySettings,
        windows: list[WindowInput],
        audio_features: torch.Tensor,
        paste_mask: torch.Tensor,
    ) -> list[WindowOutput]:
        """All of `windows`, in UNet calls of up to `memory.windows_per_call` windows with equal face counts."""
        outputs = []
        for batch in batches_of_equal_length(windows, memory.windows_per_call):
            outputs += self.generate_batch(batch, memory, audio_features, paste_mask)
        return outputs

    @torch.no_grad()
    def generate_batch(
        self,
        batch: list[WindowInput],
        memory: MemorySettings,
        audio_features: torch.Tensor,
        paste_mask: torch.Tensor,
    ) -> list[WindowOutput]:
        models, device, seed = self.models, self.device, self.settings.seed
        pixels = [window.faces.to(device, non_blocking=True).float() / 127.5 - 1.0 for window in batch]

        with on_device(models.vae, device, memory.offload), self.timer.stage("VAE encode", GPU, gpu=True):
            masked_latents, reference_latents = [], []
            for window, faces in zip(batch, pixels):
                generator = window_generator(seed, window.index)  # masked first, then reference, as upstream
                masked_latents.append(encode_latents(models.vae, faces * self.image_mask, generator))
                reference_latents.append(encode_latents(models.vae, faces, generator))

        with on_device(models.unet, device, memory.offload), self.timer.stage("denoise", GPU, gpu=True):
            latents = self.denoise_batch(batch, masked_latents, reference_latents, audio_features)

        outputs = []
        with on_device(models.vae, device, memory.offload), self.timer.stage("VAE decode", GPU, gpu=True):
            for position, (window, faces) in enumerate(zip(batch, pixels)):
                decoded = decode_latents(models.vae, latents[position].transpose(0, 1)).float()  # (n, 3, R, R)
                pasted = decoded * (1.0 - paste_mask) + faces * paste_mask
                outputs.append(self.to_host(window, pasted.to(torch.float16)))
        return outputs

    def denoise_batch(
        self,
        batch: list[WindowInput],
        masked_latents: list[torch.Tensor],
        reference_latents: list[torch.Tensor],
        audio_features: torch.Tensor,
    ) -> torch.Tensor:
        """(B, 4, n, h, w) denoised latents for B windows of n face frames each."""
        windows, frames = len(batch), batch[0].face_count
        scheduler = make_scheduler(self.settings.scheduler, self.settings.steps, self.device)

        def frames_second(latents: list[torch.Tensor]) -> torch.Tensor:  # B x (n, 4, h, w) -> (B, 4, n, h, w)
            return torch.stack(latents).transpose(1, 2).float()

        audio_rows = np.concatenate([window.face_frame_numbers for window in batch])
        inputs = DenoiseInputs(
            mask=self.latent_mask.repeat(windows, 1, frames, 1, 1).to(self.device),
            masked_latents=frames_second(masked_latents),
            reference_latents=frames_second(reference_latents),
            audio_embeds=audio_features[torch.from_numpy(audio_rows)].to(self.device, non_blocking=True),
        )
        latents = self.noise.repeat(windows, 1, frames, 1, 1).to(self.device) * scheduler.init_noise_sigma
        if self.plan.pad_frames_to is not None:
            latents, inputs = pad_inputs(latents, inputs, self.plan.pad_frames_to)
        latents = denoise(self.plan.unet_call, scheduler, latents, inputs, self.settings.guidance, self.plan.deepcache)
        steps = len(scheduler.timesteps)
        full = len(self.plan.deepcache.full_pass_steps(steps))
        self.unet_steps["full"] += full
        self.unet_steps["cached"] += steps - full
        return latents[:, :, :frames]

    def to_host(self, window: WindowInput, faces: torch.Tensor) -> WindowOutput:
        """Start copying the faces to the CPU; on CUDA the copy overlaps the next window's work."""
        if self.device.type != "cuda":
            return WindowOutput(window, faces.cpu())
        host = torch.empty(faces.shape, dtype=faces.dtype, pin_memory=True)
        host.copy_(faces, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return WindowOutput(window, host, ready)

    def _use_memory_settings(self, memory: MemorySettings) -> None:
        """Called by the out-of-memory ladder after each downgrade."""
        set_vae_memory(self.models.vae, memory.vae_slicing, memory.vae_tiling)
        if self.plan.graphs is not None:
            self.plan.graphs.reset()  # captured graphs hold memory, and their shapes may change
        if memory.offload:
            self.models.unet.to("cpu")
            self.models.vae.to("cpu")

    # --- consumer thread: restore and encode -----------------------------------------------------

    def restore_and_encode(self, outputs: Iterator[WindowOutput], path: Path, crf: int, preset: str) -> int:
        """Paste each face back into its frame and encode every frame; returns the frames without a face."""
        encoder = None
        frames_without_face = 0
        try:
            for output in outputs:
                window = output.window
                faces = output.wait().float().numpy()
                with self.timer.stage("restore", CONSUMER):
                    face_frames = [frame for frame, found in zip(window.frames, window.has_face) if found]
                    restored = iter(restore_faces(face_frames, faces, window.affines)) if len(faces) else iter(())
                for frame, found in zip(window.frames, window.has_face):
                    frame = next(restored) if found else frame  # a frame without a face stays as it was
                    frames_without_face += int(not found)
                    with self.timer.stage("encode", CONSUMER):
                        if encoder is None:
                            height, width = frame.shape[:2]
                            encoder = VideoEncoder(path, width, height, fps=FPS, crf=crf, preset=preset)
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


def batches_of_equal_length(windows: list[WindowInput], size: int) -> list[list[WindowInput]]:
    """Consecutive windows with the same face count, at most `size` per batch (they share a UNet call)."""
    batches: list[list[WindowInput]] = []
    for window in windows:
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and last[0].face_count == window.face_count:
            last.append(window)
        else:
            batches.append([window])
    return batches

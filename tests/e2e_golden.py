"""Upstream's end-to-end run on tiny models (golden fixture `e2e_tiny`), and the project's own stages on its inputs.

The fixture is upstream's LipsyncPipeline run on the CPU in fp32: 10 real frames,
0.88 s of speech, 24 output frames (ping-pong loop, windows of 16 + 8), every
random draw recorded, three runs (A: 3 DDIM steps, guidance 1.5; B: 6 steps with
DeepCache interval 3, branch 0; C: 3 steps, guidance 1.0). See the e2e_tiny
section of the golden README for what it holds and its two tiers of tolerance.

tests/test_golden_e2e.py checks each stage with these pieces; they are also what
a whole-pipeline run needs to reproduce the fixture (the recorded draws, the
landmark stub, the frame comparison).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from conftest import FrameList
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from latentsync_cli.face.insightface_points import LEFT_BROW, NOSE, RIGHT_BROW, InsightfaceLandmarks
from latentsync_cli.face.mask import draw_mask_256, mouth_mask
from latentsync_cli.face.restore import restore_faces
from latentsync_cli.face.restore_torch import restore_faces_torch
from latentsync_cli.face.track import FaceLocator
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.video import probe_video
from latentsync_cli.models.frame_count import output_frame_count
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import LATENT_SCALE
from latentsync_cli.models.whisper import load_whisper_encoder
from latentsync_cli.optimizers.run_plan import RunPlan, build_run_plan
from latentsync_cli.pipeline.denoise import DenoiseResult
from latentsync_cli.pipeline.faces import FaceGenerator
from latentsync_cli.pipeline.lipsync import LipsyncPipeline, SyncJob
from latentsync_cli.pipeline.windows import WindowInput, WindowPlan, window_ranges
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import StageTimer
from latentsync_cli.weights.checkpoint import load_unet
from latentsync_cli.weights.load import ModelBundle

FOLDER = "e2e_tiny"
RESOLUTION = 512
WINDOW = 16  # upstream's num_frames
CPU = torch.device("cpu")


@dataclass(frozen=True)
class RunSpec:
    steps: int
    guidance: float
    deepcache: bool
    tier1_latents_atol: float
    tier2_latents_atol: float


# The windows the suite runs at tier 1 (each model run is minutes on a CPU): A its 16-frame window, B and C
# their 8-frame one (DeepCache, guidance 1.0, the short window's path). The whole-pipeline run covers both
# windows at tier 2; scripts/measure_upstream_parity.py runs every window of every run.
SUITE_WINDOWS = {"A": (0,), "B": (1,), "C": (1,)}
# The run the suite takes through the whole pipeline: C, because guidance 1.0 makes one UNet pass per step
# where A's guidance makes two; tier 1 checks the guided pass (A) through the same FaceGenerator.
PIPELINE_RUN = "C"
RUNS = {
    "A": RunSpec(steps=3, guidance=1.5, deepcache=False, tier1_latents_atol=1e-3, tier2_latents_atol=0.05),
    "B": RunSpec(steps=6, guidance=1.5, deepcache=True, tier1_latents_atol=2e-3, tier2_latents_atol=0.1),
    "C": RunSpec(steps=3, guidance=1.0, deepcache=False, tier1_latents_atol=1e-3, tier2_latents_atol=0.05),
}


@dataclass(frozen=True)
class FrameTolerance:
    """Inside the fixture's out_box; outside it the frames must equal the looped input exactly."""

    max: int  # largest |difference| in grey levels
    share_over_1: float  # share of values more than 1 grey level off
    mean: float  # mean |difference|


TIER1_FRAMES = FrameTolerance(max=2, share_over_1=1e-4, mean=0.005)
TIER2_FRAMES = FrameTolerance(max=4, share_over_1=0.02, mean=0.05)
# The whole pipeline adds two differences on purpose to tier 2 (the looped frames aligned as they stream, so the
# restore resamples each face's footprint up to 0.025 px elsewhere; float16 faces): measured max 5, 0.056 % of
# values more than 1 off, mean 0.043 on run A; max 4, 0.095 %, mean 0.048 on run C (docs/UPSTREAM.md). Tier 2's
# share and mean, a max of 6.
PIPELINE_FRAMES = replace(TIER2_FRAMES, max=6)


@dataclass
class Fixture:
    frames: np.ndarray  # uint8 (10, 560, 480, 3) RGB: upstream's input frames
    points: np.ndarray  # int64 (10, 3, 2): each frame's three alignment points, (x, y)
    face_boxes: np.ndarray  # (10, 4): the face mesh's extent (upstream only checks it against None)
    audio_samples: np.ndarray  # float32 (14080,): speech.wav's samples, int16 / 32768
    stages: dict[str, torch.Tensor]  # mel, whisper_feature, whisper_chunks, loop_order, affine_matrices, faces_512...
    draws: dict[str, torch.Tensor]  # the five draws, named in upstream's order
    runs: dict[str, dict[str, torch.Tensor]]  # run name -> final latents, timesteps, frames_out_box/index
    record: dict  # e2e_tiny.json
    folder: Path

    @property
    def loop_order(self) -> np.ndarray:
        return self.stages["loop_order"].numpy()

    @property
    def affines(self) -> np.ndarray:
        """float64 (10, 2, 3): upstream's frame -> crop matrices (float32 in the fixture)."""
        return self.stages["affine_matrices"].numpy().astype(np.float64)

    @property
    def out_box(self) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = self.stages["out_box"].tolist()
        return x1, y1, x2, y2

    def looped_frames(self) -> np.ndarray:
        return self.frames[self.loop_order]


def load_fixture(golden_dir: Path) -> Fixture:
    folder = golden_dir / FOLDER
    inputs = load_file(str(folder / "frames.safetensors"))
    return Fixture(
        frames=inputs["frames"].numpy(),
        points=inputs["points"].numpy(),
        face_boxes=inputs["face_boxes"].numpy(),
        audio_samples=inputs["audio_samples"].numpy(),
        stages=load_file(str(folder / "stages.safetensors")),
        draws=load_file(str(folder / "noise.safetensors")),
        runs={name: load_file(str(folder / f"run_{name}.safetensors")) for name in RUNS},
        record=json.loads((folder / "e2e_tiny.json").read_text()),
        folder=folder,
    )


def load_models(golden_dir: Path) -> ModelBundle:
    """The fixture's tiny UNet, tiny AutoencoderKL and Whisper-tiny-shaped encoder (fp16 weights), on the CPU."""
    folder = golden_dir / FOLDER
    unet_config = UNetConfig.from_dict(json.loads((golden_dir / "unet_tiny_config.json").read_text()))
    unet = load_unet(golden_dir / "unet_tiny_checkpoint.pt", unet_config, CPU, torch.float32)
    vae = AutoencoderKL.from_config(json.loads((folder / "vae_config.json").read_text()))
    vae.load_state_dict(load_file(str(folder / "vae.safetensors")), strict=True)
    vae.register_to_config(scaling_factor=LATENT_SCALE, shift_factor=0.0)  # as upstream's inference.py sets them
    vae.eval().requires_grad_(False)
    encoder = load_whisper_encoder(folder / "whisper_e2e.pt", CPU, torch.float32)
    return ModelBundle(unet, vae, encoder, RESOLUTION, "golden-e2e-tiny", "golden e2e_tiny models", is_random=True)


def run_settings(spec: RunSpec) -> RunSettings:
    """The run's settings; the rest at their defaults (fp32 on the CPU, sliced VAE, no tiling)."""
    return RunSettings(
        steps=spec.steps,
        scheduler="ddim",
        guidance=spec.guidance,
        window=WINDOW,
        deepcache=spec.deepcache,
        deepcache_interval=3,
        deepcache_branch=0,
    )


def mouth_mask_float64(resolution: int) -> np.ndarray:
    """Upstream's mask before any cast: Lanczos4 of the 256 px drawing, / 255 in float64."""
    resized = cv2.resize(draw_mask_256(), (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return resized / 255.0


class RecordedNoise:
    """A NoiseSource handing out upstream's recorded draws; it keeps the order in which windows asked."""

    def __init__(self, draws: dict[str, torch.Tensor]):
        self.draws = draws
        self.calls: list[tuple[int, tuple[int, ...]]] = []  # (window, shape) of each posterior_draws call

    def initial_noise(self, latent_size: int) -> torch.Tensor:
        noise = self.draws["0_init_latents"]
        assert tuple(noise.shape) == (1, 4, 1, latent_size, latent_size), noise.shape
        return noise.clone()

    def posterior_draws(self, window_index: int, shape, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((window_index, tuple(shape)))
        first = 1 + 2 * window_index  # upstream drew each window's masked faces' draw, then the reference's
        masked = self.draws[f"{first}_w{window_index}_masked_posterior"]
        reference = self.draws[f"{first + 1}_w{window_index}_ref_posterior"]
        assert tuple(masked.shape) == tuple(reference.shape) == tuple(shape), (masked.shape, shape)
        return masked.to(device, dtype), reference.to(device, dtype)


class FixtureFaceAnalysis:
    """Stands in for InsightFace's FaceAnalysis as upstream's stub detector did in the fixture's run: for the
    stored frame i, one face with box face_boxes[i] whose 106 landmarks are 0 except the three groups the
    alignment points are means of, all at points[i] (so the group means, rounded, are points[i])."""

    def __init__(self, fixture: Fixture):
        self.fixture = fixture
        self.calls: list[int] = []  # which stored frame each call found

    def get(self, frame_rgb: np.ndarray) -> list[SimpleNamespace]:
        for index, stored in enumerate(self.fixture.frames):
            if np.array_equal(stored, frame_rgb):
                self.calls.append(index)
                landmarks = np.zeros((106, 2), dtype=np.int64)
                for group, point in zip((LEFT_BROW, RIGHT_BROW, NOSE), self.fixture.points[index]):
                    landmarks[list(group)] = point
                box = self.fixture.face_boxes[index].astype(np.float32)
                return [SimpleNamespace(bbox=box, det_score=1.0, landmark_2d_106=landmarks)]
        raise AssertionError("the frame is none of the fixture's frames")


class FixtureLandmarks:
    """A stand-in for face.detectors.LandmarkSource: each detector is the project's InsightfaceLandmarks
    (upstream's filters, choice of face and rounding) on a FixtureFaceAnalysis."""

    def __init__(self, fixture: Fixture):
        self.fixture = fixture
        self.analyses: list[FixtureFaceAnalysis] = []  # one per detector made, in order

    def new_detector(self) -> InsightfaceLandmarks:
        self.analyses.append(FixtureFaceAnalysis(self.fixture))
        return InsightfaceLandmarks("largest", Path("unused"), analysis=self.analyses[-1])

    def every_frame(self) -> FixtureLandmarks:
        return self


def repeat_sources(frame_indices) -> np.ndarray:
    """For each face, the first face of its run of repeats (the loop's turn-around frames repeat)."""
    sources: list[int] = []
    for position, frame in enumerate(frame_indices):
        repeated = position > 0 and frame_indices[position - 1] == frame
        sources.append(sources[-1] if repeated else position)
    return np.array(sources, dtype=np.int64)


def injected_windows(fixture: Fixture, num_frames: int) -> list[WindowInput]:
    """Tier 1: the windows with upstream's aligned faces and matrices, reused in loop order as upstream does."""
    faces, affines = fixture.stages["faces_512"], fixture.affines
    windows = []
    for index, numbers in enumerate(window_ranges(num_frames, WINDOW)):
        frame_indices = fixture.loop_order[numbers.start : numbers.stop]
        windows.append(
            WindowInput(
                index=index,
                first_frame=numbers.start,
                frames=[fixture.frames[frame] for frame in frame_indices],
                has_face=np.ones(len(frame_indices), dtype=bool),
                faces=faces[torch.from_numpy(frame_indices)].contiguous(),
                affines=[affines[frame] for frame in frame_indices],
                face_sources=repeat_sources(frame_indices),
            )
        )
    return windows


def suite_windows(fixture: Fixture, num_frames: int, run: str) -> list[WindowInput]:
    """The tier-1 windows the suite computes of `run` (SUITE_WINDOWS)."""
    return [window for window in injected_windows(fixture, num_frames) if window.index in SUITE_WINDOWS[run]]


def own_alignment(fixture: Fixture) -> tuple[np.ndarray, np.ndarray]:
    """Tier 2: the project's FaceLocator on frames 0..9 in order, the points from FixtureLandmarks.

    Returns the matrices (10, 2, 3) and the aligned faces uint8 (10, 3, R, R);
    upstream aligns the 10 frames once and reuses them in loop order.
    """
    landmarks = FixtureLandmarks(fixture)
    locate = FaceLocator(RESOLUTION, landmarks)
    frames = list(fixture.frames)
    affines = [locate.affine(number, frame) for number, frame in enumerate(frames)]
    faces, _ = locate.faces(frames, affines)
    assert landmarks.analyses[0].calls == list(range(len(frames)))
    return np.stack(affines), np.stack(faces).transpose(0, 3, 1, 2)


def own_windows(fixture: Fixture, num_frames: int, affines: np.ndarray, faces: np.ndarray) -> list[WindowInput]:
    """Tier 2: the windows with the project's own alignment (from own_alignment), reused in loop order."""
    windows = injected_windows(fixture, num_frames)
    for window in windows:
        frame_indices = fixture.loop_order[window.first_frame : window.first_frame + len(window.frames)]
        window.faces = torch.from_numpy(np.ascontiguousarray(faces[frame_indices]))
        window.affines = [affines[frame] for frame in frame_indices]
    return windows


class RecordingGenerator(FaceGenerator):
    """The pipeline's FaceGenerator, keeping each UNet call's result (the fixture stores the final latents)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results: list[DenoiseResult] = []

    def denoise(self, batch, masked_latents, reference_latents) -> DenoiseResult:
        result = super().denoise(batch, masked_latents, reference_latents)
        self.results.append(DenoiseResult(result.latents.clone(), result.steps))
        return result


@dataclass
class RunResult:
    latents: list[torch.Tensor]  # per window (1, 4, n, 64, 64): after the last scheduler step
    steps: list[tuple[int, int]]  # per window (full UNet passes, cached passes)
    timesteps: list[int]
    faces: torch.Tensor  # (24, 3, R, R) in [-1, 1] as the generator hands them on (face_dtype)
    frames: np.ndarray  # uint8 (24, H, W, 3): the faces pasted back with OpenCV (the CPU path)
    noise_calls: list[tuple[int, tuple[int, ...]]]
    frames_torch: np.ndarray | None = None  # the same with the torch paste (the GPU path), when asked
    settings: RunSettings = field(default_factory=RunSettings)


def run_windows(
    models: ModelBundle,
    spec: RunSpec,
    windows: list[WindowInput],
    audio_features: torch.Tensor,
    noise: RecordedNoise,
    face_dtype: torch.dtype = torch.float32,
    torch_paste: bool = False,
    adjust_plan: Callable[[RunPlan, RunSettings], None] | None = None,
) -> RunResult:
    """The project's model work on the windows (VAE encode, denoise, decode, paste) and the restore into the frames.

    `face_dtype` is the generator's hand-off dtype; the pipeline's is float16 (a named difference).
    `adjust_plan(plan, settings)` may change the run plan before it is used.
    """
    settings = run_settings(spec)
    plan = build_run_plan(models.unet, models.vae, settings, CPU, RESOLUTION)
    if adjust_plan is not None:
        adjust_plan(plan, settings)
    paste_mask = torch.from_numpy(mouth_mask(RESOLUTION))[None, None]
    timer = StageTimer(CPU)
    generator = RecordingGenerator(models, plan, settings, CPU, timer, audio_features, paste_mask, noise=noise)
    generator.face_dtype = face_dtype
    outputs = generator.generate(windows, plan.memory)
    restored = []
    for output in outputs:  # as LipsyncPipeline.restored_frames does on the CPU
        restored += restore_faces(output.window.frames, output.faces.float().numpy(), output.window.affines)
    faces = torch.cat([output.faces for output in outputs])
    frames_torch = None
    if torch_paste:
        frames_in = torch.from_numpy(np.stack([frame for window in windows for frame in window.frames]))
        affines = np.stack([affine for window in windows for affine in window.affines])
        frames_torch = restore_faces_torch(frames_in, faces.float(), affines).numpy()
    return RunResult(
        latents=[result.latents for result in generator.results],
        steps=[(result.full_steps, result.cached_steps) for result in generator.results],
        timesteps=plan.make_scheduler().timesteps.tolist(),
        faces=faces,
        frames=np.stack(restored),
        noise_calls=list(noise.calls),
        frames_torch=frames_torch,
        settings=settings,
    )


def write_lossless_video(frames: np.ndarray, path: Path) -> Path:
    """The RGB frames as a 25 fps FFV1 file (lossless: it decodes to the same pixels)."""
    height, width = frames.shape[1:3]
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-framerate", "25", "-i", "-", "-c:v", "ffv1", "-pix_fmt", "bgr0", str(path),
    ]  # fmt: skip
    subprocess.run(command, input=frames.tobytes(), check=True)
    return path


class RecordingPipeline(LipsyncPipeline):
    """The LipsyncPipeline whose FaceGenerator keeps each UNet call's result."""

    def face_generator(self, audio_features, paste_mask, on_device=False, noise=None) -> RecordingGenerator:
        self.generator = RecordingGenerator(
            self.models, self.plan, self.settings, self.device, self.timer, audio_features, paste_mask,
            on_device, noise,
        )  # fmt: skip
        return self.generator


def pipeline_run(models: ModelBundle, spec: RunSpec, fixture: Fixture, video: Path) -> RunResult:
    """The whole pipeline as a job runs it (LipsyncPipeline.run): speech.wav's features, `video` (the
    fixture's frames as a file) decoded and looped ping-pong, the faces found by the project's
    InsightfaceLandmarks on FixtureFaceAnalysis and aligned as they stream, the models, float16 faces and
    the OpenCV paste; only the random draws are upstream's (RecordedNoise)."""
    settings = run_settings(spec)
    speech = load_audio(fixture.folder / "speech.wav")
    noise = RecordedNoise(fixture.draws)
    plan = WindowPlan.everything(window_ranges(output_frame_count(speech.size), settings.window))
    sink = FrameList()
    job = SyncJob(
        video=probe_video(video), speech=speech, plan=plan, sink=sink, loop="pingpong",
        landmarks=FixtureLandmarks(fixture), noise=noise, restore="opencv",
    )  # fmt: skip
    pipeline = RecordingPipeline(models, settings, StageTimer(CPU))
    pipeline.run(job)
    results = pipeline.generator.results
    return RunResult(
        latents=[result.latents for result in results],
        steps=[(result.full_steps, result.cached_steps) for result in results],
        timesteps=pipeline.plan.make_scheduler().timesteps.tolist(),
        faces=torch.empty(0),
        frames=np.stack(sink.frames),
        noise_calls=list(noise.calls),
        settings=settings,
    )


@dataclass(frozen=True)
class FrameStats:
    outside_equal: bool  # every value outside out_box equals the looped input frame
    max: int
    share_over_1: float
    mean: float

    def within(self, tolerance: FrameTolerance) -> bool:
        return (
            self.outside_equal
            and self.max <= tolerance.max
            and self.share_over_1 <= tolerance.share_over_1
            and self.mean <= tolerance.mean
        )


def frame_stats(fixture: Fixture, run: str, frames: np.ndarray, first_frame: int = 0) -> FrameStats:
    """Our restored frames (the 24, or those from loop position `first_frame` on) against upstream's: all of
    them outside out_box, the stored ones among them inside it."""
    x1, y1, x2, y2 = fixture.out_box
    looped = fixture.looped_frames()[first_frame : first_frame + len(frames)]
    outside = np.ones(frames.shape, dtype=bool)
    outside[:, y1:y2, x1:x2] = False
    stored = fixture.runs[run]
    index = stored["frames_out_index"].numpy()
    kept = (index >= first_frame) & (index < first_frame + len(frames))
    ours = frames[index[kept] - first_frame, y1:y2, x1:x2].astype(np.int16)
    difference = np.abs(ours - stored["frames_out_box"].numpy()[kept].astype(np.int16))
    return FrameStats(
        outside_equal=bool(np.array_equal(frames[outside], looped[outside])),
        max=int(difference.max()),
        share_over_1=float((difference > 1).mean()),
        mean=float(difference.mean()),
    )

"""The pipeline's GPU stage, its memory ladder, resume hooks and thread overlap, on CPU with random-tiny models.

Windows are built from a real face photo (no video decoding) so that each test
runs the real VAE, UNet and denoising loop on a handful of frames. The
end-to-end runs through video files are in test_cli_sync.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import FrameList

from latentsync_cli.errors import DeviceMemoryError, ExitCode
from latentsync_cli.face.align import crop_size
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.face.restore import restore_faces
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.synthetic import face_photo, make_face_clip, make_speech
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.models.frame_count import output_frame_count
from latentsync_cli.pipeline.lipsync import LipsyncPipeline, SyncJob
from latentsync_cli.pipeline.overlap import ReadAhead, run_overlapped
from latentsync_cli.pipeline.windows import (
    SeededNoise,
    WindowInput,
    WindowPlan,
    batches_of_equal_length,
    window_ranges,
    window_seed,
)
from latentsync_cli.progress import TASK_DECODE, TASK_ENCODE, TASK_GENERATE, TASK_JOB
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import StageTimer

# One denoising step keeps the tests fast; guidance 1.5 keeps the CFG path in play.
FAST = RunSettings(steps=1, guidance=1.5, window=2, vae_slicing=False, deepcache=False)


@pytest.fixture(scope="module")
def audio_features():
    return torch.randn((64, 50, 384), generator=torch.Generator().manual_seed(3))


def make_windows(flags_per_window: list[list[bool]], resolution: int = 256) -> list[WindowInput]:
    """Windows whose face frames are the astronaut photo, shifted a little from frame to frame."""
    face = cv2.resize(face_photo(), (resolution, resolution), interpolation=cv2.INTER_AREA)
    windows, first_frame = [], 0
    for index, flags in enumerate(flags_per_window):
        flags = np.array(flags, dtype=bool)
        faces = [np.roll(face, 3 * (first_frame + i), axis=1) for i in np.flatnonzero(flags)]
        tensor = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        windows.append(
            WindowInput(
                index=index,
                first_frame=first_frame,
                frames=[np.zeros((4, 4, 3), np.uint8)] * len(flags),
                has_face=flags,
                faces=tensor,
                affines=[np.eye(2, 3)] * len(faces),
            )
        )
        first_frame += len(flags)
    return windows


def generate(models, settings, windows, audio_features, finished=None, on_generated=None, noise=None):
    """The windows through the model lane, as the pipeline runs them: those in `finished` (index -> faces)
    are taken as they are, the others are generated and told to `on_generated`."""
    timer = StageTimer("cpu")
    pipeline = LipsyncPipeline(models, settings, timer)
    paste_mask = torch.from_numpy(mouth_mask(256))[None, None]
    faces = pipeline.face_generator(audio_features, paste_mask, noise=noise)
    finished = finished or {}
    ranges = [range(w.first_frame, w.first_frame + len(w.frames)) for w in windows]
    plan = WindowPlan(ranges, frozenset(w.index for w in windows if w.index not in finished),
                      {index: (lambda faces=faces: faces) for index, faces in finished.items()})  # fmt: skip
    outputs = pipeline.generate_windows(windows, faces, plan, on_generated)
    assert set(timer.lane_busy()) <= {"cpu"}  # the models' lane is named after the device they ran on
    return pipeline, [output.wait().float() for output in outputs]


class OutOfMemoryAtFirst(torch.nn.Module):
    """The real UNet, except that its first `failures` calls raise CUDA out-of-memory, as a full GPU would."""

    def __init__(self, unet: torch.nn.Module, failures: int):
        super().__init__()
        self.unet = unet
        self.failures_left = failures

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, *args, **kwargs):
        if self.failures_left > 0:
            self.failures_left -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return self.unet(*args, **kwargs)


def count_unet_calls(unet: torch.nn.Module):
    """Batch size of every UNet call, read from the input of the real conv_in."""
    batches = []
    hook = unet.conv_in.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    return batches, hook


# --- windows and randomness --------------------------------------------------------------------


def test_window_ranges_cover_every_frame_once():
    ranges = window_ranges(52, 16)
    assert [(r.start, r.stop) for r in ranges] == [(0, 16), (16, 32), (32, 48), (48, 52)]


def test_window_seeds_depend_only_on_seed_and_index():
    assert window_seed(1247, 3) == window_seed(1247, 3)
    assert len({window_seed(1247, k) for k in range(100)}) == 100
    assert window_seed(1247, 0) != window_seed(1248, 0)


def test_batches_share_a_call_only_with_equal_face_counts():
    windows = make_windows([[True, True], [True, True], [True, False], [True, True]])
    sizes = [[w.index for w in batch] for batch in batches_of_equal_length(windows, 2)]
    assert sizes == [[0, 1], [2], [3]]


# --- the GPU stage -------------------------------------------------------------------------------


def test_only_frames_with_a_face_are_generated(tiny_models, audio_features):
    windows = make_windows([[True, False, True]])
    batches, hook = count_unet_calls(tiny_models.unet)
    try:
        _, (faces,) = generate(tiny_models, dataclasses.replace(FAST, window=3), windows, audio_features)
    finally:
        hook.remove()
    assert faces.shape == (2, 3, 256, 256)
    assert batches == [2 * 2]  # CFG doubles the 2 face frames; the face-less frame is not in the call
    assert torch.isfinite(faces).all() and faces.abs().max() < 10


def test_several_windows_per_call_match_one_window_per_call(tiny_models, audio_features):
    windows = make_windows([[True, True]] * 3)
    batches, hook = count_unet_calls(tiny_models.unet)
    try:
        _, one_by_one = generate(tiny_models, FAST, windows, audio_features)
        calls_one = len(batches)
        _, together = generate(tiny_models, dataclasses.replace(FAST, windows_per_call=3), windows, audio_features)
    finally:
        hook.remove()
    assert calls_one == 3 and batches[3:] == [3 * 2 * 2]  # one call: 3 windows x CFG 2 x 2 frames
    for single, batched in zip(one_by_one, together):
        torch.testing.assert_close(batched, single, atol=2e-3, rtol=0)


def test_out_of_memory_lowers_windows_per_call_and_gives_the_same_faces(tiny_models, audio_features):
    windows = make_windows([[True, True]] * 2)
    settings = dataclasses.replace(FAST, windows_per_call=2)
    _, expected = generate(tiny_models, settings, windows, audio_features)

    faulty = dataclasses.replace(tiny_models, unet=OutOfMemoryAtFirst(tiny_models.unet, failures=2))
    pipeline, faces = generate(faulty, settings, windows, audio_features)

    assert pipeline.ladder.downgrades == ["windows per call 2 -> 1", "VAE slicing on"]
    assert pipeline.ladder.current.windows_per_call == 1 and tiny_models.vae.use_slicing
    assert [entry.status for entry in pipeline.log.find("memory")] == ["downgraded", "downgraded"]
    for got, want in zip(faces, expected):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_out_of_memory_at_the_smallest_setting_is_a_clear_error(tiny_models, audio_features):
    windows = make_windows([[True, True]])
    faulty = dataclasses.replace(tiny_models, unet=OutOfMemoryAtFirst(tiny_models.unet, failures=100))
    with pytest.raises(DeviceMemoryError) as caught:
        generate(faulty, FAST, windows, audio_features)
    assert caught.value.exit_code == ExitCode.OUT_OF_MEMORY
    assert "\n" not in str(caught.value) and "window 0" in str(caught.value)


def test_finished_windows_are_taken_and_later_windows_do_not_change(tiny_models, audio_features):
    windows = make_windows([[True, True], [True, True], [True, True]])
    saved = {}
    _, uninterrupted = generate(tiny_models, FAST, windows, audio_features,
                                on_generated=lambda index, faces, flags: saved.update({index: faces}))  # fmt: skip
    assert sorted(saved) == [0, 1, 2]

    # A killed job left windows 0 and 1; mark their faces so we can tell they were taken, not made again.
    finished = {0: np.full_like(saved[0], 0.25), 1: saved[1]}
    batches, hook = count_unet_calls(tiny_models.unet)
    try:
        _, resumed = generate(tiny_models, FAST, windows, audio_features, finished)
    finally:
        hook.remove()
    assert len(batches) == 1  # only window 2 went through the UNet
    assert torch.all(resumed[0] == 0.25)
    torch.testing.assert_close(resumed[2], uninterrupted[2], atol=0, rtol=0)


class RecordingNoise:
    """The tool's draws (SeededNoise), noting which window asked for its draws and with what shape."""

    def __init__(self, seed: int):
        self.seeded = SeededNoise(seed)
        self.asked: list[tuple[int, tuple[int, ...]]] = []

    def initial_noise(self, latent_size: int) -> torch.Tensor:
        return self.seeded.initial_noise(latent_size)

    def posterior_draws(self, window_index, shape, device, dtype):
        self.asked.append((window_index, tuple(shape)))
        return self.seeded.posterior_draws(window_index, shape, device, dtype)


def test_every_draw_comes_from_the_noise_source_and_the_default_is_the_seeded_one(tiny_models, audio_features):
    """The seam the golden e2e test injects upstream's draws through: a generated window asks the source
    for its draws by its index (a finished one asks nothing), and without a source the draws are
    SeededNoise(settings.seed)'s, so the faces are the same."""
    windows = make_windows([[True, True], [True, False, True]])
    _, default = generate(tiny_models, FAST, windows, audio_features)
    noise = RecordingNoise(FAST.seed)
    _, given = generate(tiny_models, FAST, windows, audio_features, finished={0: default[0].numpy()}, noise=noise)
    assert noise.asked == [(1, (2, 4, 32, 32))]  # window 1's two faces
    torch.testing.assert_close(given[1], default[1], atol=0, rtol=0)


class RecordingProgress:
    """A Progress display that keeps what the pipeline told it."""

    def __init__(self):
        self.messages: list[str] = []
        self.totals: dict[str, int] = {}
        self.advanced: dict[str, int] = {}

    def start(self, task, total):
        self.totals[task] = total

    def advance(self, task, amount=1):
        self.advanced[task] = self.advanced.get(task, 0) + amount

    def message(self, text):
        self.messages.append(text)


def pipeline_job(video, speech, settings, sink, **fields) -> SyncJob:
    """A SyncJob that makes every window of `speech` and hands the frames to `sink`."""
    plan = WindowPlan.everything(window_ranges(output_frame_count(speech.size), settings.window))
    return SyncJob(video=probe_video(video), speech=speech, plan=plan, sink=sink, **fields)


def test_a_run_uses_the_given_speech_counts_its_unet_steps_and_tells_the_progress(tiny_models, tmp_path):
    video = make_face_clip(tmp_path / "face.mp4", 0.6, size=(320, 240))
    audio = make_speech(tmp_path / "voice.wav", 0.6, use_espeak=False)
    speech = load_audio(audio)[:6400]  # the first 0.4 s of the 0.6 s file
    extractor = AudioFeatureExtractor(tiny_models.audio_encoder, torch.device("cpu"))
    frames = extractor(speech).shape[0]
    assert frames == output_frame_count(speech.size) < extractor(load_audio(audio)).shape[0]

    settings = dataclasses.replace(FAST, steps=3, window=4, deepcache=True, deepcache_interval=2)
    progress = RecordingProgress()
    batches, hook = count_unet_calls(tiny_models.unet)
    sink = FrameList()
    try:
        pipeline = LipsyncPipeline(tiny_models, settings, StageTimer("cpu"), progress)
        result = pipeline.run(pipeline_job(video, speech, settings, sink))
    finally:
        hook.remove()

    assert result.frames == frames == len(sink.frames) and sink.finished  # the given speech set the length
    windows = len(window_ranges(frames, 4))
    assert progress.messages == ["computing audio features"]
    assert progress.totals == {TASK_JOB: frames, TASK_DECODE: frames, TASK_GENERATE: windows, TASK_ENCODE: frames}
    assert progress.advanced == progress.totals
    # conv_in sees every step; DeepCache at interval 2 runs steps 0 and 2 in full, step 1 on the cache.
    unet_calls = len(batches) // 3
    assert len(batches) == 3 * unet_calls and unet_calls >= 1
    assert (result.unet_steps.full, result.unet_steps.cached) == (2 * unet_calls, unet_calls)
    assert "cpu" in result.lane_busy_s and "gpu" not in result.lane_busy_s


def test_faces_pasted_back_with_torch_match_the_opencv_paste(tiny_models, tmp_path):
    """The device path (torch affine_grid/grid_sample restore, as on CUDA) forced on the CPU."""
    video = make_face_clip(tmp_path / "face.mp4", 0.4, size=(320, 240))
    speech = load_audio(make_speech(tmp_path / "voice.wav", 0.4, use_espeak=False))
    settings = dataclasses.replace(FAST, window=8)
    frames = {}
    for backend in ("opencv", "torch"):
        sink = FrameList()
        pipeline = LipsyncPipeline(tiny_models, settings, StageTimer("cpu"))
        result = pipeline.run(pipeline_job(video, speech, settings, sink, restore=backend))
        frames[backend] = np.stack(sink.frames).astype(np.int16)
        [row] = [entry for entry in result.optimizations if entry["name"] == "restore on device"]
        assert row["status"] == ("applied" if backend == "torch" else "off")
    difference = np.abs(frames["torch"] - frames["opencv"])
    # The two pastes differ by at most 1 in a few values (OpenCV rounds sample positions to 1/32 px).
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.001


# --- what the product changes: the mouth, and nothing outside the face ------------------------------


def test_generated_faces_differ_from_the_input_only_where_the_mask_says_generate(tiny_models, audio_features):
    """The paste mask keeps the input's pixels (mask 1) and takes the generated ones in the mouth (mask 0):
    a flipped mask, a uniform one or a paste that drops the generated face would each fail here."""
    windows = make_windows([[True, True, True]])
    _, (faces,) = generate(tiny_models, dataclasses.replace(FAST, window=3), windows, audio_features)
    inputs = windows[0].faces.float() / 127.5 - 1.0  # what the model lane got, in its [-1, 1]
    mask = torch.from_numpy(mouth_mask(256))
    difference = (faces - inputs).abs().amax(dim=1)  # (n, R, R): the largest change over the colours
    kept, generated = difference[:, mask == 1], difference[:, mask == 0]
    assert kept.max() <= 1e-3  # the input itself, rounded to float16 (steps of at most 2^-11)
    assert generated.mean() > 0.05 and (generated > 4 / 127.5).float().mean() > 0.5  # most of the mouth changed


def faces_run(models, video, speech, settings) -> tuple[list[np.ndarray], dict[int, WindowInput]]:
    """The output frames of a pipeline run (before encoding), and every window the model lane saw."""
    sink, windows = FrameList(), {}
    pipeline = LipsyncPipeline(models, settings, StageTimer("cpu"))
    generate_windows = pipeline.generate_windows

    def recording(batch, *args, **kwargs):
        windows.update({window.index: window for window in batch})
        return generate_windows(batch, *args, **kwargs)

    pipeline.generate_windows = recording
    pipeline.run(pipeline_job(video, speech, settings, sink))
    return sink.frames, windows


def crop_coordinates(affine: np.ndarray, frame_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For every frame pixel, where it lands in the aligned crop (x, y), through the frame -> crop matrix."""
    rows, columns = np.mgrid[0 : frame_shape[0], 0 : frame_shape[1]].astype(np.float64)
    return (affine[0, 0] * columns + affine[0, 1] * rows + affine[0, 2],
            affine[1, 0] * columns + affine[1, 1] * rows + affine[1, 2])  # fmt: skip


PASTE_FEATHER_PX = 3  # the paste's blurred blend mask reaches a pixel or two past the crop (as upstream's)


def face_regions(affine: np.ndarray, frame_shape: tuple[int, ...], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(footprint, mouth) masks of a frame: the pixels the pasted crop can touch (those its bilinear warp
    samples, grown by the blend's feather), and those deep inside the mouth mask's generate region."""
    width, height = crop_size(resolution)
    x, y = crop_coordinates(affine, frame_shape)
    warped = ((x > -1) & (x < width) & (y > -1) & (y < height)).astype(np.uint8)
    footprint = cv2.dilate(warped, np.ones((2 * PASTE_FEATHER_PX + 1,) * 2, np.uint8)) > 0
    margin = resolution // 16
    generate = cv2.erode((mouth_mask(resolution) == 0).astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8))
    face_x = np.round((x + 0.5) * resolution / width - 0.5).astype(np.int64)  # the crop is squeezed to R x R
    face_y = np.round((y + 0.5) * resolution / height - 0.5).astype(np.int64)
    inside = (face_x >= 0) & (face_x < resolution) & (face_y >= 0) & (face_y < resolution)
    mouth = np.zeros(frame_shape[:2], bool)
    mouth[inside] = generate[face_y[inside], face_x[inside]] > 0
    return footprint, mouth


def mouth_change(frame_in: np.ndarray, frame_out: np.ndarray, mouth: np.ndarray) -> float:
    """Mean absolute change of the mouth pixels, in grey levels."""
    return float(np.abs(frame_out.astype(np.int16) - frame_in.astype(np.int16))[mouth].mean())


def test_the_mouth_changes_and_nothing_outside_the_face_crop_does(tiny_models, tmp_path):
    """Output frames (before encoding) against the frames the pipeline read: outside each face crop's
    footprint, and in frames without a face, every pixel is the input's; inside the mouth, the pixels
    changed by far more than pasting the input face back would change them."""
    video = make_face_clip(tmp_path / "face.mp4", 0.6, size=(320, 240), faceless=(0.2, 0.32))
    speech = load_audio(make_speech(tmp_path / "voice.wav", 0.6, use_espeak=False))
    settings = dataclasses.replace(FAST, window=8)
    frames_out, windows = faces_run(tiny_models, video, speech, settings)
    frames_in = list(read_frames(probe_video(video), len(frames_out), loop="pingpong"))
    resolution = tiny_models.resolution

    changes, unchanged_pastes, faces_seen = [], [], 0
    for window in windows.values():
        affines, faces = iter(window.affines), iter(window.faces)
        for number, found in zip(range(window.first_frame, window.first_frame + len(window.frames)), window.has_face):
            frame_in, frame_out = frames_in[number], frames_out[number]
            if not found:
                np.testing.assert_array_equal(frame_out, frame_in, err_msg=f"frame {number} has no face")
                continue
            affine, face = next(affines), next(faces)
            footprint, mouth = face_regions(affine, frame_in.shape, resolution)
            assert (~footprint).mean() > 0.2 and mouth.sum() > 500  # both regions are there to be checked
            np.testing.assert_array_equal(frame_out[~footprint], frame_in[~footprint], err_msg=f"frame {number}")
            changes.append(mouth_change(frame_in, frame_out, mouth))
            # The broken product this test must catch: the input's own aligned face pasted back.
            [pasted] = restore_faces([frame_in], face[None].float() / 127.5 - 1.0, [affine])
            unchanged_pastes.append(mouth_change(frame_in, pasted, mouth))
            faces_seen += 1
    assert faces_seen == len(frames_out) - 3  # frames 5, 6 and 7 have no face
    assert max(unchanged_pastes) < 4  # resampling the input face there and back changes it only a little
    assert min(changes) > 3 * max(unchanged_pastes) and min(changes) > 10, (changes, unchanged_pastes)


# --- overlap of the three stages -----------------------------------------------------------------


def stage_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("producer", "consumer") and t.is_alive()]


def test_stages_pass_every_item_in_order():
    seen = []

    def consume(items):
        for item in items:
            seen.append(item)
        return len(seen)

    count = run_overlapped(lambda: iter(range(10)), lambda items: (2 * item for item in items), consume)
    assert count == 10 and seen == [2 * i for i in range(10)]
    assert stage_threads_alive() == []


def test_a_producer_error_reaches_the_caller_and_every_thread_stops():
    def produce():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        run_overlapped(produce, lambda items: items, lambda items: list(items))
    assert stage_threads_alive() == []


def test_a_consumer_error_stops_an_endless_producer():
    def consume(items):
        for item in items:
            if item == 3:
                raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_overlapped(lambda: itertools.count(), lambda items: items, consume)
    assert stage_threads_alive() == []


def read_ahead_alive() -> bool:
    return any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())


def test_read_ahead_gives_every_item_in_order_and_stays_within_its_depth():
    taken = []

    def items():
        for item in range(20):
            taken.append(item)
            yield item

    ahead = ReadAhead(items(), depth=3)
    assert next(ahead) == 0
    # It fills up: the one given, 3 in the queue and one more held by the thread, waiting to be put ...
    deadline = time.monotonic() + 120  # only catches a read-ahead that never reads
    while len(taken) < 1 + 3 + 1:
        assert time.monotonic() < deadline, taken
        time.sleep(0.01)
    time.sleep(0.1)  # ... and reads no further while nothing is taken (more time only makes this stricter)
    assert len(taken) == 1 + 3 + 1
    assert [0, *ahead] == list(range(20))
    ahead.close()
    assert not read_ahead_alive()


def test_read_ahead_raises_the_decoders_error_and_closing_it_early_closes_the_decoder():
    def broken():
        yield 1
        raise ValueError("decoder broke")

    ahead = ReadAhead(broken(), depth=2)
    with pytest.raises(ValueError, match="decoder broke"):
        list(ahead)
    ahead.close()

    closed = threading.Event()

    def endless():
        try:
            yield from itertools.count()
        finally:
            closed.set()

    ahead = ReadAhead(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()  # the reader stops early (another stage failed): the decoder is closed, the thread ends
    assert closed.is_set() and not read_ahead_alive()


def test_keyboard_interrupt_in_the_gpu_stage_stops_the_threads():
    def process(items):
        for item in items:
            if item == 2:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        run_overlapped(lambda: itertools.count(), process, lambda items: [time.sleep(0.01) for _ in items])
    assert stage_threads_alive() == []

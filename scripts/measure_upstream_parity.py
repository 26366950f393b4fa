"""How far the project's computation is from upstream's own end-to-end run, stage by stage (golden e2e_tiny).

    python3 scripts/measure_upstream_parity.py [--runs A,B,C] [--no-tier2] [--pipeline [RUN]] [--padding] [--golden DIR]

Prints, for the fixture's 10 frames and 0.88 s of speech: the audio features, the
ping-pong loop, the alignment from the given points, and for each run the final
latents of both windows and the restored frames (tier 1: upstream's faces, matrices
and draws injected; tier 2: run A with the project's own alignment), the float16
faces the pipeline hands on, and with --pipeline a run (C, as the suite, or the one
named) through the whole LipsyncPipeline (the looped frames aligned as they stream). The numbers in
docs/UPSTREAM.md come from this script. It reuses the test helpers in
tests/e2e_golden.py; tests/test_golden_e2e.py asserts the same numbers against
the fixture's tolerances. Each model run takes a minute or more on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import e2e_golden as golden  # noqa: E402
from e2e_golden import mouth_mask_float64  # noqa: E402

from latentsync_cli.face.mask import mouth_mask  # noqa: E402
from latentsync_cli.face.restore import restore_faces  # noqa: E402
from latentsync_cli.face.track import FaceLocator  # noqa: E402
from latentsync_cli.media.audio import load_audio  # noqa: E402
from latentsync_cli.media.video import read_frames  # noqa: E402
from latentsync_cli.models.audio_features import encode_features, feature_chunks, log_mel_spectrogram  # noqa: E402
from latentsync_cli.models.vae import encode_latents  # noqa: E402


def max_abs(a, b) -> float:
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def audio_stage(fixture, models) -> torch.Tensor:
    speech = load_audio(fixture.folder / "speech.wav")
    mel = log_mel_spectrogram(speech)
    features = encode_features(models.audio_encoder, mel)
    chunks = feature_chunks(features)
    print(f"speech samples   max |diff| {max_abs(speech, fixture.audio_samples):.3g}")
    print(f"log-mel          max |diff| {max_abs(mel, fixture.stages['mel']):.3g} (tolerance 1e-4)")
    print(f"features {tuple(features.shape)} max |diff| {max_abs(features, fixture.stages['whisper_feature']):.3g}")
    print(f"chunks {tuple(chunks.shape)}   max |diff| {max_abs(chunks, fixture.stages['whisper_chunks']):.3g}")
    return chunks


def loop_stage(fixture) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = golden.write_lossless_video(fixture.frames, Path(folder) / "frames.mkv")
        frames = np.stack(list(read_frames(path, 24, loop="pingpong")))
    equal = np.array_equal(frames, fixture.looped_frames())
    print(f"ping-pong loop from an FFV1 file equals upstream's 24 frames: {equal}")


def alignment_stage(fixture):
    affines, faces = golden.own_alignment(fixture)
    expected = fixture.affines
    difference = np.abs(faces.astype(np.int16) - fixture.stages["faces_512"].numpy().astype(np.int16))
    print(
        f"alignment        M 2x2 {max_abs(affines[:, :, :2], expected[:, :, :2]):.3g}, "
        f"translation {max_abs(affines[:, :, 2], expected[:, :, 2]):.3g} px; "
        f"faces max {difference.max()}, {100 * (difference > 0).mean():.2f} % of values differ"
    )
    locate = FaceLocator(golden.RESOLUTION, golden.FixtureLandmarks(fixture))
    streamed = np.stack([locate.affine(n, frame) for n, frame in enumerate(fixture.looped_frames())])
    shift = np.abs(streamed[:, :, 2] - affines[fixture.loop_order][:, :, 2]).max()
    print(f"streamed loop alignment (smoothing carried through the loop): translation moves by up to {shift:.3g} px")
    return affines, faces, streamed


def frames_line(fixture, run: str, label: str, frames: np.ndarray) -> None:
    stats = golden.frame_stats(fixture, run, frames)
    print(
        f"  {label:34s} outside out_box equal {stats.outside_equal}; inside max {stats.max}, "
        f">1 off {stats.share_over_1:.2e}, mean {stats.mean:.5f}"
    )


def report_run(fixture, run: str, result, seconds: float) -> None:
    stored = fixture.runs[run]
    latents = [max_abs(latents, stored[f"final_latents_w{w}"]) for w, latents in enumerate(result.latents)]
    print(f"run {run}: {seconds:.0f} s, timesteps {result.timesteps}, steps (full, cached) {result.steps}")
    print(f"  final latents max |diff| per window {[f'{value:.3g}' for value in latents]}")
    frames_line(fixture, run, "frames, OpenCV paste", result.frames)
    if result.frames_torch is not None:
        frames_line(fixture, run, "frames, torch paste", result.frames_torch)


def float16_faces(fixture, run: str, result, windows) -> None:
    faces = result.faces.to(torch.float16).float().numpy()
    frames = [frame for window in windows for frame in window.frames]
    affines = [affine for window in windows for affine in window.affines]
    frames_line(fixture, run, "frames, float16 faces (the pipeline)", np.stack(restore_faces(frames, faces, affines)))


def timed_run(fixture, models, chunks, run: str, windows, torch_paste: bool = False):
    start = time.perf_counter()
    noise = golden.RecordedNoise(fixture.draws)
    result = golden.run_windows(models, golden.RUNS[run], windows, chunks, noise, torch_paste=torch_paste)
    return result, time.perf_counter() - start


def rounding_stage(fixture, models) -> None:
    """The masked face multiplied in float32 (ours) or float32 x float64 cast to float32 (upstream)."""
    faces = fixture.stages["faces_512"].float() / 127.5 - 1.0
    ours = faces * torch.from_numpy(mouth_mask(golden.RESOLUTION))
    upstream = (faces.double() * torch.from_numpy(mouth_mask_float64(golden.RESOLUTION))).float()
    zeros = torch.zeros(len(faces), 4, golden.RESOLUTION // 8, golden.RESOLUTION // 8)
    means = [encode_latents(models.vae, images, draw=zeros) for images in (ours, upstream)]
    print(
        f"masked face in float32: {100 * (ours != upstream).float().mean():.2f} % of values differ (one ulp), "
        f"scaled posterior means max |diff| {max_abs(*means):.3g}"
    )


def padding_stage(fixture, models, chunks) -> None:
    """What CUDA graphs used to do to a short window: run C's 8-frame window padded to 16 frames by repeating
    its last frame (its face, its audio row and its latents, the same draw), the padding dropped after."""
    window = golden.injected_windows(fixture, len(chunks))[1]
    missing = golden.WINDOW - len(window.frames)
    window.frames += [window.frames[-1]] * missing
    window.affines += [window.affines[-1]] * missing
    window.has_face = np.ones(golden.WINDOW, dtype=bool)
    window.faces = torch.cat([window.faces, window.faces[-1:].repeat(missing, 1, 1, 1)])
    window.face_sources = np.concatenate([window.face_sources, np.full(missing, window.face_sources[-1])])
    audio = torch.cat([chunks, chunks[-1:].repeat(missing, 1, 1)])
    draws = dict(fixture.draws)
    for name in ("3_w1_masked_posterior", "4_w1_ref_posterior"):
        draws[name] = torch.cat([draws[name], draws[name][-1:].repeat(missing, 1, 1, 1)])
    result = golden.run_windows(models, golden.RUNS["C"], [window], audio, golden.RecordedNoise(draws))
    latents = result.latents[0][:, :, : golden.WINDOW - missing]
    expected = fixture.runs["C"]["final_latents_w1"]
    difference = (latents - expected).abs()
    print(f"run C's 8-frame window padded to 16 (the old CUDA graphs padding): final latents max |diff| "
          f"{difference.max():.3g}, mean {difference.mean():.3g}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=REPO.parent / "shared" / "reference" / "golden")
    parser.add_argument("--runs", default="A,B,C", help="tier 1 runs, comma-separated")
    parser.add_argument("--no-tier2", action="store_true", help="skip run A with the project's own alignment")
    parser.add_argument("--pipeline", nargs="?", const=golden.PIPELINE_RUN, metavar="RUN",
                        help=f"also take RUN (default {golden.PIPELINE_RUN}, the suite's) through LipsyncPipeline")
    parser.add_argument("--padding", action="store_true", help="also run C's short window padded to 16 frames")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fixture, models = golden.load_fixture(args.golden), golden.load_models(args.golden)
    chunks = audio_stage(fixture, models)
    loop_stage(fixture)
    affines, faces, streamed = alignment_stage(fixture)
    rounding_stage(fixture, models)
    for run in filter(None, args.runs.split(",")):
        windows = golden.injected_windows(fixture, len(chunks))
        result, seconds = timed_run(fixture, models, chunks, run, windows, torch_paste=run == "A")
        report_run(fixture, run, result, seconds)
        float16_faces(fixture, run, result, windows)
    if not args.no_tier2:
        windows = golden.own_windows(fixture, len(chunks), affines, faces)
        result, seconds = timed_run(fixture, models, chunks, "A", windows)
        print("tier 2 (own alignment, reused in loop order as upstream):")
        report_run(fixture, "A", result, seconds)
    if args.pipeline:
        with tempfile.TemporaryDirectory() as folder:
            video = golden.write_lossless_video(fixture.frames, Path(folder) / "frames.mkv")
            start = time.perf_counter()
            result = golden.pipeline_run(models, golden.RUNS[args.pipeline], fixture, video)
        print("tier 2, the whole pipeline (LipsyncPipeline.run: streamed alignment, float16 faces):")
        report_run(fixture, args.pipeline, result, time.perf_counter() - start)
    if args.padding:
        padding_stage(fixture, models, chunks)


if __name__ == "__main__":
    main()

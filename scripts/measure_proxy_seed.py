#!/usr/bin/env python3
"""Where does the proxy's mouth come from: the speech, or the seed? Three measurements on held-out frames.

    python3 scripts/measure_proxy_seed.py --run /work/proxy-run2 --frames 32 --json out.json
    python3 scripts/measure_proxy_seed.py --frames 32 --guidance 1.5,3,6     # the shipped proxy

The first held-out `--frames` of each demo clip (a proxy training run's data folder holds
the aligned faces and their audio rows), each frame its own reference, as in `sync`:

  seed      (with --part training: on the first training frames instead, which the model
            was fitted to) the mean change (0-255) in the mouth box when one thing changes against seed 0
            with the clip's own speech: another speech (demo*_audio.wav), another initial
            noise (the VAE's posterior draws kept), another posterior draw (the initial noise
            kept); and the mouth PSNR against the real frames. Once per `--guidance`.
  visible   the mouth's change when the UNet is handed the masked faces (the part of the face it
            sees) of the frames 1 and 5 later, the speech, reference, seed and pasted-back pixels
            kept; beside another speech's and the real mouth's change: how much the model takes
            its mouth from the visible face (upstream's "shortcut learning").
  channels  the same frames made with seeds 0 and 1; the change in the mouth box when the
            generated latents of seed 0 take one channel from seed 1 and are decoded again.
  latents   per latent channel of one clip's cached VAE posteriors: the posterior's standard
            deviation (scaled, as the pipeline uses it, and in the VAE's units before its
            latent space was rescaled) against the frame-to-frame deviation of its mean.
  x0        the real latents (posterior means) of `--window` held-out frames of one clip,
            noised at several timesteps: the UNet's one-step estimate of the clean latents
            against the real ones (rms, per channel, in the visible part and in the mouth).
  audio     how much of the mouth the speech rows carry at all, with no UNet: a ridge
            regression from each frame's rows to its mouth box's mean grey level (an open
            mouth is darker), fitted on the training frames, scored by its correlation on
            the held-out frames; for the audio encoder's rows (what the UNet sees), the
            log-mel at the same positions (what the encoder sees) and, to compare, the
            masked faces' latents (the visible face the UNet is handed). Each against the
            grey level as it is and with the light's drift over the clip removed.

A model whose mouth follows the speech shows a larger change for the speech than for the
seed; docs/PERFORMANCE.md ("Where the seed's hold comes from") has the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.bench.heldout import (
    decoded_and_pasted,
    face_windows,
    mouth_change,
    mouth_crops,
    mouth_scores,
    to_chw,
    to_uint8,
)
from latentsync_cli.constants import TRAIN_TIMESTEPS
from latentsync_cli.face.mask import latent_mask, mouth_mask
from latentsync_cli.media.audio import load_audio
from latentsync_cli.models.audio_features import AudioFeatureExtractor, feature_chunks, log_mel_spectrogram
from latentsync_cli.models.vae import LATENT_SCALE, to_vae_range
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.pipeline.faces import FaceGenerator
from latentsync_cli.pipeline.lipsync import LipsyncPipeline
from latentsync_cli.pipeline.windows import SeededNoise
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import StageTimer
from latentsync_cli.train.data import DEMO_CLIPS, Clip, load_clips
from latentsync_cli.train.evaluate import mode_settings, other_speech, run_models
from latentsync_cli.train.unet import frames_second
from latentsync_cli.train.vae import SCALE_FILE
from latentsync_cli.weights.load import ModelBundle, load_models

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT.parent / "shared" / "media"
TIMESTEPS = (50, 200, 500, 800, 950)
RIDGE_PENALTIES = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7)


class MixedNoise:
    """A NoiseSource whose initial noise comes from one seed and whose posterior draws come from another."""

    def __init__(self, initial_seed: int, posterior_seed: int):
        self.initial, self.posterior = SeededNoise(initial_seed), SeededNoise(posterior_seed)

    def initial_noise(self, latent_size: int) -> torch.Tensor:
        return self.initial.initial_noise(latent_size)

    def posterior_draws(self, window_index, shape, device, dtype):
        return self.posterior.posterior_draws(window_index, shape, device, dtype)


class RecordingFaceGenerator(FaceGenerator):
    """FaceGenerator that keeps the denoised latents of every window it decodes, and that can encode the
    masked faces (the visible part the UNet is handed) from other frames: `visible`, (n, 3, R, R) uint8 per
    window, or None for the window's own frames. The reference and the pasted-back pixels stay its own."""

    def __init__(self, *args, visible: dict[int, torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.latents: list[torch.Tensor] = []
        self.visible = visible

    def encode(self, batch, pixels):
        masked_latents, reference_latents = super().encode(batch, pixels)
        if self.visible is not None:  # the same posterior draws: they depend on the window's index only
            others = [to_vae_range(self.visible[window.index].to(self.device)) for window in batch]
            masked_latents, _ = super().encode(batch, others)
        return masked_latents, reference_latents

    def decode(self, latents: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        self.latents.append(latents.transpose(0, 1).float().cpu())  # (4, n, h, w) -> (n, 4, h, w)
        return super().decode(latents, faces)


@torch.no_grad()
def generate(models: ModelBundle, settings: RunSettings, faces: np.ndarray, audio: torch.Tensor,
             noise: MixedNoise, visible: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """`sync`'s faces (uint8) and their denoised latents (n, 4, h, w) for aligned faces and audio rows.

    visible: other aligned faces (n, R, R, 3) whose masked version the UNet is handed instead of `faces`'."""
    pipeline = LipsyncPipeline(models, settings, StageTimer(settings.device))
    paste_mask = torch.from_numpy(mouth_mask(models.resolution))[None, None]
    windows = face_windows(faces, settings.window)
    by_window = None
    if visible is not None:
        by_window = {w.index: to_chw(visible[w.first_frame : w.first_frame + len(w.frames)]) for w in windows}
    generator = RecordingFaceGenerator(models, pipeline.plan, settings, pipeline.device, pipeline.timer, audio,
                                       paste_mask, False, noise, visible=by_window)
    outputs = generator.generate(windows, pipeline.ladder.current)
    return np.concatenate([to_uint8(output.wait()) for output in outputs]), torch.cat(generator.latents)


def first_frames(clip: Clip, frames: int, part: str = "held-out") -> tuple[np.ndarray, torch.Tensor, range]:
    """The first `frames` frames of the clip's held-out part (or of its training part): faces, own speech, rows.

    part "still": the held-out part's first face on every frame (a portrait), with the same speech rows."""
    rows = (range(clip.train_frames) if part == "training" else clip.held_out)[:frames]
    faces = clip.faces[rows.start : rows.stop]
    if part == "still":
        faces = np.repeat(faces[:1], len(faces), axis=0)
    return faces, torch.from_numpy(clip.audio[rows.start : rows.stop]), rows


def mean_over_clips(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each measurement's mean over the clips' rows, rounded to 2 places."""
    return {name: round(float(np.mean([row[name] for row in rows])), 2) for name in rows[0]}


def seed_against_speech(models, settings, clips, frames, media_dir, part: str = "held-out") -> dict[str, float]:
    extractor = AudioFeatureExtractor(models.audio_encoder)
    measured = []
    for clip in clips:
        faces, own, rows = first_frames(clip, frames, part)
        other = other_speech(media_dir, clip, extractor, rows)
        base, _ = generate(models, settings, faces, own, MixedNoise(0, 0))
        measured.append({
            "another speech": mouth_change(base, generate(models, settings, faces, other, MixedNoise(0, 0))[0]),
            "another initial noise": mouth_change(base, generate(models, settings, faces, own, MixedNoise(1, 0))[0]),
            "another posterior draw": mouth_change(base, generate(models, settings, faces, own, MixedNoise(0, 1))[0]),
            "mouth PSNR (dB)": mouth_scores(faces, base)["mouth_psnr"],
        })
    return mean_over_clips(measured)


def visible_face_against_speech(models, settings, clips, frames, media_dir, shifts=(1, 5)) -> dict[str, float]:
    """The mouth's change when the UNet is handed the masked faces of `shift` frames later (the speech,
    the reference, the seed and the pasted-back pixels kept), beside another speech's and the real mouth's."""
    extractor = AudioFeatureExtractor(models.audio_encoder)
    measured = []
    for clip in clips:
        faces, own, rows = first_frames(clip, frames)
        base, _ = generate(models, settings, faces, own, MixedNoise(0, 0))
        other = other_speech(media_dir, clip, extractor, rows)
        row = {"another speech": mouth_change(base, generate(models, settings, faces, other, MixedNoise(0, 0))[0])}
        for shift in shifts:
            later = clip.faces[rows.start + shift : rows.stop + shift]
            row[f"visible face {shift} frames later"] = mouth_change(
                base, generate(models, settings, faces, own, MixedNoise(0, 0), visible=later)[0])
            row[f"real mouth {shift} frames later"] = mouth_change(faces, later)
        measured.append(row)
    return mean_over_clips(measured)


def seed_by_channel(models, settings, clips, frames) -> dict[str, float]:
    rows = []
    for clip in clips:
        faces, own, _ = first_frames(clip, frames)
        pixels = to_vae_range(to_chw(faces))
        _, first_latents = generate(models, settings, faces, own, MixedNoise(0, 0))
        second, second_latents = generate(models, settings, faces, own, MixedNoise(1, 1))
        base = decoded_and_pasted(models, first_latents, pixels)
        row = {"whole seed": mouth_change(base, second)}
        for channel in range(first_latents.shape[1]):
            swapped = first_latents.clone()
            swapped[:, channel] = second_latents[:, channel]
            row[f"channel {channel} from seed 1"] = mouth_change(base, decoded_and_pasted(models, swapped, pixels))
        rows.append(row)
    return mean_over_clips(rows)


def latent_channels(run: Path, clip: Clip) -> dict[str, list[float]]:
    """Per channel: the posterior's mean standard deviation and the frame-to-frame deviation of its mean."""
    cached = np.load(run / "latents" / f"{clip.name}.npz")
    mean, std = cached["face_mean"], cached["face_std"]  # (n, 4, h, w), scaled by LATENT_SCALE
    factor = json.loads((run / "vae" / SCALE_FILE).read_text())["factor"]
    channels = range(mean.shape[1])
    return {
        "posterior std": [round(float(std[:, c].mean()), 3) for c in channels],
        "posterior std, VAE units": [round(float(std[:, c].mean() / (LATENT_SCALE * factor)), 3) for c in channels],
        "frame-to-frame std of the mean": [round(float(mean[:, c].std(axis=0).mean()), 3) for c in channels],
    }


@torch.no_grad()
def one_step_clean_estimate(models: ModelBundle, run: Path, clip: Clip, window: int) -> dict[str, dict]:
    """rms error of the UNet's one-step estimate of the clean latents, by timestep, channel and region."""
    cached = np.load(run / "latents" / f"{clip.name}.npz")
    start = clip.held_out.start

    def window_at(array: np.ndarray, first: int) -> torch.Tensor:  # (1, 4, window, h, w)
        return frames_second(torch.from_numpy(array[first : first + window])).float()

    clean = window_at(cached["face_mean"], start)
    masked = window_at(cached["masked_mean"], start)
    reference = window_at(cached["face_mean"], start + 2 * window)  # elsewhere in the held-out part
    audio = torch.from_numpy(clip.audio[start : start + window])
    size = clean.shape[-1]
    keep = torch.from_numpy(latent_mask(mouth_mask(size * 8), size))
    mask = keep[None, None, None].expand(1, 1, window, size, size)
    alphas_cumprod = make_scheduler("ddim", 20).alphas_cumprod.float()
    unet = models.unet.float()
    generator = torch.Generator().manual_seed(0)
    results = {"channel rms": [round(float(clean[0, c].square().mean().sqrt()), 3) for c in range(clean.shape[1])]}
    for timestep in TIMESTEPS:
        assert timestep < TRAIN_TIMESTEPS
        noise = torch.randn(clean.shape, generator=generator)
        alpha = alphas_cumprod[timestep]
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        predicted = unet(torch.cat([noisy, mask, masked, reference], dim=1), torch.tensor([timestep]), audio)
        error = ((noisy - (1 - alpha).sqrt() * predicted) / alpha.sqrt() - clean)[0]  # (4, n, h, w)
        results[f"t={timestep}"] = {
            region: [round(float(error[c][:, where].square().mean().sqrt()), 3) for c in range(error.shape[0])]
            for region, where in (("visible", keep > 0.5), ("mouth", keep < 0.5))
        }
    return results


def log_mel_rows(clip: Clip, media_dir: Path) -> np.ndarray:
    """(n, 10, 160): the log-mel under each frame's 10 encoder positions (two mel frames per position)."""
    mel = log_mel_spectrogram(load_audio(media_dir / f"{clip.name}_video.mp4"))  # (80, T) at 100/s
    pairs = mel[:, : mel.shape[1] // 2 * 2].T.reshape(-1, 1, 2 * mel.shape[0])  # (T/2, 1, 160) at 50/s
    return feature_chunks(pairs)[: clip.num_frames].numpy()


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression in its dual form (far fewer frames than features)."""
    gram = train_x @ train_x.T
    weights = np.linalg.solve(gram + penalty * np.eye(len(gram)), train_y)
    return test_x @ (train_x.T @ weights)


def standardised(values: np.ndarray, train: int) -> np.ndarray:
    """Each column to zero mean and unit deviation over the first `train` rows."""
    values = values.astype(np.float64)
    return (values - values[:train].mean(0)) / (values[:train].std(0) + 1e-6)


def ridge_scores(clip_data: list[tuple], penalty: float, validation: bool) -> dict[str, float]:
    """One ridge fit on every clip's frames before its split; per clip, the correlation after it.

    clip_data: (name, rows, grey level, training frames) per clip. The split is the held-out
    part's start, scored to the clip's end; for validation it is 3/4 of the training frames,
    scored up to the held-out part."""
    splits = {name: (train * 3 // 4, train) if validation else (train, len(grey)) for name, _, grey, train in clip_data}
    fit_x = np.concatenate([rows[: splits[name][0]] for name, rows, _, _ in clip_data])
    fit_y = np.concatenate([grey[: splits[name][0]] for name, _, grey, _ in clip_data])
    scores = {}
    for name, rows, grey, _ in clip_data:
        start, stop = splits[name]
        predicted = ridge_predict(fit_x, fit_y, rows[start:stop], penalty)
        scores[name] = float(np.corrcoef(predicted, grey[start:stop])[0, 1])
    return scores


READ_OUT_FEATURES = ("audio encoder rows", "log-mel at the same positions", "visible face latents")


def feature_rows(features: str, clip: Clip, data: Path, media_dir: Path) -> np.ndarray:
    """(n, ...) per frame: the audio encoder's rows, the log-mel beneath them, or the masked face's latents."""
    if features == "audio encoder rows":
        return clip.audio
    if features == "log-mel at the same positions":
        return log_mel_rows(clip, media_dir)
    return np.load(data / "latents" / f"{clip.name}.npz")["masked_mean"]  # the posterior means the UNet is handed


def mouth_grey(clip: Clip, brightness_removed: bool) -> np.ndarray:
    """(n,) the mouth box's mean grey level per frame; or what is left of it after a straight-line fit (on the
    training frames) on the visible face's mean grey level, so that the light's drift over a clip does not count."""
    grey = np.stack(mouth_crops(clip.faces)).mean(axis=(1, 2, 3))
    if not brightness_removed:
        return grey
    visible = clip.faces[:, mouth_mask(clip.faces.shape[1]) > 0.5].mean(axis=(1, 2))
    train = clip.held_out.start
    slope, intercept = np.polyfit(visible[:train], grey[:train], 1)
    return grey - (intercept + slope * visible)


def read_out_mouth(clips: list[Clip], data: Path, media_dir: Path, feature_sets: tuple[str, ...]) -> dict[str, dict]:
    """Held-out correlation of a ridge fit from each frame's features to its mouth's grey level, per clip: the
    mouth box's mean grey level as it is, and with the light's drift removed (`mouth_grey`).

    Features and grey levels are standardised per clip on its training frames. The penalty is picked
    on the last quarter of each clip's training frames (fitted on the rest), then the fit is
    redone on all training frames and scored on the held-out ones."""
    greys = {removed: [standardised(mouth_grey(clip, removed), clip.held_out.start) for clip in clips]
             for removed in (False, True)}
    results = {}
    for features in feature_sets:
        rows = [standardised(feature_rows(features, clip, data, media_dir).reshape(clip.num_frames, -1),
                             clip.held_out.start) for clip in clips]
        for brightness_removed in (False, True):
            clip_data = [(clip.name, clip_rows, grey, clip.held_out.start)
                         for clip, clip_rows, grey in zip(clips, rows, greys[brightness_removed])]
            penalty = max(RIDGE_PENALTIES,
                          key=lambda value: np.mean(list(ridge_scores(clip_data, value, validation=True).values())))
            held_out = ridge_scores(clip_data, penalty, validation=False)
            name = f"{features}, light's drift removed" if brightness_removed else features
            results[name] = {"penalty": penalty, **{clip: round(value, 3) for clip, value in held_out.items()},
                             "mean": round(float(np.mean(list(held_out.values()))), 3)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a proxy training run folder (default: the shipped proxy, with the "
                                                 "data of --data)")
    parser.add_argument("--data", type=Path, help="a run folder whose data/ and latents/ to use (default: --run)")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (of --part)")
    parser.add_argument("--part", choices=("held-out", "training", "still"), default="held-out",
                        help="seed: the clips' held-out frames, their first training frames (seen in training), "
                             "or the first held-out face as a still portrait under the held-out speech")
    parser.add_argument("--guidance", default="1.5", help="comma-separated guidance scales for the seed measurement")
    parser.add_argument("--window", type=int, default=16, help="x0: frames of the one window")
    parser.add_argument("--clip", default="demo2", help="latents, x0: the clip")
    parser.add_argument("--clips", help="seed, visible, channels, audio: only these clips (comma-separated; "
                                        "default: all three)")
    parser.add_argument("--only", choices=("seed", "visible", "channels", "latents", "x0", "audio"), action="append",
                        help="run only these")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--media", type=Path, default=MEDIA_DIR)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    data = args.data or args.run
    if data is None:
        parser.error("--data (a run folder with data/ and latents/) is needed with the shipped proxy")
    torch.set_num_threads(args.threads)
    models = run_models(args.run) if args.run else load_models("proxy")
    clips = load_clips(data, tuple(args.clips.split(",")) if args.clips else DEMO_CLIPS)
    settings = mode_settings("normal")
    only = set(args.only or ("seed", "visible", "channels", "latents", "x0", "audio"))
    clip = load_clips(data, (args.clip,))[0]
    results: dict = {"weights": str(args.run or "proxy (shipped)"), "frames_per_clip": args.frames}
    if "seed" in only:
        for guidance in (float(value) for value in args.guidance.split(",")):
            results[f"seed, guidance {guidance}, {args.part} frames"] = row = seed_against_speech(
                models, replace(settings, guidance=guidance), clips, args.frames, args.media, args.part)
            print(f"guidance {guidance}: {row}", flush=True)
    if "visible" in only:
        results["visible"] = visible_face_against_speech(models, settings, clips, args.frames, args.media)
        print(f"visible: {results['visible']}", flush=True)
    if "channels" in only:
        results["channels"] = seed_by_channel(models, settings, clips, args.frames)
        print(f"channels: {results['channels']}", flush=True)
    if "latents" in only:
        results["latents"] = latent_channels(data, clip)
        print(f"latents ({args.clip}): {results['latents']}", flush=True)
    if "x0" in only:
        results["x0"] = one_step_clean_estimate(models, data, clip, args.window)
        print(f"x0 ({args.clip}): {json.dumps(results['x0'])}", flush=True)
    if "audio" in only:
        results["audio"] = read_out_mouth(clips, data, args.media, READ_OUT_FEATURES)
        print(f"audio: {results['audio']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

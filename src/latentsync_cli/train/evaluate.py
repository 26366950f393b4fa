"""Is it a model? The proxy on the held-out frames of each demo clip, with their own speech.

Scored inside the mouth box against the real (aligned) frames, in the
pipeline's own generation (bench.heldout: FaceGenerator at `normal`):

    proxy               `normal` (the preset table's: DDIM 20 steps, guidance 1.5), own speech
    proxy, zero audio   the same without the speech (guidance changes nothing then: run at 1.0)
    reference pasted    the trivial baseline: the masked face with the reference frame's mouth pasted in
    VAE reconstruction  the upper bound: each real face through the VAE

In all four the reference frame comes from elsewhere in the held-out part of
the clip (half of it away), as in training: `sync` takes each frame as its
own reference, and against the real frames that would hand the model (and the
trivial baseline) the answer. The `sync` way is reported too, for information.

Does the mouth follow the speech? With `sync`'s references, the same frames
are generated with another speech (the clip's demo*_audio.wav) and with
another seed; the mean change in the mouth box must be clearly larger for the
speech than for the seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from latentsync_cli.bench.heldout import (
    generate_faces,
    mouth_change,
    mouth_scores,
    pasted_reference,
    vae_reconstruction,
)
from latentsync_cli.media.audio import load_audio
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.settings.hardware import probe_devices
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings, resolve_settings
from latentsync_cli.train.data import Clip, audio_stem_gain, load_clips
from latentsync_cli.train.run import trained_unet_weights
from latentsync_cli.train.unet import build_unet
from latentsync_cli.train.vae import load_trained_vae
from latentsync_cli.weights.load import ModelBundle
from latentsync_cli.weights.proxy import PROXY_RESOLUTION, proxy_audio_encoder, proxy_unet_config, proxy_vae_config

OTHER_SEED_OFFSET = 1  # the second seed of the seed-versus-speech comparison


def run_models(out: Path) -> ModelBundle:
    """The proxy as the run folder holds it now: the finished VAE and the UNet's EMA weights."""
    info = json.loads((out / "data" / "info.json").read_text())
    unet = build_unet(proxy_unet_config(), seed=0)
    unet.load_state_dict(trained_unet_weights(out))
    return ModelBundle(
        unet=unet.eval().requires_grad_(False),
        vae=load_trained_vae(proxy_vae_config(), out / "vae"),
        audio_encoder=proxy_audio_encoder(info["audio_encoder"], audio_stem_gain(info)),
        resolution=PROXY_RESOLUTION,
        weights_id="proxy-run",
        description=f"proxy training run {out}",
        is_random=False,
        is_proxy=True,
    )


def mode_settings(mode: str = "normal") -> RunSettings:
    """The preset table's `mode` at quality `balanced`, on the CPU."""
    request = SettingsRequest(mode=mode, quality="balanced", device="cpu")
    return resolve_settings(load_presets(), request, probe_devices().devices).settings


def other_speech(media_dir: Path, clip: Clip, extractor: AudioFeatureExtractor, rows: range) -> torch.Tensor:
    """The audio rows of the clip's other speech (demo*_audio.wav) for the held-out frames (wrapped if short)."""
    features = extractor(load_audio(media_dir / f"{clip.name}_audio.wav"))
    return features[torch.as_tensor(np.asarray(rows) % len(features))]


def evaluate_clip(models: ModelBundle, clip: Clip, other_audio: torch.Tensor, settings: RunSettings, frames: range):
    """Every candidate of the table for the held-out `frames` of `clip`: name -> uint8 faces."""
    real = clip.faces[frames.start : frames.stop]
    own = torch.from_numpy(clip.audio[frames.start : frames.stop])
    references = real[(np.arange(len(real)) + len(real) // 2) % len(real)]
    silent = replace(settings, guidance=1.0)  # zero audio: guidance would subtract zero audio from itself
    other_seed = replace(settings, seed=settings.seed + OTHER_SEED_OFFSET)
    return {
        "real": real,
        "proxy": generate_faces(models, settings, real, own, references),
        "proxy, zero audio": generate_faces(models, silent, real, torch.zeros_like(own), references),
        "reference pasted": pasted_reference(real, references),
        "VAE reconstruction": vae_reconstruction(models, real, settings.seed),
        "sync: proxy": generate_faces(models, settings, real, own),
        "sync: proxy, other speech": generate_faces(models, settings, real, other_audio),
        "sync: proxy, other seed": generate_faces(models, other_seed, real, own),
    }


SCORED = ("proxy", "proxy, zero audio", "reference pasted", "VAE reconstruction", "sync: proxy")


def score(candidates: dict[str, np.ndarray]) -> dict:
    real = candidates["real"]
    scores = {name: mouth_scores(real, candidates[name]) for name in SCORED}
    base = candidates["sync: proxy"]
    scores["mouth change, other speech"] = mouth_change(base, candidates["sync: proxy, other speech"])
    scores["mouth change, other seed"] = mouth_change(base, candidates["sync: proxy, other seed"])
    return scores


def evaluate_run(out: Path, media_dir: Path, models: ModelBundle | None = None, max_frames: int | None = None,
                 log=print) -> dict:
    """The held-out table of the run's proxy (or of `models`), written to <out>/eval/heldout.{json,md}."""
    started = time.perf_counter()
    models = models or run_models(out)
    settings = mode_settings("normal")
    extractor = AudioFeatureExtractor(models.audio_encoder)
    pooled: dict[str, list[np.ndarray]] = {}
    results = {"settings": {k: settings.to_dict()[k] for k in ("steps", "scheduler", "guidance", "window", "seed")}}
    for clip in load_clips(out):
        frames = clip.held_out if max_frames is None else clip.held_out[:max_frames]
        log(f"{clip.name}: {len(frames)} held-out frames")
        candidates = evaluate_clip(models, clip, other_speech(media_dir, clip, extractor, frames), settings, frames)
        results[clip.name] = score(candidates)
        for name, faces in candidates.items():
            pooled.setdefault(name, []).append(faces)
    results["all"] = score({name: np.concatenate(parts) for name, parts in pooled.items()})
    results["seconds"] = round(time.perf_counter() - started, 1)
    folder = out / "eval"
    folder.mkdir(exist_ok=True)
    (folder / "heldout.json").write_text(json.dumps(results, indent=2))
    (folder / "heldout.md").write_text(markdown_table(results))
    log(markdown_table(results))
    return results


def markdown_table(results: dict) -> str:
    clips = [key for key in results if isinstance(results[key], dict) and "proxy" in results[key]]
    lines = ["| candidate | " + " | ".join(f"{clip} PSNR / SSIM" for clip in clips) + " |",
             "|---|" + "---|" * len(clips)]
    for name in SCORED:
        cells = []
        for clip in clips:
            entry = results[clip][name]
            psnr = "identical" if entry["mouth_psnr"] is None else f"{entry['mouth_psnr']:.2f} dB"
            cells.append(f"{psnr} / {entry['mouth_ssim']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("mouth change, other speech", "mouth change, other seed"):
        lines.append(f"| {name} (mean abs, 0-255) | " + " | ".join(f"{results[c][name]:.2f}" for c in clips) + " |")
    return "\n".join(lines) + "\n"

"""Fidelity against real frames: generate the mouths of aligned faces and score them where the model works.

The faces are aligned crops (uint8 (n, R, R, 3), as face.track.FaceLocator cuts
them) with their audio rows; generation runs the pipeline's own FaceGenerator
(VAE encode -> denoise -> VAE decode -> paste the unmasked pixels back), so the
faces are the ones `sync` would paste into the frames. Scores are taken inside
the bounding box of the mask's generated region (bench.fidelity.mouth_box).

`references` replaces the reference channels (normally the frames themselves,
as in `sync`) with other faces. With the real frames as the target, a frame is
its own perfect reference; scoring on held-out frames therefore takes the
reference from elsewhere in the clip, as LatentSync's training does.

Used by scripts/train_proxy.py evaluate (the held-out table of the proxy).
"""

from __future__ import annotations

import numpy as np
import torch

from latentsync_cli.bench.fidelity import compare_mouths, mouth_box
from latentsync_cli.face.mask import mouth_mask
from latentsync_cli.models.vae import decode_latents, encode_latents, to_vae_range
from latentsync_cli.pipeline.faces import FaceGenerator
from latentsync_cli.pipeline.lipsync import LipsyncPipeline
from latentsync_cli.pipeline.windows import WindowInput, window_ranges
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import StageTimer
from latentsync_cli.weights.load import ModelBundle


class ReferenceFaceGenerator(FaceGenerator):
    """FaceGenerator whose reference latents are encoded from other faces (uint8 (n, 3, R, R) per window)."""

    def __init__(self, *args, references: dict[int, torch.Tensor], **kwargs):
        super().__init__(*args, **kwargs)
        self.references = references

    def reference_faces(self, window, faces):
        return to_vae_range(self.references[window.index].to(self.device)), None


def to_chw(faces: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).contiguous()


def to_uint8(faces: torch.Tensor) -> np.ndarray:
    """float (n, 3, R, R) in [-1, 1] -> uint8 (n, R, R, 3)."""
    pixels = ((faces.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def face_windows(faces: np.ndarray, window: int) -> list[WindowInput]:
    """Consecutive windows of aligned faces, every frame with a face (frame i takes audio row i)."""
    windows = []
    for index, frames in enumerate(window_ranges(len(faces), window)):
        windows.append(
            WindowInput(
                index=index,
                first_frame=frames.start,
                frames=[None] * len(frames),
                has_face=np.ones(len(frames), dtype=bool),
                faces=to_chw(faces[frames.start : frames.stop]),
                affines=[np.eye(2, 3)] * len(frames),
            )
        )
    return windows


@torch.no_grad()
def generate_faces(
    models: ModelBundle,
    settings: RunSettings,
    faces: np.ndarray,
    audio_features: torch.Tensor,
    references: np.ndarray | None = None,
) -> np.ndarray:
    """The faces `sync` makes from aligned `faces` (n, R, R, 3) and audio rows (n, 50, 384), as uint8.

    references: None (each frame is its own reference, as in `sync`) or faces (n, R, R, 3).
    """
    pipeline = LipsyncPipeline(models, settings, StageTimer(settings.device))
    paste_mask = torch.from_numpy(mouth_mask(models.resolution))[None, None].to(pipeline.device)
    windows = face_windows(faces, settings.window)
    if references is None:
        generator = pipeline.face_generator(audio_features, paste_mask)
    else:
        by_window = {w.index: to_chw(references[w.first_frame : w.first_frame + len(w.frames)]) for w in windows}
        args = (models, pipeline.plan, settings, pipeline.device, pipeline.timer, audio_features, paste_mask)
        generator = ReferenceFaceGenerator(*args, references=by_window)
    outputs = generator.generate(windows, pipeline.ladder.current)
    return np.concatenate([to_uint8(output.wait()) for output in outputs])


@torch.no_grad()
def vae_reconstruction(models: ModelBundle, faces: np.ndarray, seed: int = 0) -> np.ndarray:
    """The upper bound of any generation: each face through the VAE, its unmasked pixels pasted back."""
    pixels = to_vae_range(to_chw(faces))
    return decoded_and_pasted(models, encode_latents(models.vae, pixels, torch.Generator().manual_seed(seed)), pixels)


@torch.no_grad()
def decoded_and_pasted(models: ModelBundle, latents: torch.Tensor, pixels: torch.Tensor) -> np.ndarray:
    """Latents (n, 4, h, w) decoded, the faces' unmasked pixels (n, 3, R, R) in [-1, 1] pasted back, as uint8."""
    decoded = decode_latents(models.vae, latents).float().cpu()
    keep = torch.from_numpy(mouth_mask(models.resolution))[None, None]
    return to_uint8(decoded * (1.0 - keep) + pixels * keep)


def pasted_reference(faces: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The trivial baseline: each face with its reference's mouth region pasted in (the same soft mask)."""
    keep = mouth_mask(faces.shape[1])[None, :, :, None]
    return np.round(faces * keep + references * (1.0 - keep)).astype(np.uint8)


def mouth_crops(faces: np.ndarray) -> list[np.ndarray]:
    top, bottom, left, right = mouth_box(faces.shape[1])
    return list(faces[:, top:bottom, left:right])


def mouth_scores(real: np.ndarray, candidate: np.ndarray) -> dict:
    """Mouth PSNR, SSIM and temporal consistency of `candidate` faces against `real` ones (bench.fidelity)."""
    return compare_mouths(mouth_crops(real), mouth_crops(candidate))


def mouth_change(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two face sequences inside the mouth box."""
    a, b = np.stack(mouth_crops(first)).astype(np.float64), np.stack(mouth_crops(second)).astype(np.float64)
    return float(np.abs(a - b).mean())

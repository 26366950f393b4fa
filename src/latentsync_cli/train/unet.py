"""LatentSync's stage-2 objective on the proxy's UNet.

One step takes a window of `window` consecutive training frames of one clip:

    x0        the frames' latents, sampled from their cached VAE posteriors
    masked    the latents of the same frames with the mouth blanked (the pipeline's mask)
    reference the latents of another window of the same clip (no frame in common), as
              upstream's training data takes its reference clip from elsewhere in the video:
              the model cannot copy the mouth, it has to draw it from the audio
    audio     each frame's (50, 384) audio embeddings, its cross-attention tokens; zeros for a
              whole window with probability `audio_drop`, so that classifier-free guidance
              (whose unconditional half is zero audio, as upstream's) has something to subtract

and a DDPM timestep t ~ U{0..999} over the scheduler config's betas (scaled_linear
0.00085 -> 0.012). The noise is upstream's "mixed noise" (alpha 1): half of its
variance shared by every frame of the window, half drawn per frame, so the model
sees both the independent noise of training and the one shared noise the pipeline
starts every frame from. The UNet gets the 13 channels [noisy 4 | mask 1 | masked 4 |
reference 4] and predicts the noise; the loss is the squared error weighted
1 + `mouth_weight` inside the mask's generated region (the only part the pipeline
keeps: the rest of the face is pasted back from the input).

`x0_weight_cap` > 0 also weights each step by clamp((1 - a_t) / a_t, 1, cap), a_t the
timestep's alphas_cumprod: the noise error as it shows in the predicted clean latents.
Plain noise MSE hardly trains the high-noise steps: at t = 950, taking the noisy
latents themselves for the noise already scores under 0.01, whatever the face. Yet
those steps set the mouth's shape, and a small model trained that way takes its shape
from the seed (docs/PERFORMANCE.md, "Where the seed's hold comes from").

`visible_jitter` J > 0 hands the model, for each frame, the masked latents of a frame drawn
uniformly within J frames of it (in the same clip's training frames). The visible part of the
face tells the mouth's state well (upstream's "shortcut learning"; docs/PERFORMANCE.md, "After
run 4"); jittered, it tells only roughly when, and the speech is left to tell the rest.

`sync_weight` > 0 adds upstream's other stage-2 term. The clean latents the noise
estimate implies, a_t^-1/2 (noisy - (1 - a_t)^1/2 noise estimate), with the kept part
of the face taken from the target as the pipeline pastes it, are scored against the
window's speech by the run's SyncNet (train/syncnet.py; frozen), over every run of
SYNC_FRAMES frames in the window. The term is its binary cross-entropy against "in
sync", times `sync_weight`. Steps whose audio is dropped have no speech to score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from latentsync_cli.constants import TRAIN_TIMESTEPS
from latentsync_cli.face.mask import latent_mask, mouth_mask
from latentsync_cli.models.motion import MotionModule
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.optimizers.schedulers import make_scheduler
from latentsync_cli.train.loop import Recipe, StepFunction, draw_start
from latentsync_cli.train.syncnet import LatentSyncNet, sliding_windows


@dataclass(frozen=True)
class UnetRecipe(Recipe):
    steps: int = 6000
    window: int = 16  # upstream's training window, and `normal` mode's
    learning_rate: float = 2e-4
    warmup_steps: int = 200
    decay_fraction: float = 0.2
    mouth_weight: float = 3.0
    audio_drop: float = 0.1
    mixed_noise_alpha: float = 1.0
    ema_decay: float = 0.999
    x0_weight_cap: float = 0.0  # 0: upstream's plain noise MSE (see the module's docstring)
    sync_weight: float = 0.0  # > 0: add the run's SyncNet loss on the implied clean latents (see the docstring)
    visible_jitter: int = 0  # > 0: each frame's masked latents from a frame up to this many frames away (docstring)
    clips: str = ""  # the clips to train on, comma-separated; "": every clip of the run
    seed: int = 2
    init_from: str = ""  # a finished run folder whose UNet (EMA weights) this run starts from; "": from `seed`


def build_unet(config: UNetConfig, seed: int) -> UNet3DConditionModel:
    """PyTorch's default initialisation from `seed`, the motion modules' output projections zeroed
    (upstream's zero_initialize: each motion module starts as the identity)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(config)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, MotionModule):
                module.temporal_transformer.proj_out.weight.zero_()
                module.temporal_transformer.proj_out.bias.zero_()
    return unet


@dataclass
class ClipLatents:
    """One clip's training frames: cached posteriors (already x 0.18215) and audio rows."""

    face_mean: torch.Tensor  # (n, 4, h, w)
    face_std: torch.Tensor
    masked_mean: torch.Tensor
    masked_std: torch.Tensor
    audio: torch.Tensor  # (n, 50, 384)

    @property
    def num_frames(self) -> int:
        return len(self.face_mean)


@dataclass
class Window:
    latents: torch.Tensor  # (1, 4, F, h, w) the target frames
    masked: torch.Tensor  # (1, 4, F, h, w)
    reference: torch.Tensor  # (1, 4, F, h, w)
    audio: torch.Tensor  # (F, 50, 384)


def load_clip_latents(out: Path, held_out: bool = False, names: tuple[str, ...] | None = None) -> list[ClipLatents]:
    """Each clip's training frames (or, with `held_out`, its held-out frames) from the run's cached latents."""
    from latentsync_cli.train.data import DEMO_CLIPS, load_clips

    clips = []
    for clip in load_clips(out, names or DEMO_CLIPS):
        part = slice(clip.train_frames, clip.num_frames) if held_out else slice(0, clip.train_frames)
        if not clip.has_face[part].all():
            raise SystemExit(f"{clip.name}: frames without a face are not supported")
        with np.load(out / "latents" / f"{clip.name}.npz") as cached:
            arrays = {key: torch.from_numpy(cached[key][part]) for key in cached.files}
        clips.append(ClipLatents(audio=torch.from_numpy(clip.audio[part]), **arrays))
    return clips


def frames_second(latents: torch.Tensor) -> torch.Tensor:
    """(F, 4, h, w) -> (1, 4, F, h, w)."""
    return latents.transpose(0, 1)[None]


class LatentWindows:
    """Draws training windows and their reference windows, from the training frames only."""

    def __init__(self, clips: list[ClipLatents], window: int, visible_jitter: int = 0):
        self.clips = clips
        self.window = window
        self.visible_jitter = visible_jitter  # see UnetRecipe
        self.starts = [clip.num_frames - window + 1 for clip in clips]  # window starts per clip
        if min(self.starts) < 2 * window:
            raise ValueError(f"every clip needs at least {3 * window - 1} training frames")

    @classmethod
    def load(
        cls, out: Path, window: int, names: tuple[str, ...] | None = None, visible_jitter: int = 0
    ) -> LatentWindows:
        return cls(load_clip_latents(out, names=names), window, visible_jitter)

    def draw_starts(self, generator: torch.Generator) -> tuple[int, int, int]:
        """(clip, window start, reference start): clips weighted by their windows; the reference window
        shares no frame with the window."""
        clip, start = draw_start(self.starts, generator)
        count, window = self.starts[clip], self.window
        before = max(0, start - window + 1)  # reference starts 0 .. start - window
        after = max(0, count - start - window)  # reference starts start + window .. count - 1
        choice = int(torch.randint(0, before + after, (1,), generator=generator))
        reference = choice if choice < before else start + window + (choice - before)
        return clip, start, reference

    def sample(self, generator: torch.Generator) -> Window:
        clip_index, start, reference = self.draw_starts(generator)
        clip, frames, refs = self.clips[clip_index], slice(start, start + self.window), slice(reference, reference + self.window)

        def draw(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
            return frames_second(mean + std * torch.randn(mean.shape, generator=generator))

        latents = draw(clip.face_mean[frames], clip.face_std[frames])
        visible = self.visible_rows(frames, clip.num_frames, generator)
        return Window(
            latents=latents,
            masked=draw(clip.masked_mean[visible], clip.masked_std[visible]),
            reference=draw(clip.face_mean[refs], clip.face_std[refs]),
            audio=clip.audio[frames],
        )

    def visible_rows(self, frames: slice, num_frames: int, generator: torch.Generator) -> slice | torch.Tensor:
        """The frames whose masked latents the window's frames get: their own, or each one within the jitter."""
        if self.visible_jitter <= 0:
            return frames
        offsets = torch.randint(-self.visible_jitter, self.visible_jitter + 1, (self.window,), generator=generator)
        return (torch.arange(frames.start, frames.stop) + offsets).clamp(0, num_frames - 1)


def unet_step_function(
    windows: LatentWindows, recipe: UnetRecipe, syncnet: LatentSyncNet | None = None
) -> StepFunction:
    alphas_cumprod = make_scheduler("ddim", 20).alphas_cumprod.float()  # the pipeline's betas
    size = windows.clips[0].face_mean.shape[-1]
    keep = torch.from_numpy(latent_mask(mouth_mask(size * 8), size))  # (h, w): 1 = keep, 0 = generate
    mask = keep[None, None, None].expand(1, 1, recipe.window, size, size)
    weight = 1.0 + recipe.mouth_weight * (1.0 - mask)
    shared_std = (recipe.mixed_noise_alpha**2 / (1 + recipe.mixed_noise_alpha**2)) ** 0.5
    independent_std = (1 / (1 + recipe.mixed_noise_alpha**2)) ** 0.5

    def step_weight_of(alpha: torch.Tensor) -> float:
        if recipe.x0_weight_cap <= 0:
            return 1.0
        return float(((1 - alpha) / alpha).clamp(1.0, recipe.x0_weight_cap))

    def step(unet: UNet3DConditionModel, generator: torch.Generator) -> dict[str, float]:
        window = windows.sample(generator)
        timestep = torch.randint(0, TRAIN_TIMESTEPS, (1,), generator=generator)
        latents = window.latents
        shared = torch.randn((1, 4, 1, size, size), generator=generator)
        independent = torch.randn(latents.shape, generator=generator)
        noise = shared_std * shared + independent_std * independent
        drop_audio = float(torch.rand((), generator=generator)) < recipe.audio_drop
        alpha = alphas_cumprod[timestep]
        step_weight = step_weight_of(alpha)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        sample = torch.cat([noisy, mask, window.masked, window.reference], dim=1)
        audio = torch.zeros_like(window.audio) if drop_audio else window.audio
        prediction = unet(sample, timestep, audio)
        squared = (prediction - noise).square()
        loss = (squared * weight).mean() / weight.mean()
        losses = {"loss": float(loss.detach()), "t": float(timestep)}
        total = loss * step_weight
        if syncnet is not None:
            losses["sync_loss"] = float("nan")  # the log skips it for the steps without speech
            if recipe.sync_weight > 0 and not drop_audio:
                implied = (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
                drawn = (mask * latents + (1 - mask) * implied)[0].transpose(0, 1)  # (F, 4, h, w)
                frames = syncnet.config.frames
                logits = syncnet(sliding_windows(drawn, frames), sliding_windows(window.audio, frames))
                sync_loss = functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                total = total + recipe.sync_weight * sync_loss
                losses["sync_loss"] = float(sync_loss.detach())
        total.backward()
        losses["mouth_mse"] = float(squared.detach()[(1.0 - mask).expand_as(squared) > 0.5].mean())
        return losses

    return step

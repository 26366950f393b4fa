"""A small SyncNet on the proxy's latents: does this mouth go with this speech?

LatentSync's stage 2 adds a SyncNet loss to the noise-prediction MSE: the clean
frames the UNet implies are scored against the speech by a SyncNet trained
beforehand, so that the UNet draws a mouth that goes with it. Upstream's SyncNet
reads pixels and was trained on thousands of speakers (LatentSync 1.0's read
latents). This one reads the proxy's latents, SYNC_FRAMES frames at a time, with those
frames' audio rows: only the part of the lower half that the UNet draws (the
mask's generated region), so that what it learns to match with the speech is
the mouth, not the jaw line or the pose that the pipeline keeps from the input.
It is trained here on the training frames only, in chunks like the other stages:

    positive  a window's latents (drawn from their cached posteriors) with its own rows
    negative  the same latents with the rows of a window of the same clip at least
              `min_shift` frames away (so the face and the voice are the same person's,
              only the timing is wrong: the model has to look at the mouth)

Each pair's logit is `LOGIT_SCALE` x the cosine of the two embeddings; the loss is
binary cross-entropy. `evaluate_syncnet` scores the held-out frames the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional

from latentsync_cli.face.mask import latent_mask, mouth_mask
from latentsync_cli.train.loop import Recipe, StepFunction, draw_start

SYNC_FRAMES = 5  # 0.2 s at 25 fps, as SyncNet's
LOGIT_SCALE = 5.0  # cosine in [-1, 1] -> logit in [-5, 5]
FINAL_FILE = "syncnet.safetensors"


@dataclass(frozen=True)
class SyncRecipe(Recipe):
    steps: int = 1500
    batch: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.3
    min_shift: int = 5  # a negative's rows come from at least this many frames away
    seed: int = 3


@dataclass(frozen=True)
class SyncNetConfig:
    frames: int = SYNC_FRAMES
    latent_channels: int = 4
    latent_rows: int = 8  # the lower half of a 16 x 16 latent: its generated region is what the net sees
    latent_size: int = 16
    audio_tokens: int = 50
    audio_dim: int = 384
    audio_width: int = 8  # each audio token is projected to this many numbers before the frames are joined
    width: int = 64
    embedding: int = 128


class LatentSyncNet(nn.Module):
    """Two small encoders into one embedding space: latents of the lower face, and audio rows."""

    def __init__(self, config: SyncNetConfig = SyncNetConfig()):
        super().__init__()
        self.config = config
        c = config
        generated = 1.0 - latent_mask(mouth_mask(c.latent_size * 8), c.latent_size)
        self.register_buffer("generated", torch.from_numpy(generated[-c.latent_rows :]), persistent=False)
        self.visual = nn.Sequential(
            nn.Conv2d(c.frames * c.latent_channels, c.width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c.width, c.width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c.width, 2 * c.width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * c.width * (c.latent_rows // 4) * (c.latent_size // 4), c.embedding),
        )
        self.audio_token = nn.Linear(c.audio_dim, c.audio_width)
        self.audio = nn.Sequential(
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c.frames * c.audio_tokens * c.audio_width, 4 * c.width),
            nn.SiLU(),
            nn.Linear(4 * c.width, c.embedding),
        )

    def forward(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """latents (B, frames, 4, size, size), audio (B, frames, tokens, dim) -> logits (B,)."""
        mouths = latents[..., -self.config.latent_rows :, :] * self.generated
        seen = functional.normalize(self.visual(mouths.flatten(1, 2)), dim=-1)
        heard = functional.normalize(self.audio(self.audio_token(audio)), dim=-1)
        return LOGIT_SCALE * (seen * heard).sum(-1)


def build_syncnet(seed: int, config: SyncNetConfig = SyncNetConfig()) -> LatentSyncNet:
    """PyTorch's default initialisation from `seed` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentSyncNet(config)


def sliding_windows(frames: torch.Tensor, length: int) -> torch.Tensor:
    """(F, ...) -> (F - length + 1, length, ...): every run of `length` consecutive frames."""
    return torch.stack([frames[start : start + length] for start in range(len(frames) - length + 1)])


def sync_step_function(clips, recipe: SyncRecipe, config: SyncNetConfig = SyncNetConfig()) -> StepFunction:
    """One step: `batch` positive and `batch` negative pairs from the training frames (`clips`: ClipLatents)."""
    length = config.frames
    counts = [clip.num_frames - length + 1 for clip in clips]

    def draw_pair(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, start = draw_start(counts, generator)
        clip = clips[index]
        far = [s for s in range(counts[index]) if abs(s - start) >= recipe.min_shift]
        other = far[int(torch.randint(0, len(far), (1,), generator=generator))]
        frames = slice(start, start + length)
        mean, std = clip.face_mean[frames], clip.face_std[frames]
        latents = mean + std * torch.randn(mean.shape, generator=generator)
        return latents, clip.audio[frames], clip.audio[other : other + length]

    def step(syncnet: LatentSyncNet, generator: torch.Generator) -> dict[str, float]:
        pairs = [draw_pair(generator) for _ in range(recipe.batch)]
        latents = torch.stack([pair[0] for pair in pairs])
        own = torch.stack([pair[1] for pair in pairs])
        shifted = torch.stack([pair[2] for pair in pairs])
        logits = torch.cat([syncnet(latents, own), syncnet(latents, shifted)])
        labels = torch.cat([torch.ones(recipe.batch), torch.zeros(recipe.batch)])
        loss = functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        accuracy = ((logits.detach() > 0).float() == labels).float().mean()
        return {"loss": float(loss.detach()), "accuracy": float(accuracy)}

    return step


@torch.no_grad()
def evaluate_syncnet(syncnet: LatentSyncNet, clips, min_shift: int) -> dict[str, float]:
    """On each clip's frames (posterior means): the share of windows whose own rows score above the rows
    `min_shift` frames later, and the mean logits of own and shifted rows."""
    length = syncnet.config.frames
    wins, own_logits, shifted_logits = [], [], []
    for clip in clips:
        latents = sliding_windows(clip.face_mean, length)
        audio = sliding_windows(clip.audio, length)
        count = len(latents) - min_shift
        own = syncnet(latents[:count], audio[:count])
        shifted = syncnet(latents[:count], audio[min_shift:])
        wins.append((own > shifted).float())
        own_logits.append(own)
        shifted_logits.append(shifted)
    return {"own_beats_shifted": float(torch.cat(wins).mean()), "own_logit": float(torch.cat(own_logits).mean()),
            "shifted_logit": float(torch.cat(shifted_logits).mean())}


def load_trained_syncnet(stage_dir: Path) -> LatentSyncNet:
    syncnet = LatentSyncNet()
    syncnet.load_state_dict(load_file(stage_dir / FINAL_FILE))
    return syncnet.eval().requires_grad_(False)

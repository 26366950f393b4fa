"""FaceGenerator: windows of aligned faces in, generated faces out, on the device the models run on.

    VAE encode (masked face, whole face) -> denoise -> VAE decode -> paste the unmasked pixels back

Built once per job with the job's audio features and paste mask. The memory
ladder calls `generate(windows, memory)` with its current rung; windows with
the same face count share one UNet call, up to `memory.windows_per_call`.

What runs follows upstream (LATENTSYNC_REFERENCE.md): one initial noise shared
by all frames, masked and reference latents sampled from the VAE with the
window's own draws (a NoiseSource: the tool's per-window seeding, or draws a
test injects), the 13-channel UNet input, classifier-free guidance with zero
audio, and the unmasked pixels pasted back after decoding. Checked end to end
against upstream's own run by tests/test_golden_e2e.py (docs/UPSTREAM.md).
"""

from __future__ import annotations

import numpy as np
import torch

from latentsync_cli.face.mask import latent_mask, mouth_mask
from latentsync_cli.face.restore_torch import restore_faces_torch
from latentsync_cli.models.vae import (
    DOWNSAMPLE_FACTOR,
    LATENT_CHANNELS,
    decode_latents,
    encode_latents,
    to_vae_range,
)
from latentsync_cli.optimizers.memory import MemorySettings, on_device
from latentsync_cli.optimizers.run_plan import RunPlan
from latentsync_cli.pipeline.denoise import DenoiseInputs, DenoiseResult, denoise
from latentsync_cli.pipeline.windows import (
    NoiseSource,
    SeededNoise,
    WindowInput,
    WindowOutput,
    batches_of_equal_length,
)
from latentsync_cli.settings.run_settings import RunSettings
from latentsync_cli.timing import StageTimer
from latentsync_cli.unet_steps import UNetSteps
from latentsync_cli.weights.load import ModelBundle


class FaceGenerator:
    def __init__(
        self,
        models: ModelBundle,
        plan: RunPlan,
        settings: RunSettings,
        device: torch.device,
        timer: StageTimer,
        audio_features: torch.Tensor,
        paste_mask: torch.Tensor,
        keep_on_device: bool = False,
        noise: NoiseSource | None = None,
    ):
        self.keep_on_device = keep_on_device  # the faces are pasted back on the device (restore_on_device)
        self.models = models
        self.plan = plan
        self.device = device
        self.timer = timer
        self.lane = device.type  # the timer lane of this work is named after the device that does it
        self.audio_features = audio_features  # (N, 50, 384): one row per output frame
        self.paste_mask = paste_mask  # (1, 1, R, R): 1 = keep the input pixel, 0 = take the generated one
        # The UNet's mask channel and the masked image use upstream's hard-edged mask.
        unet_mask = mouth_mask(models.resolution)
        self.image_mask = torch.from_numpy(unet_mask)[None, None].to(device)  # (1, 1, R, R)
        self.latent_mask = torch.from_numpy(latent_mask(unet_mask, models.resolution // 8))[None, None, None]
        # Every random draw: the tool's per-window seeding unless a test injects upstream's recorded draws.
        self.noise_source = noise if noise is not None else SeededNoise(settings.seed)
        self.noise = self.noise_source.initial_noise(models.resolution // 8)
        # The dtype the generated faces leave in (WindowOutput, the work dir): float16 halves their memory and
        # storage; it rounds the paste-back by one grey level in ~0.7 % of the face box's values (docs/UPSTREAM.md).
        self.face_dtype = torch.float16
        self.steps = UNetSteps()  # what the UNet did, summed over UNet calls
        # Warm start: the last generated window's index and its last frame's denoised latents (1, 4, 1, h, w).
        self.last_window: tuple[int, torch.Tensor] | None = None

    @torch.no_grad()
    def generate(self, windows: list[WindowInput], memory: MemorySettings) -> list[WindowOutput]:
        """The generated faces of every window (each has at least one face), in order."""
        size = 1 if self.plan.warm_start.enabled else memory.windows_per_call  # a warm start needs the last window
        outputs = []
        for batch in batches_of_equal_length(windows, size, any_order=self.plan.smart_batching):
            outputs += self.generate_batch(batch, memory.offload)
        return sorted(outputs, key=lambda output: output.window.index)

    def generate_batch(self, batch: list[WindowInput], offload: bool) -> list[WindowOutput]:
        """One UNet call's windows: encode, denoise, decode and paste back."""
        models, device = self.models, self.device
        pixels = [to_vae_range(window.faces.to(device, non_blocking=True)) for window in batch]
        with on_device(models.vae, device, offload), self.timer.stage("VAE encode", self.lane, gpu=True):
            masked_latents, reference_latents = self.encode(batch, pixels)
        with on_device(models.unet, device, offload), self.timer.stage("denoise", self.lane, gpu=True):
            denoised = self.denoise(batch, masked_latents, reference_latents)
        self.steps.add(denoised.steps)
        with on_device(models.vae, device, offload), self.timer.stage("VAE decode", self.lane, gpu=True):
            return [
                self.to_host(window, self.decode(latents, faces))
                for window, latents, faces in zip(batch, denoised.latents, pixels)
            ]

    def encode(
        self, batch: list[WindowInput], pixels: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per window, (n, 4, h, w) latents of the masked faces and of the whole faces."""
        vae = self.models.vae
        masked_latents, reference_latents = [], []
        for window, faces in zip(batch, pixels):
            height, width = faces.shape[-2] // DOWNSAMPLE_FACTOR, faces.shape[-1] // DOWNSAMPLE_FACTOR
            shape = (len(faces), LATENT_CHANNELS, height, width)
            masked_draw, reference_draw = self.noise_source.posterior_draws(window.index, shape, vae.device, vae.dtype)
            sources = window.face_sources  # a repeated picture is encoded once
            masked_latents.append(encode_latents(vae, faces * self.image_mask, sources=sources, draw=masked_draw))
            references, reference_sources = self.reference_faces(window, faces)
            reference_latents.append(encode_latents(vae, references, sources=reference_sources, draw=reference_draw))
        return masked_latents, reference_latents

    def reference_faces(self, window: WindowInput, faces: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        """The faces (n, 3, R, R) in [-1, 1] whose latents fill the reference channels, and which of them repeat a
        picture: the window's own faces, as upstream takes them (bench.heldout hands in others)."""
        return faces, window.face_sources

    def denoise(
        self, batch: list[WindowInput], masked_latents: list[torch.Tensor], reference_latents: list[torch.Tensor]
    ) -> DenoiseResult:
        """(B, 4, n, h, w) denoised latents for B windows of n face frames each, and the steps run."""
        windows, frames = len(batch), batch[0].face_count
        scheduler = self.plan.make_scheduler(self.device)

        def frames_second(latents: list[torch.Tensor]) -> torch.Tensor:  # B x (n, 4, h, w) -> (B, 4, n, h, w)
            return torch.stack(latents).transpose(1, 2).float()

        audio_rows = np.concatenate([window.face_frame_numbers for window in batch])
        inputs = DenoiseInputs(
            mask=self.latent_mask.repeat(windows, 1, frames, 1, 1).to(self.device),
            masked_latents=frames_second(masked_latents),
            reference_latents=frames_second(reference_latents),
            audio_embeds=self.audio_features[torch.from_numpy(audio_rows)].to(self.device, non_blocking=True),
        )
        latents, first_step = self.initial_latents(batch, scheduler, frames)
        plan = self.plan
        result = denoise(plan.unet_call, scheduler, latents, inputs, plan.guidance, plan.deepcache,
                         loop=plan.loop, first_step=first_step)  # fmt: skip
        if plan.warm_start.enabled:
            self.last_window = (batch[-1].index, result.latents[-1:, :, -1:].clone())
        return result

    def initial_latents(self, batch: list[WindowInput], scheduler, frames: int) -> tuple[torch.Tensor, int]:
        """(B, 4, frames, h, w) starting latents and the step they start at.

        Upstream: the shared noise on every frame, from the first step. A warm start (one window
        per call) right after its previous window: that window's last frame on every frame, noised
        to the warm start's first step.
        """
        noise = self.noise.repeat(len(batch), 1, frames, 1, 1).to(self.device)
        warm = self.plan.warm_start
        if not warm.enabled or self.last_window is None or self.last_window[0] != batch[0].index - 1:
            return noise * scheduler.init_noise_sigma, 0
        first_step = warm.first_step(len(scheduler.timesteps))
        if hasattr(scheduler, "set_begin_index"):  # the multistep solvers and Euler count their steps
            scheduler.set_begin_index(first_step)
        start = self.last_window[1].repeat(1, 1, frames, 1, 1)
        return scheduler.add_noise(start, noise, scheduler.timesteps[first_step : first_step + 1]), first_step

    def decode(self, latents: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """One window's (4, n, h, w) latents -> (n, 3, R, R) faces in face_dtype, the unmasked pixels from `faces`."""
        decoded = decode_latents(self.models.vae, latents.transpose(0, 1)).float()
        pasted = decoded * (1.0 - self.paste_mask) + faces * self.paste_mask
        return pasted.to(self.face_dtype)

    def to_host(self, window: WindowInput, faces: torch.Tensor) -> WindowOutput:
        """Start copying the faces to the CPU (unless they are pasted back on the device, see restore_on_device)."""
        if self.keep_on_device:
            return WindowOutput(window, faces)
        host, ready = copy_to_host(faces)
        return WindowOutput(window, host, ready)


def copy_to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A CPU copy of `tensor`; on CUDA into pinned memory without waiting, with the event that marks it done."""
    if tensor.device.type != "cuda":
        return tensor.cpu(), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def restore_on_device(output: WindowOutput, device: torch.device) -> WindowOutput:
    """Paste a window's faces back into its frames on `device`; only the finished frames come back to the host."""
    window = output.window
    if window.face_count == 0:
        return output
    face_frames = np.stack([frame for frame, found in zip(window.frames, window.has_face) if found])
    frames = torch.from_numpy(face_frames)
    frames = frames.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else frames.to(device)
    restored = restore_faces_torch(frames, output.faces.to(device), window.affines)
    host, ready = copy_to_host(restored)
    return WindowOutput(window, output.faces, ready, restored=host)

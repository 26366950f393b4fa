"""The audio-conditioned 3D UNet of LatentSync 1.6, written to load upstream's checkpoint as is.

Input: 13 latent channels per frame ([noisy 4 | mask 1 | masked image 4 | reference 4]),
a diffusion timestep and per-frame audio tokens; output: the predicted noise.
Internally the frames are folded into the batch, (B*F, C, H, W).

DeepCache is built in: `FeatureCache` lets a caller run the whole UNet once,
keep the hidden state entering one up layer, and on later steps run only the
shallow layers around it (see `UNet3DConditionModel.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from latentsync_cli.models.unet_blocks import DownBlock3D, FrameGroupNorm, UNetMidBlock3DCrossAttn, UpBlock3D
from latentsync_cli.models.unet_config import UNetConfig


@dataclass
class FeatureCache:
    """DeepCache state for one window (see `UNet3DConditionModel.forward`).

    The down path leaves skip tensors s0 (conv_in output), s1, s2, ... (every
    down layer and downsampler output, in order); the up path consumes them in
    reverse. `branch` = b makes the up layer that consumes s_b, and everything
    after it, the shallow part that a reuse pass recomputes.
    """

    branch: int = 0
    hidden: Tensor | None = None  # hidden state entering that up layer, from the last full pass
    reuse: bool = False  # False: full pass that stores `hidden`; True: shallow pass that reuses it


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet3DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], config.time_embed_dim)
        self.down_blocks, skip_channels = self._down_path(config)
        self.mid_block = UNetMidBlock3DCrossAttn(config)
        self.up_blocks = self._up_path(config, skip_channels)
        self.conv_norm_out = FrameGroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)
        self.num_skips = len(skip_channels)
        self._plan_steps()

    @staticmethod
    def _down_path(config: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
        """The down blocks, and the width of each skip tensor s0, s1, ... they leave behind."""
        widths = config.block_out_channels
        levels = len(widths)
        blocks = nn.ModuleList()
        skip_channels = [widths[0]]
        for level, width in enumerate(widths):
            is_last = level == levels - 1
            block = DownBlock3D(
                config,
                in_channels=widths[max(level - 1, 0)],
                out_channels=width,
                with_attention=config.down_block_types[level] == "CrossAttnDownBlock3D",
                with_motion=2**level in config.motion_module_resolutions,
                add_downsample=not is_last,
            )
            blocks.append(block)
            skip_channels += [width] * (block.num_layers + (0 if is_last else 1))
        return blocks, skip_channels

    @staticmethod
    def _up_path(config: UNetConfig, skip_channels: list[int]) -> nn.ModuleList:
        """The up blocks: each layer takes the most recent skip tensor not yet consumed."""
        levels = len(config.block_out_channels)
        blocks = nn.ModuleList()
        unconsumed = list(skip_channels)
        reversed_widths = config.block_out_channels[::-1]
        for level, width in enumerate(reversed_widths):
            consumed = [unconsumed.pop() for _ in range(config.layers_per_block + 1)]
            block = UpBlock3D(
                config,
                skip_channels=consumed,
                prev_channels=reversed_widths[max(level - 1, 0)],
                out_channels=width,
                with_attention=config.up_block_types[level] == "CrossAttnUpBlock3D",
                with_motion=2 ** (levels - 1 - level) in config.motion_module_resolutions,
                add_upsample=level < levels - 1,
            )
            blocks.append(block)
        return blocks

    def _plan_steps(self) -> None:
        """The order in which forward() runs things, as (block, layer) pairs; layer None is the sampler.

        down_steps[k] produces skip s_{k+1}; up_steps also name the skip each layer consumes.
        """
        self.down_steps: list[tuple[int, int | None]] = []
        for index, block in enumerate(self.down_blocks):
            self.down_steps += [(index, layer) for layer in range(block.num_layers)]
            if block.downsamplers is not None:
                self.down_steps.append((index, None))
        self.up_steps: list[tuple[int, int | None, int | None]] = []
        skip = self.num_skips - 1
        for index, block in enumerate(self.up_blocks):
            for layer in range(block.num_layers):
                self.up_steps.append((index, layer, skip))
                skip -= 1
            if block.upsamplers is not None:
                self.up_steps.append((index, None, None))
        self.up_step_consuming = {
            consumed: step for step, (_, layer, consumed) in enumerate(self.up_steps) if layer is not None
        }

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def embed_time(self, timestep: Tensor | int, batch: int, device: torch.device) -> Tensor:
        """int, 0-d or (B,) timestep -> (B, time_embed_dim)."""
        steps = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        sinusoid = get_timestep_embedding(
            steps,
            self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos,
            downscale_freq_shift=self.config.freq_shift,
        )
        return self.time_embedding(sinusoid.to(self.dtype))

    def first_block_input(self, sample: Tensor, timestep: Tensor | int) -> Tensor:
        """conv_in's output shifted by the first ResNet's time projection, (B, F, C, H, W).

        The time-modulated input of the first block: how much it changes between
        steps is step skipping's cheap estimate of how much the output will
        (optimizers/step_skipping.py). It costs conv_in and two small linears.
        """
        batch, _, num_frames, height, width = sample.shape
        temb = self.embed_time(timestep, batch, sample.device)
        x = self.conv_in(sample.transpose(1, 2).reshape(batch * num_frames, -1, height, width).to(self.dtype))
        shift = self.down_blocks[0].resnets[0].time_emb_proj(F.silu(temb))
        return x.unflatten(0, (batch, num_frames)) + shift[:, None, :, None, None]

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int,
        audio_embeds: Tensor,
        cache: FeatureCache | None = None,
    ) -> Tensor:
        """Predict the noise.

        sample: (B, 13, F, H, W), F <= 24, H and W multiples of 8.
        audio_embeds: (B*F, T, 384), batch-major: row r is batch r // F, frame r % F.
        cache: None for a plain pass. With a cache and `cache.reuse` False, a full
        pass that also stores `cache.hidden`; with `cache.reuse` True, only conv_in,
        the time embedding, the down layers that produce s_0..s_branch, the up
        layers from the one consuming s_branch on, and the output head run.
        Returns (B, 4, F, H, W).
        """
        batch, _, num_frames, height, width = sample.shape
        self.check_inputs(sample, audio_embeds, cache)
        temb = self.embed_time(timestep, batch, sample.device)
        audio = audio_embeds.to(self.dtype)

        x = sample.transpose(1, 2).reshape(batch * num_frames, -1, height, width)
        x = self.conv_in(x)
        reuse = cache is not None and cache.reuse
        skips = [x]
        last_skip = cache.branch if reuse else self.num_skips - 1
        for block_index, layer in self.down_steps[:last_skip]:
            block = self.down_blocks[block_index]
            if layer is None:
                x = block.downsamplers[0](x)
            else:
                x = block.layer(layer, x, temb, audio, num_frames)
            skips.append(x)

        if reuse:
            x = cache.hidden
            if x.shape[0] != skips[-1].shape[0] or x.shape[-2:] != skips[-1].shape[-2:]:
                raise ValueError("cache.hidden comes from inputs of another shape: run a full pass with this cache")
            first_step = self.up_step_consuming[cache.branch]
        else:
            x = self.mid_block(x, temb, audio, num_frames)
            first_step = 0

        for block_index, layer, skip in self.up_steps[first_step:]:
            block = self.up_blocks[block_index]
            if layer is None:
                x = block.upsamplers[0](x)
                continue
            if cache is not None and not reuse and skip == cache.branch:
                cache.hidden = x
            x = block.layer(layer, torch.cat([x, skips[skip]], dim=1), temb, audio, num_frames)

        x = self.conv_out(F.silu(self.conv_norm_out(x, num_frames)))
        return x.unflatten(0, (batch, num_frames)).transpose(1, 2).contiguous()

    def check_inputs(self, sample: Tensor, audio_embeds: Tensor, cache: FeatureCache | None) -> None:
        """Shape checks only (no tensor values are read, so torch.compile traces through)."""
        config = self.config
        if sample.ndim != 5 or sample.shape[1] != config.in_channels:
            raise ValueError(f"sample must be (B, {config.in_channels}, F, H, W), got {tuple(sample.shape)}")
        batch, _, num_frames, height, width = sample.shape
        if num_frames > config.max_frames:
            raise ValueError(f"at most {config.max_frames} frames per call (temporal position table), got {num_frames}")
        factor = config.downscale_factor
        if height % factor or width % factor:
            raise ValueError(f"latent height and width must be multiples of {factor}, got {height}x{width}")
        expected = (batch * num_frames, config.cross_attention_dim)
        if audio_embeds.ndim != 3 or (audio_embeds.shape[0], audio_embeds.shape[2]) != expected:
            raise ValueError(
                f"audio_embeds must be (B*F={expected[0]}, T, {expected[1]}), got {tuple(audio_embeds.shape)}"
            )
        if cache is None:
            return
        if not 0 <= cache.branch < self.num_skips:
            raise ValueError(f"cache.branch must be in 0..{self.num_skips - 1}, got {cache.branch}")
        if cache.reuse and cache.hidden is None:
            raise ValueError("cache.reuse is set but cache.hidden is empty: run a full pass with this cache first")

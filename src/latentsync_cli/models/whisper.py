"""The Whisper audio encoder LatentSync conditions on, with openai's key names.

Only the encoder is built: LatentSync never runs the text decoder. The module
names match openai's `tiny.pt` with the `encoder.` prefix removed, so the
checkpoint loads strictly. `AudioEncoder.forward` returns what LatentSync
uses: the stem output and the output of every residual block, all before
`ln_post` (which exists only so that its weights load).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentsync_cli.errors import WeightsError

ENCODER_PREFIX = "encoder."
DOWNLOAD_HINT = "re-download it with `latentsync models download`"


@dataclass(frozen=True)
class WhisperDims:
    """openai's ModelDimensions; the text fields are kept so a checkpoint's dims round-trip."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def tiny(cls) -> WhisperDims:
        """The dims of Whisper tiny, the model LatentSync 1.6 uses."""
        return cls(
            n_mels=80,
            n_audio_ctx=1500,
            n_audio_state=384,
            n_audio_head=6,
            n_audio_layer=4,
            n_vocab=51865,
            n_text_ctx=448,
            n_text_state=384,
            n_text_head=6,
            n_text_layer=4,
        )

    @property
    def n_mel_frames(self) -> int:
        """Mel frames per encoder window (conv2 halves them to n_audio_ctx)."""
        return 2 * self.n_audio_ctx

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed positional embedding: sin in the first half of channels, cos in the second."""
    half = channels // 2
    log_increment = math.log(max_timescale) / (half - 1)
    inverse_timescales = torch.exp(-log_increment * torch.arange(half, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inverse_timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class SelfAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, n_state = x.shape
        head_dim = n_state // self.n_head

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.n_head, head_dim).transpose(1, 2)

        q = split_heads(self.query(x))
        k = split_heads(self.key(x))
        v = split_heads(self.value(x))
        attended = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as openai's
        return self.out(attended.transpose(1, 2).reshape(batch, length, n_state))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = SelfAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        x = x + self.mlp(self.mlp_ln(x))
        return x


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head) for _ in range(dims.n_audio_layer)]
        )
        # Loaded but never applied: LatentSync conditions on the outputs before ln_post.
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, 2*n_audio_ctx) -> (B, n_audio_layer + 1, n_audio_ctx, n_audio_state)."""
        if mel.shape[1:] != (self.dims.n_mels, self.dims.n_mel_frames):
            raise ValueError(
                f"expected mel of shape (B, {self.dims.n_mels}, {self.dims.n_mel_frames}), got {tuple(mel.shape)}"
            )
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        x = x.transpose(1, 2) + self.positional_embedding.to(x.dtype)
        outputs = [x]
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return torch.stack(outputs, dim=1)


def random_audio_encoder(
    dims: WhisperDims, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AudioEncoder:
    """An encoder with PyTorch's default init from `seed` (for --weights random).

    The global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = AudioEncoder(dims)
    return encoder.to(device=device, dtype=dtype).eval()


def load_whisper_encoder(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AudioEncoder:
    """Build the encoder described by an openai-format checkpoint and load its `encoder.*` weights strictly."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    dims = _read_dims(checkpoint, path)
    state = {
        key[len(ENCODER_PREFIX) :]: tensor
        for key, tensor in checkpoint["model_state_dict"].items()
        if key.startswith(ENCODER_PREFIX)
    }
    encoder = AudioEncoder(dims).to(dtype=dtype)
    _check_state(encoder, state, path)
    encoder.load_state_dict(state, strict=True)  # copies, casting the file's fp16 to the module dtype
    return encoder.to(device).eval()


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(
            f"{path}: Whisper checkpoint not found; download it with `latentsync models download`"
        )
    try:
        checkpoint = _load_checkpoint_file(path)
    except Exception as error:  # torch.load raises many types for a truncated or foreign file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path}: cannot read the Whisper checkpoint ({reason}); {DOWNLOAD_HINT}") from error
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise WeightsError(
            f"{path}: not an openai Whisper checkpoint (expected keys 'dims' and 'model_state_dict'); {DOWNLOAD_HINT}"
        )
    return checkpoint


def _load_checkpoint_file(path: Path) -> object:
    """torch.load with mmap; files in the pre-1.6 (non-zip) format cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "_use_new_zipfile_serialization" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_dims(checkpoint: dict, path: Path) -> WhisperDims:
    values = checkpoint["dims"]
    names = [f.name for f in fields(WhisperDims)]
    missing = [name for name in names if name not in values]
    if missing:
        raise WeightsError(f"{path}: 'dims' lacks {', '.join(missing)}; {DOWNLOAD_HINT}")
    return WhisperDims(**{name: int(values[name]) for name in names})


def _check_state(encoder: AudioEncoder, state: dict[str, Tensor], path: Path) -> None:
    """Raise WeightsError naming every missing, unexpected or mis-shaped encoder key."""
    expected = {key: tuple(t.shape) for key, t in encoder.state_dict().items()}
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [key for key in expected if key in state and tuple(state[key].shape) != expected[key]]
    if missing:
        problems.append("missing " + _list_keys(missing))
    if unexpected:
        problems.append("unexpected " + _list_keys(unexpected))
    if wrong_shape:
        shapes = [f"{ENCODER_PREFIX}{k} {list(state[k].shape)} != {list(expected[k])}" for k in wrong_shape[:5]]
        more = f" (+{len(wrong_shape) - 5} more)" if len(wrong_shape) > 5 else ""
        problems.append("mis-shaped " + ", ".join(shapes) + more)
    if problems:
        raise WeightsError(
            f"{path}: Whisper encoder weights do not match its dims: {'; '.join(problems)}; {DOWNLOAD_HINT}"
        )


def _list_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(ENCODER_PREFIX + key for key in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")

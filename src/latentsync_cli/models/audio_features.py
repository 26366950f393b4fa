"""Speech -> per-video-frame audio embeddings, as LatentSync computes them.

1. `log_mel_spectrogram`: Whisper's log-mel of the whole file (80 bins, 100 frames/s), normalised
   over the whole file (floor at the loudest bin - 8), as upstream.
2. `encode_features`: the encoder over 30 s windows; every layer's output kept -> (L, layers, C)
   at 50/s, L = mel frames // 2.
3. `feature_chunks`: for each 25 fps video frame, the 10 positions around it -> (N, 10*layers, C).

Windows. Up to 30 s of speech (L <= 1500 positions) there is one window, zero-padded in log-mel
space, exactly as upstream. Upstream encodes longer speech in back-to-back 30 s windows
(`consecutive_windows`): a position next to a 30 s border has no context on one side and the
features jump there, and the mouth collapses every 30 s (bytedance/LatentSync #132, #151).
Beyond 30 s we use `overlapping_windows` instead: a 30 s window every 15 s, each counting
only its centre. In Whisper-tiny positions (50 per second):
- a window's first and last 300 positions (6 s) never count: every position's feature comes
  from windows in which it has at least 6 s of speech on each side, less only where the speech
  itself starts or ends closer than that;
- neighbouring windows hand over with a linear cross-fade over 150 positions (3 s); in the
  other 12 s of every 15 s a position comes from a single window in which it has at least
  9 s on each side (with the same proviso);
- every 30 s border of upstream's (30 s, 60 s, ...) is the exact centre of a window (15 s on
  each side), and every other window is one of upstream's, so the first 21 s and the middle
  12 s of each of upstream's windows ([39 s, 51 s), [69 s, 81 s), ...) keep upstream's
  features bit for bit;
- near the end the last window reaches past the speech and is zero-padded in log-mel space,
  as upstream pads its last window: the last positions get at least 6 s before them and
  whatever speech is left after them.
The encoder runs on twice as many windows (one per 15 s instead of per 30 s): 36.9 GFLOP per
window, 2.5 GFLOP per second of speech, against the UNet's ~1100 TFLOP per output second.
Every window is encoded on its own, so its features never depend on the length of the file
or on which process computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentsync_cli.errors import InputError
from latentsync_cli.models.frame_count import HOP_LENGTH, SAMPLE_RATE, chunk_count, frame_position
from latentsync_cli.models.whisper import AudioEncoder

N_FFT = 400
N_MELS = 80
MIN_SAMPLES = 2 * HOP_LENGTH  # two mel frames give one encoder position


def mel_filterbank(n_mels: int = N_MELS) -> Tensor:
    """Whisper's filterbank; openai generated mel_filters.npz with exactly this librosa call."""
    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels))


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = N_MELS) -> Tensor:
    """16 kHz mono float audio -> (n_mels, floor(samples / 160)) float32, Whisper's normalisation."""
    samples = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    window = torch.hann_window(N_FFT)  # periodic
    stft = torch.stft(
        samples, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = stft[:, :-1].abs() ** 2  # the centred STFT has one frame more than Whisper keeps
    mel = mel_filterbank(n_mels) @ power
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)  # 80 dB of dynamic range below the loudest bin
    return (log_mel + 4.0) / 4.0


@dataclass(frozen=True)
class EncoderWindow:
    """One encoder pass: positions [start, start + len(weights)) of the speech, and how much each counts.

    A position's feature is the weighted sum over the windows that cover it; the weights of
    the windows covering a position add up to 1.
    """

    start: int
    weights: Tensor  # float32, one per position of the speech this window contributes to


@dataclass(frozen=True)
class WindowLayout:
    """How windows of `window` positions overlap beyond one window; for Whisper's 1500 (30 s):
    margin 300 (6 s), crossfade 150 (3 s), hop 750 (15 s)."""

    window: int

    @property
    def margin(self) -> int:
        """Positions at each end of a window that never count: there it lacks context on one side."""
        return self.window // 5

    @property
    def crossfade(self) -> int:
        """Positions over which one window hands over to the next."""
        return self.window // 10

    @property
    def hop(self) -> int:
        """Start-to-start distance (half a window when window is a multiple of 10): the next
        window's ramp up lies exactly under this one's ramp down."""
        return self.window - 2 * self.margin - self.crossfade


def consecutive_windows(num_positions: int, window: int) -> list[EncoderWindow]:
    """Upstream's layout: back-to-back windows, each position from the one window that holds it."""
    return [
        EncoderWindow(start, torch.ones(min(window, num_positions - start)))
        for start in range(0, num_positions, window)
    ]


def overlapping_windows(num_positions: int, window: int) -> list[EncoderWindow]:
    """Upstream's single window up to `window` positions; beyond, a window every `hop` positions.

    A window's weights, from its start: 0 over `margin` positions, a linear rise over
    `crossfade`, 1 up to `hop + margin`, a linear fall over `crossfade`, 0 over the last
    `margin`. The next window's rise lies under this one's fall, and the two add up to 1.
    The first window counts fully from position 0 (nothing comes before it); windows are
    added until one counts fully up to the last position, so no window ever falls.
    """
    if num_positions <= window:
        return consecutive_windows(num_positions, window)
    layout = WindowLayout(window)
    margin, crossfade, hop = layout.margin, layout.crossfade, layout.hop
    rise = (torch.arange(crossfade, dtype=torch.float64) + 0.5) / crossfade
    fall = 1 - rise
    middle = torch.ones(hop - crossfade, dtype=torch.float64)
    inner = torch.cat([torch.zeros(margin), rise, middle, fall, torch.zeros(margin)]).float()
    first = torch.cat([torch.ones(margin + crossfade), middle, fall, torch.zeros(margin)]).float()
    windows = [EncoderWindow(0, first[:num_positions])]
    while windows[-1].start + hop + margin < num_positions:  # the last window falls before the end
        start = windows[-1].start + hop
        windows.append(EncoderWindow(start, inner[: num_positions - start]))
    return windows


@torch.inference_mode()
def encode_windows(
    encoder: AudioEncoder,
    mel: Tensor,
    windows: list[EncoderWindow],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Run the encoder once per window and add up the weighted positions -> (L, n_layer + 1, C) float32, CPU.

    L = mel frames // 2. A window reaching past the end of `mel` is zero-padded in log-mel space,
    as upstream pads its last window. A weight of 1 copies a position exactly (0 + 1 * x == x).
    """
    window_frames = encoder.dims.n_mel_frames
    num_layers, channels = encoder.dims.n_audio_layer + 1, encoder.dims.n_audio_state
    features = torch.zeros(mel.shape[1] // 2, num_layers, channels)
    for window in windows:
        first_frame = 2 * window.start
        frames = mel[:, first_frame : first_frame + window_frames]
        frames = F.pad(frames, (0, window_frames - frames.shape[1]))
        layers = encoder(frames[None].to(device=device, dtype=dtype))[0]  # (layers, ctx, C)
        positions = layers[:, : len(window.weights)].transpose(0, 1).float().cpu()
        features[window.start : window.start + len(window.weights)] += window.weights[:, None, None] * positions
    return features


def encode_features(
    encoder: AudioEncoder, mel: Tensor, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """The encoder over `mel` in overlapping windows -> (L, n_layer + 1, C) float32 on the CPU, L = frames // 2."""
    windows = overlapping_windows(mel.shape[1] // 2, encoder.dims.n_audio_ctx)
    return encode_windows(encoder, mel, windows, device, dtype)


def feature_chunks(features: Tensor, fps: float = 25, context: tuple[int, int] = (2, 2)) -> Tensor:
    """(L, layers, C) -> (N, positions * layers, C): each video frame's window of encoder positions.

    Frame i is centred on position floor(i * 50 / fps) (frame_count.frame_position, in exact
    fractions) and takes 2*context[0] positions before it and 2*(context[1] + 1) from it on
    (10 for (2, 2)), clamped to the ends of the array. Rows are position-major: row = layers * position + layer.
    """
    num_features, num_layers, channels = features.shape
    frames = range(chunk_count(num_features, fps))
    centres = torch.tensor([frame_position(frame, fps) for frame in frames], dtype=torch.long)
    offsets = torch.arange(-2 * context[0], 2 * (context[1] + 1))
    positions = (centres[:, None] + offsets[None, :]).clamp(0, num_features - 1)
    return features[positions].reshape(len(centres), len(offsets) * num_layers, channels)


class AudioFeatureExtractor:
    """16 kHz mono audio -> per-video-frame embeddings (N, 10 * layers, C) at `fps`, float32 on the CPU.

    The pipeline moves each window's rows to the device itself.
    """

    def __init__(
        self,
        encoder: AudioEncoder,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        fps: float = 25,
        context: tuple[int, int] = (2, 2),
    ):
        self.encoder = encoder
        self.device = device
        self.dtype = dtype if dtype is not None else next(encoder.parameters()).dtype
        self.fps = fps
        self.context = context

    def __call__(self, audio_16k: np.ndarray) -> Tensor:
        if audio_16k.size < MIN_SAMPLES:
            raise InputError(
                f"audio is too short ({audio_16k.size} samples at 16 kHz); "
                f"at least {MIN_SAMPLES} samples are needed"
            )
        mel = log_mel_spectrogram(audio_16k, n_mels=self.encoder.dims.n_mels)
        features = encode_features(self.encoder, mel, self.device, self.dtype)
        return feature_chunks(features, self.fps, self.context)

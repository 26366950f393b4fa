"""Speech -> per-video-frame audio embeddings, as LatentSync computes them.

1. `log_mel_spectrogram`: Whisper's log-mel of the whole file (80 bins, 100 frames/s).
2. `encode_features`: the encoder over 30 s windows; every layer's output kept -> (L, layers, C) at 50/s.
3. `feature_chunks`: for each 25 fps video frame, the 10 positions around it -> (N, 10*layers, C).
"""

from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentsync_cli.errors import InputError
from latentsync_cli.models.whisper import AudioEncoder

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160  # 10 ms: 100 mel frames per second
N_MELS = 80
FEATURE_RATE = 50  # encoder positions per second (conv2 halves the mel rate)
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


@torch.inference_mode()
def encode_features(
    encoder: AudioEncoder, mel: Tensor, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Run the encoder over consecutive 30 s windows of `mel` -> (L, n_layer + 1, C) float32 on the CPU.

    The last window is zero-padded in log-mel space; from each window only the positions
    that cover real frames (frames // 2) are kept, so L = sum of frames_in_window // 2.
    """
    window_frames = encoder.dims.n_mel_frames
    pieces = []
    for start in range(0, mel.shape[1], window_frames):
        window = mel[:, start : start + window_frames]
        real_frames = window.shape[1]
        window = F.pad(window, (0, window_frames - real_frames))
        layers = encoder(window[None].to(device=device, dtype=dtype))[0]  # (layers, ctx, C)
        pieces.append(layers[:, : real_frames // 2].transpose(0, 1).float().cpu())
    return torch.cat(pieces, dim=0)


def chunk_count(num_features: int, fps: float = 25) -> int:
    """Upstream's feature2chunks emits frames i = 0, 1, ... and stops after the first i whose
    start index int(i * 50 / fps) exceeds L, so it makes floor(L / 2) + 2 chunks at 25 fps."""
    step = FEATURE_RATE / fps
    count = int(num_features / step)
    while int(count * step) <= num_features:
        count += 1
    return count + 1


def output_frame_count(num_samples: int, fps: float = 25) -> int:
    """The output frames `num_samples` of 16 kHz speech make, without running the encoder: the log-mel
    has samples // 160 frames, the encoder half as many positions, and chunk_count turns those into frames."""
    return chunk_count(num_samples // HOP_LENGTH // 2, fps)


def feature_chunks(features: Tensor, fps: float = 25, context: tuple[int, int] = (2, 2)) -> Tensor:
    """(L, layers, C) -> (N, positions * layers, C): each video frame's window of encoder positions.

    Frame i is centred on position int(i * 50 / fps) and takes 2*context[0] positions before it
    and 2*(context[1] + 1) from it on (10 for (2, 2)), clamped to the ends of the array.
    Rows are position-major: row = layers * position + layer.
    """
    num_features, num_layers, channels = features.shape
    frames = torch.arange(chunk_count(num_features, fps), dtype=torch.float64)
    centres = (frames * FEATURE_RATE / fps).long()
    offsets = torch.arange(-2 * context[0], 2 * (context[1] + 1))
    positions = (centres[:, None] + offsets[None, :]).clamp(0, num_features - 1)
    return features[positions].reshape(len(centres), len(offsets) * num_layers, channels)


class AudioFeatureExtractor:
    """16 kHz mono audio -> per-video-frame embeddings (N, 10 * layers, C), float32 on the CPU.

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

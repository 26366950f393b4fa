"""Whisper encoder, checkpoint loading and the audio-feature path (log-mel, windows, chunks)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentsync_cli.errors import InputError, WeightsError
from latentsync_cli.media.audio import load_audio
from latentsync_cli.models.audio_features import (
    AudioFeatureExtractor,
    WindowLayout,
    consecutive_windows,
    encode_features,
    encode_windows,
    feature_chunks,
    log_mel_spectrogram,
    overlapping_windows,
)
from latentsync_cli.models.frame_count import chunk_count
from latentsync_cli.models.whisper import AudioEncoder, WhisperDims, load_whisper_encoder, random_audio_encoder

# Small but structurally complete: 2 heads, 2 blocks, the full 1500-position context.
SMALL = WhisperDims(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=32,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=16,
    n_text_ctx=8,
    n_text_state=32,
    n_text_head=2,
    n_text_layer=1,
)
SHORT = WhisperDims(**{**SMALL.to_dict(), "n_audio_ctx": 6})  # 12 mel frames per window
ONE_SECOND = WhisperDims(**{**SMALL.to_dict(), "n_audio_ctx": 50})  # 1 s windows: margin 10, crossfade 5, hop 25


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding harmonic tone with a syllable-rate envelope and a little noise, 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * envelope * voice + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def openai_format_checkpoint(encoder: AudioEncoder, dtype: torch.dtype = torch.float16) -> dict:
    """What openai's tiny.pt holds: dims plus every weight, decoder keys included."""
    state = {f"encoder.{key}": value.to(dtype) for key, value in encoder.state_dict().items()}
    dims = encoder.dims
    state["decoder.token_embedding.weight"] = torch.randn(dims.n_vocab, dims.n_text_state).to(dtype)
    state["decoder.positional_embedding"] = torch.zeros(dims.n_text_ctx, dims.n_text_state).to(dtype)
    state["decoder.ln.weight"] = torch.ones(dims.n_text_state).to(dtype)
    return {"dims": dims.to_dict(), "model_state_dict": state}


# --- the encoder --------------------------------------------------------------------------------


def test_state_dict_matches_openai_tiny_manifest(reference_dir: Path):
    manifest = {}
    for line in (reference_dir / "whisper_tiny_state_dict.tsv").read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        if key.startswith("encoder."):
            manifest[key.removeprefix("encoder.")] = tuple(int(n) for n in shape.strip("[]").split(","))
    ours = {key: tuple(t.shape) for key, t in AudioEncoder(WhisperDims.tiny()).state_dict().items()}
    assert ours == manifest
    assert len(ours) == 67


def test_forward_returns_stem_and_every_block_before_ln_post():
    encoder = random_audio_encoder(SHORT, seed=0)
    mel = torch.randn(2, 80, 12)
    with torch.no_grad():
        out = encoder(mel)
        stem = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).transpose(1, 2) + encoder.positional_embedding
        after_first_block = encoder.blocks[0](stem)
        after_last_block = encoder.blocks[1](after_first_block)
    assert out.shape == (2, 3, 6, 32)
    torch.testing.assert_close(out[:, 0], stem)
    torch.testing.assert_close(out[:, 1], after_first_block)
    torch.testing.assert_close(out[:, 2], after_last_block)  # ln_post is not applied


def test_attention_matches_openai_scaled_softmax():
    attention = random_audio_encoder(SHORT, seed=1).blocks[0].attn
    x = torch.randn(2, 6, 32)
    q = attention.query(x).view(2, 6, 2, 16).permute(0, 2, 1, 3)
    k = attention.key(x).view(2, 6, 2, 16).permute(0, 2, 1, 3)
    v = attention.value(x).view(2, 6, 2, 16).permute(0, 2, 1, 3)
    scale = 16**-0.25  # openai scales q and k each by d^-1/4
    weights = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1)
    expected = attention.out((weights @ v).permute(0, 2, 1, 3).reshape(2, 6, 32))
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected.detach())


def test_forward_rejects_a_window_of_the_wrong_length():
    with pytest.raises(ValueError, match="12"):
        random_audio_encoder(SHORT)(torch.zeros(1, 80, 10))


def test_random_encoder_depends_only_on_its_seed():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_audio_encoder(SHORT, seed=5)
    assert torch.rand(1) == before  # the global RNG was left alone
    b = random_audio_encoder(SHORT, seed=5)
    c = random_audio_encoder(SHORT, seed=6)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


# --- loading ------------------------------------------------------------------------------------


def test_load_openai_checkpoint_with_decoder_keys_and_fp16(tmp_path: Path):
    source = random_audio_encoder(SHORT, seed=2)
    path = tmp_path / "tiny.pt"
    torch.save(openai_format_checkpoint(source), path)

    loaded = load_whisper_encoder(path)

    assert loaded.dims == SHORT
    assert loaded.conv1.weight.dtype == torch.float32
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0)
    mel = torch.randn(1, 80, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), source(mel), atol=2e-2, rtol=0)


def test_load_reads_the_legacy_non_zip_format(tmp_path: Path):
    source = random_audio_encoder(SHORT, seed=7)
    path = tmp_path / "legacy.pt"
    torch.save(openai_format_checkpoint(source, torch.float32), path, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_whisper_encoder(path).conv2.weight, source.conv2.weight, rtol=0, atol=0)


def test_load_casts_to_the_requested_dtype(tmp_path: Path):
    path = tmp_path / "tiny.pt"
    torch.save(openai_format_checkpoint(random_audio_encoder(SHORT)), path)
    assert load_whisper_encoder(path, dtype=torch.float64).blocks[1].mlp[2].weight.dtype == torch.float64


def test_load_names_a_misshaped_key(tmp_path: Path):
    checkpoint = openai_format_checkpoint(random_audio_encoder(SHORT))
    checkpoint["model_state_dict"]["encoder.blocks.1.attn.key.weight"] = torch.zeros(32, 31)
    path = tmp_path / "bad_shape.pt"
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=r"encoder\.blocks\.1\.attn\.key\.weight") as raised:
        load_whisper_encoder(path)
    assert str(path) in raised.value.message


def test_load_names_missing_keys(tmp_path: Path):
    checkpoint = openai_format_checkpoint(random_audio_encoder(SHORT))
    del checkpoint["model_state_dict"]["encoder.ln_post.bias"]
    del checkpoint["model_state_dict"]["encoder.positional_embedding"]
    path = tmp_path / "missing.pt"
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=r"missing .*encoder\.(ln_post\.bias|positional_embedding)"):
        load_whisper_encoder(path)


def test_load_corrupt_file_says_to_redownload(tmp_path: Path):
    path = tmp_path / "tiny.pt"
    torch.save(openai_format_checkpoint(random_audio_encoder(SHORT)), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="latentsync models download") as raised:
        load_whisper_encoder(path)
    assert str(path) in raised.value.message
    assert "\n" not in raised.value.message


def test_load_missing_file_and_foreign_dict(tmp_path: Path):
    with pytest.raises(WeightsError, match="not found"):
        load_whisper_encoder(tmp_path / "absent.pt")
    path = tmp_path / "unet.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WeightsError, match="model_state_dict"):
        load_whisper_encoder(path)


# --- features -----------------------------------------------------------------------------------


def test_log_mel_has_one_frame_per_hop_and_whisper_range():
    audio = speech_like(1.2345)
    mel = log_mel_spectrogram(audio)
    assert mel.shape == (80, audio.size // 160)
    assert mel.dtype == torch.float32
    assert mel.max() <= 1.5 and mel.max() - mel.min() <= 2.0 + 1e-6  # floor at max - 8 in log10, then /4


def test_upstream_windows_are_encoded_independently_and_the_last_is_padded_in_log_mel():
    encoder = random_audio_encoder(SHORT, seed=3)
    mel = torch.randn(80, 29)  # two full 12-frame windows and one of 5 frames
    features = encode_windows(encoder, mel, consecutive_windows(29 // 2, SHORT.n_audio_ctx))
    assert features.shape == (6 + 6 + 2, 3, 32)
    with torch.no_grad():
        second = encoder(mel[None, :, 12:24])[0].transpose(0, 1)
        last = encoder(F.pad(mel[None, :, 24:], (0, 7)))[0].transpose(0, 1)
    torch.testing.assert_close(features[6:12], second)
    torch.testing.assert_close(features[12:], last[:2])


@pytest.mark.parametrize("num_features", [1, 2, 7, 480, 481])
def test_chunk_count_is_half_the_features_plus_two(num_features: int):
    assert chunk_count(num_features) == num_features // 2 + 2
    assert feature_chunks(torch.zeros(num_features, 3, 4)).shape == (num_features // 2 + 2, 30, 4)


def test_chunks_take_ten_positions_position_major_and_clamp_at_the_edges():
    num_features, num_layers = 9, 3
    # value = 10 * position + layer, repeated over 2 channels
    features = (10 * torch.arange(num_features)[:, None] + torch.arange(num_layers)[None, :]).float()
    features = features[:, :, None].expand(-1, -1, 2)
    chunks = feature_chunks(features)

    def positions_of(chunk: torch.Tensor) -> list[int]:
        values = chunk[:, 0].view(10, num_layers)
        assert torch.equal(values % 10, torch.arange(num_layers).float().expand(10, -1))  # row = 3*pos + layer
        return (values[:, 0] // 10).long().tolist()

    assert chunks.shape == (6, 30, 2)
    assert positions_of(chunks[0]) == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert positions_of(chunks[2]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert positions_of(chunks[5]) == [6, 7, 8, 8, 8, 8, 8, 8, 8, 8]


def test_extractor_end_to_end_on_more_than_one_window():
    encoder = random_audio_encoder(SMALL, seed=4)
    audio = speech_like(31.0)  # 3100 mel frames: one full window and one of 100
    chunks = AudioFeatureExtractor(encoder, "cpu")(audio)
    assert chunks.shape == ((1500 + 50) // 2 + 2, 30, 32)
    assert chunks.dtype == torch.float32 and chunks.device.type == "cpu"
    assert torch.isfinite(chunks).all()


def test_extractor_rejects_audio_without_a_single_feature():
    with pytest.raises(InputError, match="too short"):
        AudioFeatureExtractor(random_audio_encoder(SHORT), "cpu")(np.zeros(100, dtype=np.float32))


# --- long speech: overlapping windows beyond 30 s ----------------------------------------------


def encode_one_window(encoder: AudioEncoder, mel: torch.Tensor, start: int) -> torch.Tensor:
    """The encoder's own output for the window whose first position is `start`, zero-padded: (ctx, layers, C)."""
    frames = mel[:, 2 * start : 2 * start + encoder.dims.n_mel_frames]
    frames = F.pad(frames, (0, encoder.dims.n_mel_frames - frames.shape[1]))
    with torch.no_grad():
        return encoder(frames[None])[0].transpose(0, 1)


def test_whisper_window_layout_in_seconds():
    layout = WindowLayout(WhisperDims.tiny().n_audio_ctx)
    assert (layout.margin, layout.crossfade, layout.hop) == (300, 150, 750)  # 6 s, 3 s, 15 s at 50 positions/s


@pytest.mark.parametrize("num_positions", [51, 60, 75, 76, 99, 100, 101, 263])
def test_overlapping_windows_add_up_to_one_and_count_only_positions_with_context(num_positions: int):
    window = 50
    layout = WindowLayout(window)
    windows = overlapping_windows(num_positions, window)
    total = torch.zeros(num_positions)
    for k, each in enumerate(windows):
        assert each.start == k * layout.hop
        total[each.start : each.start + len(each.weights)] += each.weights
        counted = torch.nonzero(each.weights).flatten()
        full = torch.nonzero(each.weights == 1).flatten()
        assert counted.max() < window - layout.margin  # the margin after it is inside the window
        if k > 0:
            assert counted.min() >= layout.margin  # and the margin before it
            assert (full >= layout.margin + layout.crossfade).all()
    torch.testing.assert_close(total, torch.ones(num_positions), atol=1e-6, rtol=0)
    assert windows[-1].start + layout.hop + layout.margin >= num_positions  # the last window never falls
    centres = {each.start + window // 2 for each in windows}
    assert set(range(window, num_positions, window)) <= centres  # every upstream border is a window's centre


def test_up_to_one_window_gives_upstreams_single_padded_window_exactly():
    encoder = random_audio_encoder(ONE_SECOND, seed=8)
    for frames in (2, 57, 100, 101):  # 101 frames still make 50 positions: one window
        mel = torch.randn(80, frames)
        features = encode_features(encoder, mel)
        assert torch.equal(features, encode_one_window(encoder, mel, 0)[: frames // 2])
        assert torch.equal(features, encode_windows(encoder, mel, consecutive_windows(frames // 2, 50)))


@pytest.mark.parametrize("frames", [102, 151, 527])
def test_each_position_is_the_weighted_sum_of_its_windows(frames: int):
    encoder = random_audio_encoder(ONE_SECOND, seed=9)
    mel = torch.randn(80, frames)
    expected = torch.zeros(frames // 2, 3, 32)
    for each in overlapping_windows(frames // 2, 50):
        own = encode_one_window(encoder, mel, each.start)[: len(each.weights)]
        expected[each.start : each.start + len(each.weights)] += each.weights[:, None, None] * own
    features = encode_features(encoder, mel)
    assert features.shape == (frames // 2, 3, 32)  # as many positions as upstream: the video length is unchanged
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)


def test_features_around_a_30_s_border_are_those_of_a_window_centred_there():
    encoder = random_audio_encoder(SMALL, seed=4)
    mel = log_mel_spectrogram(speech_like(36.0))  # L = 1800 positions: windows at 0 s and 15 s
    features = encode_features(encoder, mel)
    centred = encode_one_window(encoder, mel, 750)  # 15 s to 45 s, zero-padded after 36 s
    # from 24 s to the end (6 s past the border) the window centred on the border alone counts:
    # the same computation, so equal to float32 rounding (measured: 0)
    torch.testing.assert_close(features[1200:1800], centred[450:1050], atol=1e-6, rtol=0)
    first = encode_one_window(encoder, mel, 0)
    assert torch.equal(features[:1050], first[:1050])  # the first 21 s are upstream's first window
    jumps = (features[1:] - features[:-1]).flatten(1).norm(dim=1)
    assert jumps[1499] < 1.5 * jumps.median()  # 1499 -> 1500 crosses 30 s (upstream: 4.1x here)


# --- golden parity with upstream (whisper_small_dims, demo1_audio.wav) -------------------------


@pytest.fixture(scope="module")
def golden_whisper(golden_dir: Path) -> dict:
    import json

    from safetensors.torch import load_file

    audio_path = golden_dir.parent.parent / "media" / "demo1_audio.wav"
    if not audio_path.exists():
        message = f"golden audio not found at {audio_path}"
        if os.environ.get("LATENTSYNC_REQUIRE_GOLDEN") == "1":
            pytest.fail(message + " (LATENTSYNC_REQUIRE_GOLDEN=1)")
        pytest.skip(message)
    audio = load_audio(audio_path)
    encoder = load_whisper_encoder(golden_dir / "whisper_small_dims.pt")
    mel = log_mel_spectrogram(audio)
    features = encode_features(encoder, mel)
    return {
        "expected": load_file(golden_dir / "whisper_small_dims_features.safetensors"),
        "meta": json.loads((golden_dir / "whisper_small_dims.json").read_text()),
        "audio": audio,
        "encoder": encoder,
        "mel": mel,
        "features": features,
        "chunks": feature_chunks(features),
    }


def test_golden_whisper_dims_and_sizes(golden_whisper: dict):
    meta = golden_whisper["meta"]
    assert golden_whisper["encoder"].dims == WhisperDims(**meta["dims"])
    assert golden_whisper["audio"].size == meta["num_samples"]
    assert golden_whisper["mel"].shape[1] == meta["M_mel_frames"]
    assert golden_whisper["features"].shape == (meta["L"], meta["num_layers_kept"], meta["embedding_dim"])
    assert golden_whisper["chunks"].shape[0] == meta["N"] == math.floor(meta["L"] / 2) + 2


def test_golden_whisper_mel(golden_whisper: dict):
    torch.testing.assert_close(golden_whisper["mel"], golden_whisper["expected"]["mel"], atol=1e-4, rtol=0)


def test_golden_whisper_feature_array(golden_whisper: dict):
    expected = golden_whisper["expected"]["feature_array"]
    torch.testing.assert_close(golden_whisper["features"], expected, atol=1e-5, rtol=0)


def test_golden_whisper_chunks(golden_whisper: dict):
    torch.testing.assert_close(golden_whisper["chunks"], golden_whisper["expected"]["chunks"], atol=1e-5, rtol=0)


def test_golden_whisper_extractor_matches_chunks(golden_whisper: dict):
    chunks = AudioFeatureExtractor(golden_whisper["encoder"], "cpu")(golden_whisper["audio"])
    torch.testing.assert_close(chunks, golden_whisper["expected"]["chunks"], atol=1e-5, rtol=0)

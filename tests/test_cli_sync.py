"""`latentsync sync` and `latentsync profile` end to end, on generated clips with random-tiny weights.

One sync run (module fixture) is examined by several tests: the JSON result,
the streams and frame count of the MP4, pixels outside the face crop, and the
frames of the clip's face-less stretch.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from clitools import run_cli_here

from latentsync_cli.errors import ExitCode
from latentsync_cli.face.align import FaceAligner, crop_size
from latentsync_cli.face.landmarks import MediapipeLandmarks
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.encode import DEFAULT_X264_PRESET, VideoEncoder
from latentsync_cli.media.synthetic import make_face_clip, make_speech
from latentsync_cli.media.video import decode_frames, probe_video, read_frames
from latentsync_cli.models.unet import UNet3DConditionModel
from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import random_vae, tiny_vae_config
from latentsync_cli.optimizers.run_plan import build_run_plan
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.resolution import resolve_here

CLIP_SECONDS = 2.0
FACELESS = (0.8, 1.2)  # seconds of the clip with no face: frames 20-29
SIZE = (400, 300)
FAST_FLAGS = ["--weights", "random-tiny", "--device", "cpu", "--steps", "2"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "clip": make_face_clip(folder / "clip.mp4", CLIP_SECONDS, size=SIZE, faceless=FACELESS),
        "voice": make_speech(folder / "voice.wav", CLIP_SECONDS, use_espeak=False),
        "short_clip": make_face_clip(folder / "short.mp4", 0.4, size=(240, 180)),
        "short_voice": make_speech(folder / "short.wav", 0.4, use_espeak=False),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def synced(media) -> dict:
    output = media["folder"] / "synced.mp4"
    ran = run_cli_here(
        "sync", media["clip"], media["voice"], "-o", output, "--mode", "turbo", *FAST_FLAGS, "--json"
    )
    assert ran.code == 0, ran.stderr
    return {"output": output, "result": json.loads(ran.stdout), "stderr": ran.stderr}


@pytest.fixture(scope="module")
def frames(synced, media) -> dict[str, list[np.ndarray]]:
    """The frames the pipeline read, the same frames through the encoder alone (the codec's change), the output."""
    count = synced["result"]["frames"]
    frames_in = list(read_frames(media["clip"], count))
    reencoded_path = media["folder"] / "reencoded.mp4"
    # Through the same encoder settings as the pipeline's output, so only the pipeline's own changes differ.
    with VideoEncoder(reencoded_path, *SIZE, fps=25, crf=18, preset=DEFAULT_X264_PRESET) as encoder:
        for frame in frames_in:
            encoder.write(frame)
    return {
        "input": frames_in,
        "reencoded": list(decode_frames(probe_video(reencoded_path))),
        "output": list(decode_frames(probe_video(synced["output"]))),
    }


def codec_difference(frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
    return np.abs(frame_a.astype(np.int16) - frame_b.astype(np.int16))


# --- the sync run --------------------------------------------------------------------------------


def test_sync_json_reports_timings_optimizations_settings_and_weights(synced):
    result = synced["result"]
    assert set(result["stage_seconds"]) == {
        "decode", "landmarks", "align", "audio features", "VAE encode",
        "denoise", "VAE decode", "restore", "encode", "mux",
    }  # fmt: skip
    assert result["wall_s"] > 0 and result["stage_sum_s"] > 0 and result["seconds_per_output_second"] > 0
    by_name = {entry["name"]: entry for entry in result["optimizations"]}
    assert by_name["deepcache"]["status"] == "applied"
    # --steps 2 with turbo's DeepCache interval 3: step 0 runs the whole UNet, step 1 reuses it, in every call.
    assert result["unet_steps"]["full"] == result["unet_steps"]["cached"] > 0
    assert by_name["scheduler"]["status"] == "applied" and "Euler" in by_name["scheduler"]["detail"]
    assert by_name["skip unconditional pass"]["status"] == "applied"  # turbo: guidance 1
    assert by_name["cuda graphs"]["status"] in ("off", "skipped")
    resolved = result["resolved_settings"]
    assert resolved["settings"]["mode"] == "turbo" and resolved["settings"]["scheduler"] == "euler"
    assert resolved["sources"]["steps"] == "user flag" and resolved["sources"]["scheduler"] == "mode"
    assert result["random_weights"] is True
    assert "random weights" in result["weights"]["description"] and "not a lip-sync" in result["random_weights_note"]
    assert "not a lip-sync" in synced["stderr"]  # said in words to humans too


def test_sync_writes_video_and_audio_with_the_audio_rule_frame_count(synced, media):
    info = probe_video(synced["output"])
    assert info.has_audio and info.codec == "h264" and (info.width, info.height) == SIZE
    samples = load_audio(media["voice"]).size
    features = samples // 320
    expected_frames = features // 2 + 2
    assert sum(1 for _ in decode_frames(info)) == expected_frames == synced["result"]["frames"]


def test_frames_without_a_face_are_counted_and_unchanged(synced, frames):
    faceless = range(round(FACELESS[0] * 25), round(FACELESS[1] * 25))
    assert synced["result"]["frames_without_face"] == len(faceless)
    for index in faceless:
        # Compared with the input sent through the same encoder: what is left is the pipeline's doing.
        assert codec_difference(frames["output"][index], frames["reencoded"][index]).mean() < 0.5, index
        assert codec_difference(frames["output"][index], frames["input"][index]).mean() < 3, index


def test_pixels_outside_the_face_crop_are_the_input(frames):
    detector, aligner = MediapipeLandmarks(), FaceAligner(256)
    width, height = crop_size(256)
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    checked = 0
    try:
        for frame_in, reencoded, frame_out in zip(frames["input"], frames["reencoded"], frames["output"]):
            found = detector.detect(frame_in)
            if found is None:
                continue
            to_frame = cv2.invertAffineTransform(aligner.align(frame_in, found.points).affine)
            polygon = corners @ to_frame[:, :2].T + to_frame[:, 2]
            crop_region = np.zeros(frame_in.shape[:2], np.uint8)
            cv2.fillConvexPoly(crop_region, np.round(polygon).astype(np.int32), 1)
            crop_region = cv2.dilate(crop_region, np.ones((41, 41), np.uint8))  # tracking differs a little
            outside = crop_region == 0
            assert outside.mean() > 0.2  # the test would mean nothing if the crop covered the frame
            difference = codec_difference(frame_out, reencoded)[outside]
            assert difference.mean() < 0.5 and np.percentile(difference, 99.5) <= 8
            checked += 1
    finally:
        detector.close()
    assert checked >= 30


# --- refusals: nothing is run, nothing is written -------------------------------------------------


def test_an_existing_output_is_refused_without_overwrite(media, tmp_path):
    existing = tmp_path / "taken.mp4"
    existing.write_bytes(b"keep me")
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", existing, *FAST_FLAGS)
    assert ran.code == ExitCode.OUTPUT and "--overwrite" in ran.stderr and ran.stdout == ""
    assert existing.read_bytes() == b"keep me"


def test_the_output_may_not_be_an_input(media):
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", media["clip"], *FAST_FLAGS)
    assert ran.code == ExitCode.OUTPUT and "same as an input" in ran.stderr


def test_a_missing_video_is_a_one_line_input_error(tmp_path):
    ran = run_cli_here("sync", tmp_path / "nope.mp4", *FAST_FLAGS)
    assert ran.code == ExitCode.BAD_INPUT and "nope.mp4" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_video_without_audio_needs_the_audio_argument(media):
    ran = run_cli_here("sync", media["clip"], *FAST_FLAGS, "-o", media["folder"] / "x.mp4")
    # make_face_clip writes no audio track, so the speech must be given
    assert ran.code == ExitCode.BAD_INPUT and "no audio track" in ran.stderr
    assert not (media["folder"] / "x.mp4").exists()


def test_unknown_choices_are_usage_errors(media):
    ran = run_cli_here("sync", media["clip"], media["voice"], "--loop", "sideways", *FAST_FLAGS)
    assert ran.code == ExitCode.USAGE and "--loop" in ran.stderr


def test_missing_weights_stop_with_the_weights_error_and_write_nothing(media, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    output = tmp_path / "out.mp4"
    ran = run_cli_here("sync", media["clip"], media["voice"], "-o", output, "--device", "cpu")
    assert ran.code == ExitCode.WEIGHTS and "latentsync models download" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and ran.stdout == ""
    assert list(tmp_path.glob("*.mp4")) == [] and list(tmp_path.glob(".latentsync-*")) == []


# --- modes ---------------------------------------------------------------------------------------


def test_turbo_and_normal_differ_in_steps_scheduler_and_deepcache():
    normal = resolve_here(SettingsRequest(mode="normal", device="cpu")).settings
    turbo = resolve_here(SettingsRequest(mode="turbo", device="cpu")).settings
    assert normal.steps > turbo.steps and normal.scheduler != turbo.scheduler
    assert (normal.deepcache, turbo.deepcache) == (False, True)
    unet, vae = UNet3DConditionModel(UNetConfig.tiny()), random_vae(tiny_vae_config(), seed=0)
    logs = {
        name: build_run_plan(unet, vae, settings, torch.device("cpu"), face_size=256).log
        for name, settings in (("normal", normal), ("turbo", turbo))
    }
    assert logs["turbo"].is_applied("deepcache") and not logs["normal"].is_applied("deepcache")
    assert logs["turbo"].is_applied("scheduler") and not logs["normal"].is_applied("scheduler")


# --- profile -------------------------------------------------------------------------------------


def test_profile_json_ranks_stages_and_writes_a_chrome_trace(media, tmp_path):
    trace = tmp_path / "trace.json"
    ran = run_cli_here(
        "profile", media["short_clip"], media["short_voice"], *FAST_FLAGS, "--trace", trace, "--json"
    )
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    seconds = [row["seconds"] for row in report["stage_table"]]
    assert seconds == sorted(seconds, reverse=True) and len(seconds) == 10
    assert report["verdict"].startswith("bottleneck: ") and "% of wall time" in report["verdict"]
    assert report["critical_path"]["lanes"][0] == "main" and report["critical_path"]["seconds"] > 0
    assert report["peak_rss_bytes"] > 0 and report["peak_gpu_bytes"] is None  # CPU run
    assert report["output"] is None  # profile keeps no MP4 unless -o is given
    shares = report["lane_busy_share"]
    assert set(shares) == set(report["lane_busy_s"]) and all(0 < share <= 1.05 for share in shares.values())
    overlapped = {lane: busy for lane, busy in report["lane_busy_s"].items() if lane != "main"}
    assert report["limiting_lane"] == max(overlapped, key=overlapped.get)

    events = json.loads(trace.read_text())
    assert events and all(event["ph"] == "X" for event in events)
    assert all({"name", "ph", "ts", "dur", "pid", "tid"} <= set(event) for event in events)
    lanes = {event["args"]["thread"] for event in events}
    assert {"producer", "cpu", "consumer", "main"} <= lanes  # the models' lane is named after their device


def test_profile_prints_the_stage_table_and_a_verdict(media):
    ran = run_cli_here("profile", media["short_clip"], media["short_voice"], *FAST_FLAGS, "--mode", "turbo")
    assert ran.code == 0 and ran.stdout == ""
    assert "Stages by time" in ran.stderr and "critical path:" in ran.stderr and "lanes busy: " in ran.stderr
    assert "bottleneck: " in ran.stderr.strip().splitlines()[-1]

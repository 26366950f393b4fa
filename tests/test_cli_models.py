"""`latentsync models download|verify|path` through the real entry point."""

from __future__ import annotations

import json

import torch
from clitools import run_cli, run_cli_here
from conftest import UNET_KEY


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_verify_passes_on_a_good_folder(tiny_dir):
    ran = run_cli_here("models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == ""
    assert "all weight files match tiny" in ran.stderr


def test_verify_names_the_wrong_shaped_key_and_exits_5(tiny_dir):
    path = tiny_dir / "latentsync_unet.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"][UNET_KEY] = torch.zeros(32, 9, 3, 3)
    torch.save(checkpoint, path)
    ran = run_cli_here("models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny")
    assert ran.code == 5
    errors = _error_lines(ran.stderr)
    assert len(errors) == 1 and UNET_KEY in errors[0]
    assert "Traceback" not in ran.stderr


def test_verify_json_goes_to_stdout(tiny_dir):
    (tiny_dir / "whisper" / "tiny.pt").unlink()
    ran = run_cli_here("models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny", "--json")
    assert ran.code == 5
    report = json.loads(ran.stdout)
    assert report["ok"] is False
    by_role = {entry["role"]: entry for entry in report["files"]}
    assert by_role["whisper"]["present"] is False and by_role["whisper"]["size_bytes"] is None
    assert by_role["unet"]["ok"] is True and by_role["unet"]["size_bytes"] > 0
    assert "whisper/tiny.pt" in _error_lines(ran.stderr)[0]


def test_verify_defaults_to_the_real_architecture(tiny_dir_template):
    ran = run_cli_here("models", "verify", "--checkpoint-dir", str(tiny_dir_template))
    assert ran.code == 5
    assert "LatentSync 1.6" in _error_lines(ran.stderr)[0]


def test_verify_without_any_weights_names_the_download_command(offline_empty_hub):
    ran = run_cli_here("models", "verify")
    assert ran.code == 5
    assert "latentsync models download" in _error_lines(ran.stderr)[0]


def test_verify_rejects_a_missing_folder(tmp_path):
    ran = run_cli_here("models", "verify", "--checkpoint-dir", str(tmp_path / "nope"))
    assert ran.code == 5 and "is not a folder" in ran.stderr


def test_path_json_lists_where_the_files_would_be(offline_empty_hub):
    ran = run_cli_here("models", "path", "--json")
    assert ran.code == 0
    listing = json.loads(ran.stdout)
    assert listing["offline"] is True
    assert listing["hub_cache"] == str(offline_empty_hub / "hub")
    assert [f["filename"] for f in listing["files"]] == [
        "latentsync_unet.pt",
        "whisper/tiny.pt",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert all(not f["present"] and f["path"].startswith(str(offline_empty_hub)) for f in listing["files"])


def test_path_with_a_checkpoint_dir(tiny_dir):
    ran = run_cli_here("models", "path", "--checkpoint-dir", str(tiny_dir))
    assert ran.code == 0
    assert str(tiny_dir / "latentsync_unet.pt") in ran.stderr.replace("\n", "")


def test_download_offline_fails_with_one_line(offline_empty_hub):
    ran = run_cli_here("models", "download")
    assert ran.code == 5
    assert _error_lines(ran.stderr) == ["error: HF_HUB_OFFLINE is set: unset it to run `latentsync models download`"]


def test_download_without_network_fails_fast_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    ran = run_cli_here("models", "download", "--checkpoint-dir", str(tmp_path / "weights"))
    assert ran.code == 5
    errors = _error_lines(ran.stderr)
    assert len(errors) == 1 and "unreachable" in errors[0] and "`latentsync models download`" in errors[0]
    assert "Traceback" not in ran.stderr
    assert not (tmp_path / "weights").exists()


def test_download_offline_imports_neither_torch_nor_diffusers(tmp_path):
    done = run_cli("models", "download", timeout=120, python_flags=("-X", "importtime"),
                   env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.code == 5
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "latentsync_cli.weights.files" in imported
    assert not imported & {"torch", "diffusers", "safetensors", "huggingface_hub"}
    assert done.error_lines == ["error: HF_HUB_OFFLINE is set: unset it to run `latentsync models download`"]

"""`latentsync models download|verify|path` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_weights import UNET_KEY, offline_empty_hub, tiny_dir, tiny_dir_template  # noqa: F401 (fixtures)

from latentsync_cli.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_verify_passes_on_a_good_folder(capsys, tiny_dir):
    code, out, err = run_cli(capsys, "models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny")
    assert code == 0, err
    assert out == ""
    assert "all weight files match tiny" in err


def test_verify_names_the_wrong_shaped_key_and_exits_5(capsys, tiny_dir):
    path = tiny_dir / "latentsync_unet.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"][UNET_KEY] = torch.zeros(32, 9, 3, 3)
    torch.save(checkpoint, path)
    code, _, err = run_cli(capsys, "models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny")
    assert code == 5
    errors = _error_lines(err)
    assert len(errors) == 1 and UNET_KEY in errors[0]
    assert "Traceback" not in err


def test_verify_json_goes_to_stdout(capsys, tiny_dir):
    (tiny_dir / "whisper" / "tiny.pt").unlink()
    code, out, err = run_cli(capsys, "models", "verify", "--checkpoint-dir", str(tiny_dir), "--arch", "tiny", "--json")
    assert code == 5
    report = json.loads(out)
    assert report["ok"] is False
    by_role = {entry["role"]: entry for entry in report["files"]}
    assert by_role["whisper"]["present"] is False and by_role["whisper"]["size_bytes"] is None
    assert by_role["unet"]["ok"] is True and by_role["unet"]["size_bytes"] > 0
    assert "whisper/tiny.pt" in _error_lines(err)[0]


def test_verify_defaults_to_the_real_architecture(capsys, tiny_dir_template):
    code, _, err = run_cli(capsys, "models", "verify", "--checkpoint-dir", str(tiny_dir_template))
    assert code == 5
    assert "LatentSync 1.6" in _error_lines(err)[0]


def test_verify_without_any_weights_names_the_download_command(capsys, offline_empty_hub):
    code, _, err = run_cli(capsys, "models", "verify")
    assert code == 5
    assert "latentsync models download" in _error_lines(err)[0]


def test_verify_rejects_a_missing_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "models", "verify", "--checkpoint-dir", str(tmp_path / "nope"))
    assert code == 5 and "is not a folder" in err


def test_path_json_lists_where_the_files_would_be(capsys, offline_empty_hub):
    code, out, _ = run_cli(capsys, "models", "path", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["offline"] is True
    assert listing["hub_cache"] == str(offline_empty_hub / "hub")
    assert [f["filename"] for f in listing["files"]] == [
        "latentsync_unet.pt",
        "whisper/tiny.pt",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert all(not f["present"] and f["path"].startswith(str(offline_empty_hub)) for f in listing["files"])


def test_path_with_a_checkpoint_dir(capsys, tiny_dir):
    code, _, err = run_cli(capsys, "models", "path", "--checkpoint-dir", str(tiny_dir))
    assert code == 0
    assert str(tiny_dir / "latentsync_unet.pt") in err.replace("\n", "")


def test_download_offline_fails_with_one_line(capsys, offline_empty_hub):
    code, _, err = run_cli(capsys, "models", "download")
    assert code == 5
    assert _error_lines(err) == ["error: HF_HUB_OFFLINE is set: unset it to run `latentsync models download`"]


def test_download_without_network_fails_fast_with_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    code, _, err = run_cli(capsys, "models", "download", "--checkpoint-dir", str(tmp_path / "weights"))
    assert code == 5
    errors = _error_lines(err)
    assert len(errors) == 1 and "unreachable" in errors[0] and "`latentsync models download`" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "weights").exists()


def test_download_offline_imports_neither_torch_nor_diffusers(tmp_path):
    environment = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from latentsync_cli.cli import main; main(['models', 'download'])"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 5
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "latentsync_cli.weights.files" in imported
    assert not imported & {"torch", "diffusers", "safetensors", "huggingface_hub"}
    assert _error_lines(done.stderr) == ["error: HF_HUB_OFFLINE is set: unset it to run `latentsync models download`"]

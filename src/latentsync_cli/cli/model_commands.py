"""`latentsync models ...`: download, verify and locate the weights."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from latentsync_cli.cli.output import get_output
from latentsync_cli.errors import UsageError, WeightsError
from latentsync_cli.weights.files import download_weights, find_weight_files, hub_cache_dir, hub_offline

# `latentsync_cli.weights.load` imports torch and diffusers (about 5 s), so `verify`, the one command
# that reads tensors, imports it when it runs; weight_files imports only the standard library.

app = typer.Typer(help="Download, verify and locate the model weights.", no_args_is_help=True)

CHECKPOINT_DIR_HELP = (
    "A folder laid out like the Hub repo: latentsync_unet.pt (or .safetensors), whisper/tiny.pt, "
    "and optionally vae/ (config.json + diffusion_pytorch_model.safetensors)."
)
ARCHITECTURES = ("latentsync-1.6", "tiny")


def _size_text(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "missing"
    if size_bytes >= 1e9:
        return f"{size_bytes / 1e9:.2f} GB"
    if size_bytes >= 1e6:
        return f"{size_bytes / 1e6:.1f} MB"
    return f"{size_bytes / 1e3:.1f} kB"


def _file_line(weight_file) -> str:
    return f"{weight_file.role:<12} {_size_text(weight_file.size_bytes):>9}  {escape(str(weight_file.path))}"


@app.command("download")
def download(
    ctx: typer.Context,
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="Download into this folder instead of the Hugging Face cache."
    ),
) -> None:
    """Fetch the LatentSync 1.6 UNet, Whisper tiny and the sd-vae-ft-mse VAE (about 5.2 GB)."""
    output = get_output(ctx)
    where = checkpoint_dir if checkpoint_dir is not None else hub_cache_dir()
    output.info(f"downloading the weights into {escape(str(where))}")
    download_weights(checkpoint_dir)
    for weight_file in find_weight_files(checkpoint_dir):
        output.info(_file_line(weight_file))
    output.info("done: check them with `latentsync models verify`")


@app.command("verify")
def verify(
    ctx: typer.Context,
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir", help=CHECKPOINT_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    arch: str = typer.Option("latentsync-1.6", "--arch", hidden=True, help="Architecture to check against."),
) -> None:
    """Check that every weight file is present and has the keys and shapes of LatentSync 1.6 (reads no tensor data)."""
    from latentsync_cli.weights.verify import Architecture, verify_weights

    output = get_output(ctx)
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown --arch {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if checkpoint_dir is not None and not checkpoint_dir.is_dir():
        raise WeightsError(f"--checkpoint-dir {checkpoint_dir} is not a folder")
    architecture = Architecture.tiny() if arch == "tiny" else Architecture.latentsync_1_6()
    report = verify_weights(checkpoint_dir, architecture)
    if as_json:
        output.print_json(report.to_dict())
    else:
        for check in report.checks:
            status = "ok  " if check.ok else "FAIL"
            output.info(f"{status} {_file_line(check.file)}")
            for problem in check.problems[:5]:
                output.info(f"       {escape(problem)}")
    if not report.ok:
        raise WeightsError(report.failure_message())
    output.info(f"all weight files match {report.architecture}")


@app.command("path")
def path(
    ctx: typer.Context,
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir", help=CHECKPOINT_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the locations as JSON on stdout."),
) -> None:
    """Show where each weight file is, or would be after `latentsync models download`."""
    output = get_output(ctx)
    files = find_weight_files(checkpoint_dir)
    if as_json:
        output.print_json(
            {
                "hub_cache": str(hub_cache_dir()),
                "offline": hub_offline(),
                "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
                "files": [f.to_dict() for f in files],
            }
        )
        return
    output.info(f"Hugging Face cache: {escape(str(hub_cache_dir()))}" + (" (HF_HUB_OFFLINE)" if hub_offline() else ""))
    for weight_file in files:
        output.info(_file_line(weight_file))

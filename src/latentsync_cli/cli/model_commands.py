"""`latentsync models ...`: download, verify and locate the weights."""

from __future__ import annotations

import typer

app = typer.Typer(help="Download, verify and locate the model weights.", no_args_is_help=True)

"""`latentsync presets ...`: the preset table and what it resolves to here."""

from __future__ import annotations

import typer

app = typer.Typer(help="Show the preset table and the settings a mode resolves to here.", no_args_is_help=True)

"""`latentsync benchmark` (filled in by the benchmark work)."""

from __future__ import annotations

import typer

from latentsync_cli.errors import NotAvailableError


def register(app: typer.Typer) -> None:
    @app.command(help="Measure this GPU on the preset matrix and cache the results.")
    def benchmark() -> None:
        raise NotAvailableError("`latentsync benchmark` is not available yet in this build")

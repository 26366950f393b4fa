"""`latentsync sync` and `latentsync profile` (filled in by the pipeline work)."""

from __future__ import annotations

import typer

from latentsync_cli.errors import NotAvailableError


def register(app: typer.Typer) -> None:
    @app.command(help="Lip-sync VIDEO (or an image) to AUDIO and write an MP4.")
    def sync() -> None:
        raise NotAvailableError("`latentsync sync` is not available yet in this build")

    @app.command(help="Run one sync with per-stage timings, peak memory and a bottleneck verdict.")
    def profile() -> None:
        raise NotAvailableError("`latentsync profile` is not available yet in this build")

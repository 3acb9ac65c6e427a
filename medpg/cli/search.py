"""`medpg search` and `medpg eval`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the search commands to the top-level CLI."""

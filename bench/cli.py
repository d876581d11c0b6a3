"""``duro bench`` (placeholder until the benchmark suite lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group to *app*."""

"""Consoles and tables for the ``duro`` commands: readable at any width and when piped.

On a terminal, output fits the window and table cells fold (wrap mid-word) instead of being cut
with an ellipsis. When stdout is not a terminal (``duro inspect NS | cat``), and ``COLUMNS``
does not say otherwise, lines are as wide as their content, so nothing is folded or cut and an
object ID can be copied back whole.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Final, TextIO

from rich.console import Console
from rich.table import Table

__all__ = ["PIPE_WIDTH", "err_console", "out_console", "table"]

PIPE_WIDTH: Final = 100_000
"""The width of a console writing to a pipe or file: wider than any line duro prints."""


def _console(stream: TextIO, stderr: bool) -> Console:
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPE_WIDTH if wide else None, highlight=False)


def out_console() -> Console:
    """A console on stdout (wide when piped)."""
    return _console(sys.stdout, stderr=False)


def err_console() -> Console:
    """A console on stderr (wide when redirected)."""
    return _console(sys.stderr, stderr=True)


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = (),
          whole: tuple[str, ...] = (), **kwargs: Any) -> Table:
    """A table whose cells fold rather than being cut; *right* columns are right-justified;
    *whole* columns (IDs) never wrap: they shrink the others instead."""
    t = Table(title=title, **kwargs)
    for name in columns:
        t.add_column(name, overflow="fold", no_wrap=name in whole,
                     justify="right" if name in right else "left",
                     min_width=64 if name in whole else None)
    return t

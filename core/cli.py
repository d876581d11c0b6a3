"""The ``duro`` command line: ``check``, ``bench``, ``serve``, ``inspect``, ``export``,
``import``, ``migrate``.

Each sub-package contributes its commands through a ``register(app)`` function, imported here.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from duro.console import err_console
from duro.errors import DuroError

app = typer.Typer(
    name="duro",
    help="duro: Durable Objects for Python.\n\nExit codes of every command: 0 done; 1 the "
         "command ran and found a problem (an anomaly, a failed benchmark run, data refused or "
         "not moved); 2 usage or setup error; 3 unknown (check ran out of search budget).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from duro import __version__

        print(f"duro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print duro's version and exit.")] = False,
) -> None:
    """The root command: only ``--version``."""


def _register_subcommands() -> None:
    from duro.bench.cli import register as register_bench
    from duro.consistency.cli import register as register_check
    from duro.ops_cli import register as register_ops
    from duro.serve_cli import register as register_serve

    register_check(app)
    register_bench(app)
    register_serve(app)
    register_ops(app)


def main() -> None:
    """Entry point of the ``duro`` console script."""
    _register_subcommands()
    try:
        app()
    except DuroError as exc:
        err_console().print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(2)

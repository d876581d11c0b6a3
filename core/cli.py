"""The ``duro`` command line: ``check``, ``bench``, ``serve``, ``inspect``, ``export``,
``import``, ``migrate``.

Each sub-package contributes its commands through a ``register(app)`` function, imported here.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from duro.errors import DuroError

app = typer.Typer(
    name="duro",
    help="duro: Durable Objects for Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)



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
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)

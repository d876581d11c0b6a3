"""``duro check``: the command behind the CLI, as a plain function returning the exit code.

``check_command(...)`` implements ``duro check``'s option set::

    duro check [--backend URL] [--seed N] [--ops N] [--objects N] [--clients N]
               [--processes N] [--faults kill,pause,errors,skew,gc-race] [--history-out FILE]
               [--report FILE] [--mutant NAME] [--histories N] [--mode MODE]
    duro check --history FILE

Exit codes: 0 linearizable, 1 anomaly found (printed), 2 usage or setup error, 3 unknown
(the checker's budget or its 30 s limit ran out).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from duro.config import resolve_backend_url
from duro.consistency.runner import CheckSummary, run_check
from duro.errors import DuroError

__all__ = ["check_command", "check_history_file", "print_summary", "validate_options"]


def print_summary(summary: CheckSummary, console: Console) -> None:
    """The summary table, then the anomaly (if any) and how to replay it."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in summary.table():
        style = {"ok": "green", "anomaly": "red", "unknown": "yellow"}.get(v, "")
        table.add_row(k, f"[{style}]{v}[/{style}]" if style and k == "verdict" else v)
    console.print(table)
    if summary.explanation:
        console.print(summary.explanation, markup=False, highlight=False)
    if summary.failing_seed is not None:
        console.print(f"replay: duro check --backend '{summary.backend}' --seed "
                      f"{summary.failing_seed} --histories 1 --mode {summary.failing_mode}"
                      + (f" --mutant {summary.mutant}" if summary.mutant else ""),
                      markup=False, highlight=False)


def check_history_file(path: str | Path, console: Console, report: str | Path | None = None
                       ) -> int:
    """``duro check --history FILE``: check a recorded history; the exit code."""
    from duro.consistency.checker import check_history
    from duro.consistency.history import History

    try:
        hist = History.load(path)
    except DuroError as exc:
        console.print(f"error: {exc}", markup=False)
        return 2
    result = check_history(hist, timeout=30.0)
    console.print(result.explain(), markup=False, highlight=False)
    if report is not None:
        from duro.consistency.report import html_report

        Path(report).write_text(html_report(result, title=f"duro check {path}"),
                                encoding="utf-8")
    return {"ok": 0, "anomaly": 1, "unknown": 3}[result.verdict]


def check_command(backend: str | None = None, seed: int = 0, ops: int = 200, objects: int = 2,
                  clients: int = 4, processes: int = 2, faults: str | None = None,
                  history_out: str | None = None, report: str | None = None,
                  mutant: str | None = None, history: str | None = None,
                  histories: int | None = None, mode: str = "mixed", depth: str = "default",
                  console: Console | None = None, progress: bool = True,
                  on_summary: Callable[[CheckSummary], None] | None = None) -> int:
    """Run ``duro check`` with these options; returns the exit code (0, 1, 2 or 3).

    *on_summary*, if given, receives the run's summary after it is printed. ``faults=None``
    injects the runner's default faults (kill, pause, errors, skew, gc-race);
    ``histories=None`` takes the count from *depth* (``quick``, ``default`` or ``thorough``).
    """
    console = console or Console()
    err = Console(stderr=True)
    if history is not None:
        return check_history_file(history, console, report)
    try:
        url = resolve_backend_url(backend)
        validate_options(ops=ops, objects=objects, clients=clients, processes=processes,
                         faults=faults, mode=mode)
        summary = run_check(url, seed=seed, ops=ops, objects=objects, clients=clients,
                            processes=processes, faults=faults, mutant=mutant,
                            history_out=history_out, report=report, histories=histories,
                            mode=mode, console=err, progress=progress,
                            depth=depth)  # type: ignore[arg-type]
    except (DuroError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    print_summary(summary, console)
    if on_summary is not None:
        on_summary(summary)
    return summary.exit_code


def validate_options(ops: int = 200, objects: int = 2, clients: int = 4, processes: int = 2,
                     faults: str | None = None, mode: str = "mixed") -> None:
    """Raise ``ValueError`` for options ``run_check`` would refuse (checked before any run)."""
    from duro.consistency.faults import parse_faults
    from duro.consistency.runner import MODES

    if not 1 <= clients <= 8:
        raise ValueError("--clients must be 1..8 (concurrent clients per object)")
    if ops < 1 or objects < 1 or processes < 1:
        raise ValueError("--ops, --objects and --processes must be positive")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    parse_faults(faults)

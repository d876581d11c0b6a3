"""``duro check``: run the consistency suite against a backend, or check a recorded history.

- ``duro check --history FILE [--report FILE] [--budget N] [--timeout S]`` checks a JSONL
  history (docs/reference/history.md). ``--report`` writes an HTML page (``.html``/``.htm``), a
  JSON summary (``.json``) or the text explanation (any other name).
- ``duro check [--backend URL] [--quick | --thorough] [--stage all|contract|linearizability]
  [--keep-going] [--json] [--seed N] [--ops N] [--objects N] [--clients N] [--processes N]
  [--faults kill,pause,errors,skew,gc-race] [--history-out FILE] [--report FILE] [--histories N]
  [--mode M] [--mutant NAME]`` checks a backend in two stages (:mod:`duro.consistency.stages`):
  stage 1 drives the storage contract check by check (:mod:`duro.consistency.contract`);
  stage 2 runs the workloads under faults and checks every history
  (:mod:`duro.consistency.runner`). Without ``--backend`` it checks a scratch store, never
  the application's own.

- ``duro check --mode cluster [--storage postgres|s3] [--quick | --thorough] [--seed N]
  [--ops N] [--seconds S] [--faults storage,peers,split,oneway,kill,pause] [--mutant NAME]
  [--json] [--history-out FILE]`` runs ``duro serve`` on three hosts in Linux network
  namespaces on a shared PostgreSQL (or S3 on a moto server) it starts itself, partitions,
  kills and pauses them, and checks the history (:mod:`duro.consistency.cluster_mode`). It
  needs root and iproute2, and PostgreSQL's binaries (or moto) for the store.

Exit codes: 0 ok, 1 contract violation or anomaly found (printed with its witness), 2 usage or
setup error (e.g. a malformed history: the message names the line), 3 unknown (search budget
exhausted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from duro.consistency.checker import DEFAULT_BUDGET, CheckResult, check_history
from duro.consistency.history import History, HistoryError

__all__ = ["EXIT_ANOMALY", "EXIT_OK", "EXIT_UNKNOWN", "EXIT_USAGE", "register", "write_report"]

EXIT_OK, EXIT_ANOMALY, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3

console = Console()
err = Console(stderr=True)


def write_report(result: CheckResult, path: Path, *, title: str = "duro check") -> None:
    """Write *result* to *path*: HTML for ``.html``/``.htm``, JSON for ``.json``, else text."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        from duro.consistency.report import html_report

        text = html_report(result, title=title)
    elif suffix == ".json":
        text = json.dumps(result_json(result), indent=2, ensure_ascii=False) + "\n"
    else:
        text = result.explain(max_anomalies=50) + "\n"
    path.write_text(text, encoding="utf-8")


def result_json(result: CheckResult) -> dict[str, Any]:
    """A JSON-ready summary: verdict, counts, partitions that are not ok, anomalies."""
    return {
        "verdict": result.verdict,
        "ops": result.ops,
        "objects": result.objects,
        "partitions": len(result.partitions),
        "seconds": round(result.seconds, 6),
        "not_ok": [{"object": p.object, "keys": list(p.keys), "model": p.model, "ops": p.ops,
                    "verdict": p.verdict, "steps": p.steps}
                   for p in result.partitions if p.verdict != "ok"],
        "anomalies": [{"kind": a.kind, "object": a.object, "keys": list(a.keys),
                       "message": a.message,
                       "witness": [e.to_json() for e in a.witness.history.events]}
                      for a in result.anomalies],
    }


def _print_result(result: CheckResult) -> None:
    style = {"ok": "green", "anomaly": "red", "unknown": "yellow"}[result.verdict]
    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("verdict", "ops", "objects", "partitions", "anomalies", "unknown", "seconds"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    table.add_row(f"[{style}]{result.verdict}[/{style}]", str(result.ops), str(result.objects),
                  str(len(result.partitions)), str(len(result.anomalies)),
                  str(len(result.unknown())), f"{result.seconds:.3f}")
    console.print(table)
    for p in result.unknown():
        console.print(f"[yellow]unknown[/yellow]: object {escape(repr(p.object))} keys "
                      f"{escape(', '.join(p.keys) or '-')}: budget exhausted after "
                      f"{p.steps:,} steps ({p.ops} ops)", highlight=False)
    for a in result.anomalies[:5]:
        keys = f" keys {', '.join(a.keys)}" if a.keys else ""
        console.print(f"[red bold]{a.kind}[/red bold] on object {escape(repr(a.object))}"
                      f"{escape(keys)}: {escape(a.message)}", highlight=False)
        console.print(Panel(Text(a.witness.to_text()), expand=False, highlight=False))
    if len(result.anomalies) > 5:
        console.print(f"... and {len(result.anomalies) - 5} more anomalies (see --report)")


def check(
    history: Annotated[Path | None, typer.Option(
        "--history", help="Check this recorded JSONL history instead of running workloads.",
        dir_okay=False)] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", help="Backend URL to check (default: a scratch store of the "
        "configured kind, never the application's own).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (replay).")] = None,
    ops: Annotated[int | None, typer.Option("--ops", help="Ops per history.", min=1)] = None,
    objects: Annotated[int | None, typer.Option("--objects", help="Objects per history.",
                                                min=1)] = None,
    clients: Annotated[int | None, typer.Option("--clients", help="Concurrent clients.",
                                                min=1)] = None,
    processes: Annotated[int | None, typer.Option("--processes", help="OS processes.",
                                                  min=1)] = None,
    faults: Annotated[str | None, typer.Option(
        "--faults", help="Faults to inject: comma-separated kill,pause,errors,skew,gc-race "
        "(default: all five; 'none' for none).")] = None,
    history_out: Annotated[Path | None, typer.Option(
        "--history-out", help="Write the recorded history here (JSONL).", dir_okay=False)] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write a report: .html (timeline), .json (summary) or text.",
        dir_okay=False)] = None,
    budget: Annotated[int, typer.Option(
        "--budget", help="Search steps per partition before the verdict is 'unknown'.",
        min=1)] = DEFAULT_BUDGET,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Wall-clock limit in seconds for checking (then 'unknown').",
        min=0.0)] = None,
    histories: Annotated[int | None, typer.Option(
        "--histories", help="How many histories stage 2 runs and checks (default: by depth: "
        "8 with --quick, 16 by default, 60 with --thorough).", min=1)] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="mixed, deterministic, tasks, threads, processes, http, or cluster "
        "(hosts in network namespaces with partitions; needs root).")] = "mixed",
    mutant: Annotated[str | None, typer.Option(
        "--mutant", help="Test-only broken duro the suite must catch: skip-epoch-check, "
        "stale-read, steal-lease, drop-write, ack-early, half-batch; with --mode cluster "
        "also lost-lease-read.")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="--mode cluster: the shared store it starts, postgres (default) "
        "or s3 (a moto server).")] = None,
    seconds: Annotated[float | None, typer.Option(
        "--seconds", help="--mode cluster: how long a run lasts (default 30; 20 with "
        "--quick, 120 with --thorough).", min=1.0)] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Shallower and faster: fewer rounds in stage 1, fewer histories.")
    ] = False,
    thorough: Annotated[bool, typer.Option(
        "--thorough", help="Deeper and slower: more rounds in stage 1, more histories.")
    ] = False,
    stage: Annotated[str, typer.Option(
        "--stage", help="all (default), contract (stage 1 only) or linearizability "
        "(stage 2 only).")] = "all",
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="Run stage 2 even when stage 1 found a contract violation.")
    ] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON on stdout (the human output goes to stderr).")
    ] = False,
) -> None:
    """Check a backend: its storage contract (stage 1), then per-object linearizability
    under load and faults (stage 2); or check a recorded history (--history)."""
    run_opts = {"--backend": backend, "--seed": seed, "--ops": ops, "--objects": objects,
                "--clients": clients, "--processes": processes, "--faults": faults,
                "--history-out": history_out}
    if quick and thorough:
        err.print("[red]error:[/red] --quick and --thorough exclude each other")
        raise typer.Exit(EXIT_USAGE)
    if mode == "cluster":
        raise typer.Exit(_cluster(
            storage=storage, seed=seed, ops=ops, seconds=seconds, faults=faults, mutant=mutant,
            depth="quick" if quick else "thorough" if thorough else "default", as_json=as_json,
            history_out=history_out,
            others={"--history": history, "--backend": backend, "--objects": objects,
                    "--clients": clients, "--processes": processes, "--report": report,
                    "--histories": histories, "--keep-going": keep_going or None,
                    "--stage": None if stage == "all" else stage}))
    if storage is not None or seconds is not None:
        err.print("[red]error:[/red] --storage and --seconds go with --mode cluster")
        raise typer.Exit(EXIT_USAGE)
    if history is None:
        from duro.consistency.stages import check_backend

        raise typer.Exit(check_backend(
            backend, depth="quick" if quick else "thorough" if thorough else "default",
            stage=stage, keep_going=keep_going, as_json=as_json, report=report,
            history_out=history_out, histories=histories, mutant=mutant,
            stage2={"seed": seed or 0, "ops": ops or 200, "objects": objects or 2,
                    "clients": clients or 4, "processes": processes or 2,
                    "faults": faults, "mode": mode}))
    given = [name for name, v in run_opts.items() if v is not None]
    given += [flag for flag, on in (("--quick", quick), ("--thorough", thorough),
                                    ("--keep-going", keep_going), ("--json", as_json)) if on]
    if given:
        err.print(f"[red]error:[/red] --history checks a recorded history; it cannot be combined "
                  f"with {', '.join(given)}")
        raise typer.Exit(EXIT_USAGE)
    try:
        if report is not None:
            from duro.consistency.stages import UsageError, check_writable

            try:
                check_writable(report, "--report")
            except UsageError as exc:
                raise HistoryError(str(exc)) from exc
        hist = History.load(history)
        result = check_history(hist, budget=budget, timeout=timeout)
    except HistoryError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except RecursionError:
        err.print(f"[red]error:[/red] {escape(str(history))}: values are nested too deeply to "
                  "check", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    _print_result(result)
    if report is not None:
        try:
            write_report(result, report, title=f"duro check {history.name}")
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot write report {escape(str(report))}: "
                      f"{escape(str(exc.strerror or exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        console.print(f"report written to {report}", highlight=False)
    raise typer.Exit({"ok": EXIT_OK, "anomaly": EXIT_ANOMALY, "unknown": EXIT_UNKNOWN}
                     [result.verdict])


def _cluster(*, storage: str | None, seed: int | None, ops: int | None, seconds: float | None,
             faults: str | None, mutant: str | None, depth: str, as_json: bool,
             history_out: Path | None, others: dict[str, object]) -> int:
    """``duro check --mode cluster``: :func:`duro.consistency.cluster_mode.cluster_command`."""
    from duro.consistency.cluster_mode import cluster_command

    given = [flag for flag, v in others.items() if v is not None]
    if given:
        err.print(f"[red]error:[/red] --mode cluster starts its own hosts and store; it cannot "
                  f"be combined with {', '.join(given)}", highlight=False)
        return EXIT_USAGE
    if storage not in (None, "postgres", "s3"):
        err.print(f"[red]error:[/red] --storage must be postgres or s3, not {escape(storage)}",
                  highlight=False)
        return EXIT_USAGE
    def say(line: str) -> None:
        if as_json:
            print(line, flush=True)  # JSON alone on stdout
        else:
            console.print(line, markup=False, highlight=False)

    return cluster_command(
        storage=storage or "postgres", seed=seed or 0, ops=ops, seconds=seconds, depth=depth,
        faults=faults, mutant=mutant, as_json=as_json, history_out=history_out, out=say,
        err=lambda line: err.print(line, markup=False, highlight=False))


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to *app*."""
    app.command("check", help="Check a backend: stage 1 drives its storage contract check by "
                "check, stage 2 checks per-object linearizability under concurrent load and "
                "faults. Or check a recorded history (--history FILE).")(check)

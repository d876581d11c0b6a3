"""``duro bench``: run the benchmark (rich progress bar + table, JSON report) and ``compare``.

- ``duro bench [--backend URL ...] [--workload NAME ...] [--quick] [--out FILE] [--s3]``
- ``duro bench compare A.json B.json [--plot out.png]``
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from duro.bench.workloads import SWEEP_WORKLOADS
from duro.console import err_console, out_console

__all__ = ["bench_app", "register"]

bench_app = typer.Typer(
    name="bench",
    help="Run the benchmark suite (duro vs raw stores, same run), or compare two reports.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 1,8,64") from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{what} must be positive integers")
    return values


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", "-b", help="Backend URL to benchmark (repeatable); each run uses its own "
        "namespace there and removes it afterwards. Default: scratch sqlite and lmdb files "
        "(sync=full) under --data-dir, deleted afterwards; never the app's own store.")] = None,
    workload: Annotated[list[str] | None, typer.Option(
        "--workload", "-w", help=f"Workload to run (repeatable): {', '.join(SWEEP_WORKLOADS)}, "
        "or 'targets' for the target runs. Default: all of them.")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Short runs over a small sweep (under a minute on sqlite + lmdb).")
    ] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the JSON report. \\[default: bench-<time>.json]")
    ] = None,
    s3: Annotated[bool, typer.Option(
        "--s3", help="Also benchmark s3:// against a local moto server with S3-like latency.")
    ] = False,
    s3_latency: Annotated[float, typer.Option(
        "--s3-latency", help="Seconds of latency the local moto server adds per request.")
    ] = 0.05,
    clients: Annotated[str | None, typer.Option(
        "--clients", help="Concurrent callers to sweep. \\[default: 1,4,16,64; --quick: 1,64]")
    ] = None,
    objects: Annotated[str | None, typer.Option(
        "--objects", help="Object counts to sweep. \\[default: 1,16; --quick: 1]")] = None,
    value_size: Annotated[str | None, typer.Option(
        "--value-size", help="Value sizes in bytes to sweep. \\[default: 100,4096; --quick: 100]")
    ] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Seconds per run. \\[default: 2; --quick: 0.3 (targets 0.6)]")] = None,
    ops: Annotated[int | None, typer.Option(
        "--ops", help="Op budget per run. \\[default: 1000000; --quick: 50000]")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where scratch data files go (a real disk, not tmpfs). "
        "\\[default: ./.duro-bench]")] = None,
    keep_data: Annotated[bool, typer.Option(
        "--keep-data", help="Keep the data files afterwards.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also draw this run's plots to this PNG file.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON on stdout (progress goes to stderr).")] = False,
) -> None:
    """Run the benchmark: YCSB-style workloads and target runs, each against its baseline."""
    if ctx.invoked_subcommand is not None:
        return
    from duro.bench.report import results_table, save_report, targets_table
    from duro.bench.runner import BenchConfig, run_bench

    overrides: dict[str, object] = {}
    if backend:
        overrides["backends"] = list(backend)
    if workload:
        names = [w for w in workload if w != "targets"]
        unknown = [w for w in names if w not in SWEEP_WORKLOADS]
        if unknown:
            raise typer.BadParameter(
                f"unknown workload(s) {', '.join(unknown)}; known: "
                f"{', '.join(SWEEP_WORKLOADS)}, targets", param_hint="--workload")
        overrides["workloads"] = names
        overrides["targets"] = "targets" in workload
    for name, text in (("clients", clients), ("objects", objects), ("value_sizes", value_size)):
        parsed = _ints(text, name)
        if parsed is not None:
            overrides[name] = parsed
    if duration is not None:
        if duration <= 0:
            raise typer.BadParameter("must be positive", param_hint="--duration")
        overrides["duration"] = duration
        overrides["target_duration"] = duration
    if ops is not None:
        overrides["max_ops"] = ops
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    overrides["keep_data"] = keep_data
    overrides["s3"] = s3
    overrides["s3_latency"] = s3_latency
    config = (BenchConfig.quick_preset(**overrides) if quick
              else BenchConfig.full_preset(**overrides))
    out_path = out or Path(f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")

    console, err = out_console(), err_console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=as_json) as progress:
        task = progress.add_task("planning", total=None)

        def on_step(index: int, total: int, description: str) -> None:
            progress.update(task, total=total, completed=index, description=description[:60])

        report = run_bench(config, on_step)

    save_report(report, out_path)
    if as_json:
        print(out_path.read_text(encoding="utf-8"))
    else:
        console.print(results_table(report))
        if report.targets:
            console.print(targets_table(report))
    warning = report.config.get("warning")
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    errors = sum(1 for r in report.results if r.error)
    if errors:
        err.print(f"[red]{errors} run(s) failed[/red]; see the 'error' fields in the report")
    if plot is not None:
        from duro.bench.plots import plot_reports

        plot_reports([report], plot, labels=[out_path.stem])
        err.print(f"plot: {plot}")
    err.print(f"report: {out_path}")
    if errors:
        raise typer.Exit(1)


@bench_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="The first (reference) report.")],
    b: Annotated[Path, typer.Argument(help="The second report.")],
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Draw throughput and latency plots of both reports to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the rows (with speedup and p99_ratio) as JSON.")] = False,
) -> None:
    """Print B/A throughput and p99 ratios per workload, and optionally plot both reports."""
    from duro.bench.compare import compare_reports, compare_table
    from duro.bench.report import load_report

    reports = []
    for path in (a, b):
        try:
            reports.append(load_report(path))
        except (OSError, ValueError) as exc:
            err_console().print(f"[red]error:[/red] cannot read report "
                                f"{escape(str(path))}: {escape(str(exc))}")
            raise typer.Exit(2) from exc
    rows = compare_reports(reports[0], reports[1])
    if as_json:
        print(json.dumps({"a": str(a), "b": str(b), "rows": [
            {**asdict(r), "speedup": r.speedup, "p99_ratio": r.p99_ratio} for r in rows]},
            indent=2))
    else:
        out_console().print(compare_table(rows, a.name, b.name))
    if plot is not None:
        from duro.bench.plots import plot_reports

        plot_reports(reports, plot, labels=[a.stem, b.stem])
        err_console().print(f"plot: {plot}")


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group (with its ``compare`` subcommand) to *app*."""
    app.add_typer(bench_app, name="bench")

"""Matplotlib plots of one or more reports (Agg backend, PNG).

One row per swept workload: throughput (ops/s) by concurrency, one line per backend and report;
latency (p99 solid markers, p50 crosses) by concurrency. A last row shows the duro/baseline
ratio of every target run, one bar per report.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from duro.bench.report import Report, Result
from duro.bench.workloads import SWEEP_WORKLOADS

__all__ = ["plot_reports"]

_STYLES = ("-", "--", ":", "-.")


def _series(report: Report, workload: str) -> dict[str, list[Result]]:
    """The rows of *workload* per backend, restricted to one (objects, value size) pair."""
    rows = [r for r in report.results if r.workload == workload and r.error is None]
    if not rows:
        return {}
    objects = min(r.objects for r in rows)
    size = min(r.value_size for r in rows)
    out: dict[str, list[Result]] = defaultdict(list)
    for r in rows:
        if r.objects == objects and r.value_size == size:
            out[r.backend].append(r)
    for series in out.values():
        series.sort(key=lambda r: r.clients)
    return dict(out)


def plot_reports(reports: list[Report], path: Path, labels: list[str] | None = None) -> Path:
    """Draw *reports* into one PNG at *path* and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [f"report {i + 1}" for i in range(len(reports))]
    present = {r.workload for rep in reports for r in rep.results}
    workloads = [w for w in SWEEP_WORKLOADS if w in present]
    target_rows = [[r for r in rep.results if r.workload not in SWEEP_WORKLOADS
                    and r.ratio is not None] for rep in reports]
    has_targets = any(target_rows)
    nrows = max(1, len(workloads) + (1 if has_targets else 0))
    fig, axes = plt.subplots(nrows, 2, figsize=(13, 3.3 * nrows), squeeze=False)
    backends = sorted({r.backend for rep in reports for r in rep.results})
    colours: dict[str, Any] = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}

    for row, workload in enumerate(workloads):
        ax_t, ax_l = axes[row][0], axes[row][1]
        for i, rep in enumerate(reports):
            style = _STYLES[i % len(_STYLES)]
            for backend, series in _series(rep, workload).items():
                xs = [r.clients for r in series]
                name = f"{backend} ({labels[i]})" if len(reports) > 1 else backend
                ax_t.plot(xs, [r.ops_per_s for r in series], style, marker="o",
                          color=colours[backend], label=name)
                base = [(r.clients, r.baseline_ops_per_s) for r in series
                        if r.baseline_ops_per_s]
                if base and i == 0:
                    ax_t.plot([b[0] for b in base], [b[1] for b in base], ":", marker="s",
                              markerfacecolor="none", color=colours[backend], alpha=0.6,
                              label=f"{series[0].baseline} (raw, same run)")
                ax_l.plot(xs, [r.p99_ms for r in series], style, marker="o",
                          color=colours[backend], label=f"{name} p99")
                ax_l.plot(xs, [r.p50_ms for r in series], style, marker="x", alpha=0.5,
                          color=colours[backend], label=f"{name} p50")
        sample = next((s for rep in reports for s in _series(rep, workload).values()), [])
        detail = (f" (objects={sample[0].objects}, value={sample[0].value_size} B)"
                  if sample else "")
        ax_t.set_title(f"{workload}: throughput{detail}", fontsize=9)
        ax_l.set_title(f"{workload}: latency", fontsize=9)
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent callers")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, loc="best")
        ax_t.set_ylabel("ops/s")
        ax_l.set_ylabel("ms")

    if has_targets:
        ax = axes[nrows - 1][0]
        names = sorted({f"{r.workload}\n{r.backend} c={r.clients}" for rows in target_rows
                        for r in rows})
        width = 0.8 / len(reports)
        for i, rows in enumerate(target_rows):
            by_name = {f"{r.workload}\n{r.backend} c={r.clients}": r.ratio for r in rows}
            bar_x = [j + i * width for j in range(len(names))]
            ax.bar(bar_x, [by_name.get(n) or 0.0 for n in names], width=width, label=labels[i])
        ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, fontsize=6, rotation=45, ha="right")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("duro / baseline (ops/s)")
        ax.set_title("target runs: ratio to baseline", fontsize=9)
        ax.legend(fontsize=7)
        axes[nrows - 1][1].axis("off")
    elif not workloads:
        axes[0][0].text(0.5, 0.5, "no results to plot", ha="center")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

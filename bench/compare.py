"""Compare two reports: per-workload throughput and latency ratios (B relative to A).

Rows match on ``(workload, backend, clients, objects, value_size)``. ``speedup`` is
B ops/s ÷ A ops/s (above 1: B is faster); ``p99_ratio`` is B p99 ÷ A p99 (below 1: B has lower
tail latency). Each report's duro/baseline ``ratio`` is shown too: comparing those, rather than
absolute ops/s, is what stays meaningful across machines.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table

from duro.bench.report import Report, Result
from duro.console import table as new_table

__all__ = ["CompareRow", "compare_reports", "compare_table"]


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One matched (or unmatched) result across two reports."""

    workload: str
    backend: str
    clients: int
    objects: int
    value_size: int
    a_ops_per_s: float | None
    b_ops_per_s: float | None
    a_ratio: float | None
    b_ratio: float | None
    a_p99_ms: float | None
    b_p99_ms: float | None

    @property
    def speedup(self) -> float | None:
        """B ops/s ÷ A ops/s."""
        if self.a_ops_per_s and self.b_ops_per_s:
            return self.b_ops_per_s / self.a_ops_per_s
        return None

    @property
    def p99_ratio(self) -> float | None:
        """B p99 ÷ A p99."""
        if self.a_p99_ms and self.b_p99_ms:
            return self.b_p99_ms / self.a_p99_ms
        return None


def _ok(r: Result | None) -> Result | None:
    return None if r is None or r.error else r


def compare_reports(a: Report, b: Report) -> list[CompareRow]:
    """Match the rows of *a* and *b*; rows only one report has keep ``None`` on the other side."""
    a_rows = {r.key: r for r in a.results}
    b_rows = {r.key: r for r in b.results}
    keys = list(a_rows) + [k for k in b_rows if k not in a_rows]
    out = []
    for key in keys:
        ra, rb = _ok(a_rows.get(key)), _ok(b_rows.get(key))
        out.append(CompareRow(
            *key,
            a_ops_per_s=ra.ops_per_s if ra else None,
            b_ops_per_s=rb.ops_per_s if rb else None,
            a_ratio=ra.ratio if ra else None,
            b_ratio=rb.ratio if rb else None,
            a_p99_ms=ra.p99_ms if ra else None,
            b_p99_ms=rb.p99_ms if rb else None,
        ))
    return out


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _speed(x: float | None) -> str:
    if x is None:
        return "-"
    colour = "green" if x >= 1.05 else "red" if x <= 0.95 else "white"
    return f"[{colour}]{x:.2f}x[/{colour}]"


def compare_table(rows: list[CompareRow], a_name: str = "A", b_name: str = "B") -> Table:
    """A rich table of *rows* (cells fold, never cut)."""
    names = ("workload", "backend", "clients", "objects", "value", "A ops/s", "B ops/s",
             "speedup", "A ratio", "B ratio", "A p99 ms", "B p99 ms", "p99 B/A")
    table = new_table(*names, title=f"{escape(b_name)} vs {escape(a_name)} "
                      "(speedup = B ops/s / A ops/s)", right=names[2:])
    for r in rows:
        table.add_row(
            escape(r.workload), escape(r.backend), str(r.clients), str(r.objects),
            str(r.value_size), _num(r.a_ops_per_s, ",.0f"), _num(r.b_ops_per_s, ",.0f"),
            _speed(r.speedup), _num(r.a_ratio, ".2f"), _num(r.b_ratio, ".2f"),
            _num(r.a_p99_ms, ".3f"), _num(r.b_p99_ms, ".3f"), _num(r.p99_ratio, ".2f"),
        )
    return table

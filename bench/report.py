"""The benchmark report: measurements, result rows, target rows, JSON I/O and rich tables.

JSON shape (``SCHEMA_VERSION`` 1)::

    {"schema": 1, "machine": {...}, "versions": {...}, "config": {...},
     "results": [{"workload", "backend", "clients", "objects", "value_size", "ops", "seconds",
                  "ops_per_s", "p50_ms", "p99_ms",
                  # where a baseline ran:
                  "baseline", "baseline_ops_per_s", "baseline_p50_ms", "baseline_p99_ms", "ratio",
                  # optional: "mode", "note", "error"}],
     "targets": [{"id", "description", "metric", "value", "comparison", "threshold", "met",
                  "note"}]}

``ratio`` is always duro ops/s divided by baseline ops/s.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

from rich.markup import escape
from rich.table import Table

from duro.bench.hdr import Histogram
from duro.console import table as new_table

__all__ = [
    "REQUIRED_RESULT_FIELDS",
    "SCHEMA_VERSION",
    "Measurement",
    "Report",
    "Result",
    "Target",
    "filesystem_type",
    "load_report",
    "machine_info",
    "results_table",
    "save_report",
    "targets_table",
    "validate_report",
    "versions",
]

SCHEMA_VERSION: Final = 1
REQUIRED_TOP_LEVEL: Final = ("machine", "versions", "config", "results", "targets")
REQUIRED_RESULT_FIELDS: Final = (
    "workload", "backend", "clients", "objects", "value_size", "ops", "seconds", "ops_per_s",
    "p50_ms", "p99_ms",
)


@dataclass(slots=True)
class Measurement:
    """What one timed run produced: op count, wall seconds and a latency histogram."""

    ops: int
    seconds: float
    histogram: Histogram

    @classmethod
    def combine(cls, parts: list[Measurement]) -> Measurement:
        """One measurement from several slices: ops and seconds add, histograms merge."""
        hist = Histogram()
        for p in parts:
            hist.merge(p.histogram)
        return cls(sum(p.ops for p in parts), sum(p.seconds for p in parts), hist)

    @property
    def ops_per_s(self) -> float:
        """Throughput."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, p: float) -> float:
        """Latency percentile in milliseconds."""
        return self.histogram.percentile(p) / 1e6


@dataclass(slots=True)
class Result:
    """One row of the report."""

    workload: str
    backend: str
    clients: int
    objects: int
    value_size: int
    ops: int = 0
    seconds: float = 0.0
    ops_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    baseline: str | None = None
    baseline_ops_per_s: float | None = None
    baseline_p50_ms: float | None = None
    baseline_p99_ms: float | None = None
    ratio: float | None = None
    mode: str = "stub"
    note: str | None = None
    error: str | None = None

    def set_measurement(self, m: Measurement) -> None:
        """Fill the duro figures from *m*."""
        self.ops, self.seconds = m.ops, round(m.seconds, 6)
        self.ops_per_s = round(m.ops_per_s, 3)
        self.p50_ms = round(m.percentile_ms(50), 6)
        self.p99_ms = round(m.percentile_ms(99), 6)
        self._update_ratio()

    def set_baseline(self, name: str, m: Measurement) -> None:
        """Fill the baseline figures from *m*."""
        self.baseline = name
        self.baseline_ops_per_s = round(m.ops_per_s, 3)
        self.baseline_p50_ms = round(m.percentile_ms(50), 6)
        self.baseline_p99_ms = round(m.percentile_ms(99), 6)
        self._update_ratio()

    def _update_ratio(self) -> None:
        if self.baseline_ops_per_s and self.ops_per_s and self.error is None:
            self.ratio = round(self.ops_per_s / self.baseline_ops_per_s, 4)
        else:
            self.ratio = None

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        """What identifies a row across reports."""
        return (self.workload, self.backend, self.clients, self.objects, self.value_size)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (baseline fields only where a baseline ran)."""
        d = asdict(self)
        if self.baseline is None:
            for name in ("baseline", "baseline_ops_per_s", "baseline_p50_ms",
                         "baseline_p99_ms", "ratio"):
                d.pop(name)
        for name in ("note", "error"):
            if d[name] is None:
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Read a row written by :meth:`to_dict` (unknown fields are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(slots=True)
class Target:
    """One target row: a measured ratio against a threshold, met or missed."""

    id: str
    description: str
    metric: str
    value: float | None
    comparison: Literal[">=", "<="]
    threshold: float
    met: bool | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            self.met = None
        elif self.comparison == ">=":
            self.met = self.value >= self.threshold
        else:
            self.met = self.value <= self.threshold

    @property
    def verdict(self) -> str:
        """``met``, ``MISSED`` or ``not measured``."""
        if self.met is None:
            return "not measured"
        return "met" if self.met else "MISSED"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        d = asdict(self)
        d["verdict"] = self.verdict
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        """Read a row written by :meth:`to_dict`."""
        known = set(cls.__dataclass_fields__) - {"met"}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(slots=True)
class Report:
    """A whole benchmark run."""

    machine: dict[str, Any]
    versions: dict[str, str]
    config: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "schema": SCHEMA_VERSION,
            "machine": self.machine,
            "versions": self.versions,
            "config": self.config,
            "results": [r.to_dict() for r in self.results],
            "targets": [t.to_dict() for t in self.targets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Read a report (validated first)."""
        validate_report(d)
        return cls(
            machine=dict(d["machine"]),
            versions=dict(d["versions"]),
            config=dict(d["config"]),
            results=[Result.from_dict(r) for r in d["results"]],
            targets=[Target.from_dict(t) for t in d.get("targets", [])],
        )


def validate_report(d: object) -> None:
    """Raise ``ValueError`` naming the first thing that is not a valid report."""
    if not isinstance(d, dict):
        raise ValueError("a report is a JSON object")
    for name in REQUIRED_TOP_LEVEL:
        if name not in d:
            raise ValueError(f"report has no {name!r}")
    if not isinstance(d["results"], list):
        raise ValueError("'results' must be a list")
    for i, row in enumerate(d["results"]):
        if not isinstance(row, dict):
            raise ValueError(f"results[{i}] is not an object")
        for name in REQUIRED_RESULT_FIELDS:
            if name not in row:
                raise ValueError(f"results[{i}] has no {name!r}")
        if "baseline" in row:
            for name in ("baseline_ops_per_s", "ratio"):
                if name not in row:
                    raise ValueError(f"results[{i}] has a baseline but no {name!r}")
    if not isinstance(d["targets"], list):
        raise ValueError("'targets' must be a list")


def save_report(report: Report, path: Path) -> None:
    """Write *report* as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_report(path: Path) -> Report:
    """Read a report file; ``ValueError`` if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not JSON: {exc}") from exc
    return Report.from_dict(data)


def _read_first(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding *path* (``ext4``, ``tmpfs`` …), or ``unknown``."""
    target = str(path.resolve())
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def machine_info() -> dict[str, Any]:
    """The machine the run happened on (no host name, no paths)."""
    mem = _read_first("/proc/meminfo", "MemTotal")
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu": _read_first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "memory": mem,
    }


def versions() -> dict[str, str]:
    """Versions of duro, Python, SQLite and the drivers and peers that took part."""
    out = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for dist in ("duro", "sqlalchemy", "msgpack", "lmdb", "boto3", "moto", "diskcache",
                 "pytest-benchmark", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def results_table(report: Report, title: str = "duro bench") -> Table:
    """A rich table of every result row (cells fold, never cut)."""
    table = new_table("workload", "backend", "clients", "objects", "value", "ops/s", "p50 ms",
                      "p99 ms", "baseline", "base ops/s", "ratio", title=title,
                      right=("clients", "objects", "value", "ops/s", "p50 ms", "p99 ms",
                             "base ops/s", "ratio"))
    for r in report.results:
        if r.error:
            table.add_row(escape(r.workload), escape(r.backend), str(r.clients),
                          str(r.objects), str(r.value_size), "[red]error[/red]", "", "",
                          escape(r.baseline or ""), "", f"[red]{escape(r.error)}[/red]")
            continue
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(
            escape(r.workload), escape(r.backend), str(r.clients), str(r.objects),
            str(r.value_size), _fmt_rate(r.ops_per_s), _fmt_ms(r.p50_ms), _fmt_ms(r.p99_ms),
            escape(r.baseline or "-"), _fmt_rate(r.baseline_ops_per_s), ratio,
        )
    return table


def targets_table(report: Report) -> Table:
    """A rich table of the target rows, each saying met or MISSED."""
    table = new_table("target", "metric", "measured", "needed", "verdict",
                      title="targets (ratio = duro ops/s / baseline ops/s)",
                      right=("measured",))
    for t in report.targets:
        value = "-" if t.value is None else f"{t.value:,.2f}"
        colour = {"met": "green", "MISSED": "red"}.get(t.verdict, "yellow")
        verdict = f"[{colour}]{t.verdict}[/{colour}]"
        if t.note:
            verdict += f" ({escape(t.note)})"
        table.add_row(escape(t.description), escape(t.metric), value,
                      f"{t.comparison} {t.threshold:g}", verdict)
    return table

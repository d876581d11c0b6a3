"""What ``duro bench`` runs: the presets (:class:`BenchConfig`), the backends under test
(:class:`BackendSpec`) and the sizes the target rows use."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from duro.backends.base import BackendURL
from duro.bench.workloads import SWEEP_WORKLOADS, Workload

__all__ = ["BackendSpec", "BenchConfig"]

DEFAULT_DATA_ROOT: Final = Path(".duro-bench")
S3_BUCKET: Final = "duro-bench"
LOAD_CHUNK: Final = 256
OP_POOL: Final = 4096
PAIRED_SLICES: Final = 4
PAD_COUNT: Final = 1500
PAD_SIZE: Final = 4000
"""Before timing, every file store writes and deletes ~6 MB (more than SQLite's 4 MB WAL
autocheckpoint): fsync costs far more while a file still grows than once it is reused in place."""
TARGET_VALUE: Final = 100
MANY_OBJECTS: Final = (1000, 10_000)
"""Object counts of the many-objects runs (64 callers, cold then warm)."""
TOUCHED_FULL: Final = 100_000
TOUCHED_QUICK: Final = 10_000
"""Objects touched by the resident-memory / idle-eviction run (full / quick)."""
S3_MIN_DURATION: Final = 2.0

GROUP_COMMIT: Final = Workload("group-commit", "64 callers, read-modify-write, one object",
                               (("rmw", 1.0),), distribution="uniform")
WRITES: Final = Workload("writes", "durable puts", (("put", 1.0),), distribution="uniform")


@dataclass(slots=True)
class BenchConfig:
    """What to run. :meth:`quick` and :meth:`full` are the presets ``duro bench`` uses."""

    backends: list[str] = field(default_factory=list)
    workloads: list[str] = field(default_factory=lambda: list(SWEEP_WORKLOADS))
    targets: bool = True
    clients: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    objects: list[int] = field(default_factory=lambda: [1, 16])
    value_sizes: list[int] = field(default_factory=lambda: [100, 4096])
    records: int = 1000
    s3_records: int = 20
    fan_out_objects: int = 256
    scan_length: int = 10
    duration: float = 2.0
    max_ops: int = 1_000_000
    target_duration: float = 2.0
    s3: bool = False
    s3_latency: float = 0.05
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_ROOT)
    keep_data: bool = False
    seed: int = 1
    quick: bool = False
    step_timeout: float = 300.0
    pad_sweep: bool = True
    cold_start: bool = True
    """Load data through a first App and time a fresh one (reads start from storage, not from
    the loader's cache); quick runs load and time in one App (their objects fit the runtime's
    activation preload anyway)."""
    """Bring fresh stores to steady state before sweep runs too (target runs always do)."""

    @classmethod
    def quick_preset(cls, **overrides: Any) -> BenchConfig:
        """Short runs over a small sweep: under a minute on sqlite + lmdb."""
        base = cls(clients=[1, 64], objects=[1], value_sizes=[100], records=200,
                   fan_out_objects=32, duration=0.3, max_ops=50_000, target_duration=0.6,
                   quick=True, step_timeout=120.0, pad_sweep=False,
                   cold_start=False)
        for k, v in overrides.items():
            setattr(base, k, v)
        return base

    @classmethod
    def full_preset(cls, **overrides: Any) -> BenchConfig:
        """The full sweep (several minutes)."""
        base = cls()
        for k, v in overrides.items():
            setattr(base, k, v)
        return base

    def to_json(self) -> dict[str, Any]:
        """The report's ``config`` (no paths of this machine)."""
        return {
            "workloads": list(self.workloads),
            "targets": self.targets,
            "clients": list(self.clients),
            "objects": list(self.objects),
            "value_sizes": list(self.value_sizes),
            "records_per_object": self.records,
            "s3_records_per_object": self.s3_records,
            "fan_out_objects": self.fan_out_objects,
            "scan_length": self.scan_length,
            "duration_s": self.duration,
            "max_ops": self.max_ops,
            "target_duration_s": self.target_duration,
            "s3_latency_s": self.s3_latency if self.s3 else None,
            "seed": self.seed,
            "quick": self.quick,
            "steady_state_pad": "targets and sweep" if self.pad_sweep else "targets only",
            "cold_start": self.cold_start,
            "key_distribution": "zipfian(0.99) for ycsb-*, uniform otherwise",
            "baselines": "same op stream, one thread, one operation per transaction",
        }


@dataclass(slots=True)
class BackendSpec:
    """One backend under test: a label, its kind and sync level, and how to get a URL."""

    label: str
    kind: str
    sync: str
    url: str | None = None
    """A fixed URL (given by the user); ``None`` means fresh files per run in the data dir."""
    raw_dir: Path | None = None
    """Where this backend's raw baseline files go (same disk as its data)."""

    @classmethod
    def from_url(cls, url: str, data_dir: Path) -> BackendSpec:
        """A spec for a user-given URL."""
        parsed = BackendURL.parse(url)
        kind = parsed.scheme.split("+", 1)[0]
        sync = parsed.options.get("sync", "full")
        raw_dir = data_dir
        if kind in ("sqlite", "lmdb") and parsed.path:
            raw_dir = (Path(parsed.path).absolute().parent
                       / f".duro-bench-raw-{uuid.uuid4().hex[:8]}")
        return cls(label=_label(kind, sync), kind=kind, sync=sync, url=url, raw_dir=raw_dir)

    @classmethod
    def embedded(cls, kind: str, sync: str = "full") -> BackendSpec:
        """A spec for fresh sqlite/lmdb files (or ``memory://``) per run."""
        return cls(label=_label(kind, sync), kind=kind, sync=sync)

    def case_url(self, case_dir: Path) -> str:
        """The URL a run in *case_dir* uses."""
        if self.url is not None:
            return self.url
        if self.kind == "memory":
            return "memory://"
        case_dir.mkdir(parents=True, exist_ok=True)
        name = "duro.db" if self.kind == "sqlite" else "duro.lmdb"
        return f"{self.kind}:///{case_dir.absolute()}/{name}?sync={self.sync}"

    @property
    def fresh(self) -> bool:
        """Whether each run gets fresh files."""
        return self.url is None

    @property
    def has_baseline(self) -> bool:
        """Whether a raw-store baseline exists for this kind."""
        return self.kind in ("sqlite", "lmdb", "s3")


def _label(kind: str, sync: str) -> str:
    if kind in ("memory", "s3") or sync == "full":
        return kind
    return f"{kind} sync={sync}"

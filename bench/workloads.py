"""YCSB-style workloads adapted to durable objects, and the op streams that drive them.

A workload is an operation mix over a set of objects, each holding ``records`` keys of
``value_size`` bytes. The same :class:`OpStream` (seeded) drives duro and the raw baselines, so
both do the same work:

- ``get``: read one key; ``put``: overwrite one key (durable before it returns);
- ``rmw``: read-modify-write one key in one transaction (rotate the value's bytes);
- ``list``: read ``scan_length`` consecutive keys from a random start (YCSB E style scan).

Key choice is zipfian (YCSB's constant 0.99) over each object's records; the object is chosen
uniformly. ``fan-out`` spreads an update-heavy mix over many objects.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "SWEEP_WORKLOADS",
    "TARGET_WORKLOADS",
    "WORKLOADS",
    "Op",
    "OpKind",
    "OpStream",
    "Workload",
    "key_name",
    "payload",
    "payload_ring",
    "rotate",
]

OpKind = Literal["get", "put", "rmw", "list"]
Op = tuple[OpKind, int, str]
"""One operation: its kind, the object index and the key (a scan's start key for ``list``)."""

ZIPF_THETA: Final = 0.99


@dataclass(frozen=True, slots=True)
class Workload:
    """An operation mix: ``mix`` pairs each op kind with its share (shares sum to 1)."""

    name: str
    description: str
    mix: tuple[tuple[OpKind, float], ...]
    distribution: Literal["zipfian", "uniform"] = "zipfian"
    fan_out: bool = False

    def __post_init__(self) -> None:
        total = sum(share for _, share in self.mix)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"workload {self.name}: shares sum to {total}, not 1")

    @property
    def writes(self) -> bool:
        """Whether the mix writes at all."""
        return any(kind in ("put", "rmw") and share > 0 for kind, share in self.mix)


WORKLOADS: Final[dict[str, Workload]] = {
    w.name: w
    for w in (
        Workload("ycsb-a", "YCSB A: 50% read, 50% update", (("get", 0.5), ("put", 0.5))),
        Workload("ycsb-b", "YCSB B: 95% read, 5% update", (("get", 0.95), ("put", 0.05))),
        Workload("ycsb-c", "YCSB C: read only", (("get", 1.0),)),
        Workload("ycsb-f", "YCSB F: 50% read, 50% read-modify-write",
                 (("get", 0.5), ("rmw", 0.5))),
        Workload("write-heavy", "100% update", (("put", 1.0),), distribution="uniform"),
        Workload("list-range", "95% range scan, 5% update", (("list", 0.95), ("put", 0.05)),
                 distribution="uniform"),
        Workload("fan-out", "50% read, 50% update, spread over many objects",
                 (("get", 0.5), ("put", 0.5)), distribution="uniform", fan_out=True),
    )
}
"""The swept workloads, by name."""

SWEEP_WORKLOADS: Final = tuple(WORKLOADS)

TARGET_WORKLOADS: Final = (
    "cached-get",
    "stub-call",
    "group-commit",
    "lone-put",
    "diskcache-set",
    "s3-group-commit",
    "s3-objects",
)
"""The special-purpose runs behind the report's target rows (see ``duro.bench.runner``)."""


def key_name(index: int) -> str:
    """The key of record *index* (fixed width, so byte order is numeric order)."""
    return f"k{index:08d}"


def payload(size: int, seed: int = 0) -> bytes:
    """A deterministic pseudo-random value of *size* bytes."""
    return random.Random(seed).randbytes(size)


def payload_ring(size: int, n: int = 16) -> list[bytes]:
    """*n* distinct values of *size* bytes: writes cycle through them, so every write changes
    the stored bytes (SQLite skips rewriting a row whose new content is identical)."""
    return [payload(size, seed=i) for i in range(n)]


def rotate(value: bytes | None, default: bytes) -> bytes:
    """The read-modify-write step: rotate the bytes by one (the same size, a new value)."""
    if not value:
        return default
    return value[1:] + value[:1]


@functools.lru_cache(maxsize=32)
def _zipf_cdf(n: int, theta: float) -> tuple[float, ...]:
    weights = [1.0 / (i**theta) for i in range(1, n + 1)]
    return tuple(itertools.accumulate(weights))


class OpStream:
    """A seeded, endless stream of :data:`Op` for one client."""

    def __init__(self, workload: Workload, *, objects: int, records: int, seed: int) -> None:
        if objects < 1 or records < 1:
            raise ValueError("objects and records must be at least 1")
        self.workload = workload
        self.objects = objects
        self.records = records
        self._rng = random.Random(seed)
        self._kinds = [kind for kind, _ in workload.mix]
        self._cum = list(itertools.accumulate(share for _, share in workload.mix))
        self._zipf = _zipf_cdf(records, ZIPF_THETA) if workload.distribution == "zipfian" else None

    def _key_index(self) -> int:
        if self._zipf is None:
            return self._rng.randrange(self.records)
        point = self._rng.random() * self._zipf[-1]
        return min(bisect.bisect_left(self._zipf, point), self.records - 1)

    def take(self, n: int) -> list[Op]:
        """The next *n* operations."""
        return [self.next() for _ in range(n)]

    def next(self) -> Op:
        """The next operation."""
        r = self._rng.random() * self._cum[-1]
        kind = self._kinds[min(bisect.bisect_right(self._cum, r), len(self._kinds) - 1)]
        obj = self._rng.randrange(self.objects) if self.objects > 1 else 0
        return kind, obj, key_name(self._key_index())

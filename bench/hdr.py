"""A small log-bucketed latency histogram (HDR-style: bounded relative error, cheap to record).

Each recorded value (nanoseconds) falls into bucket ``ceil(log(v) / log(gamma))`` with
``gamma = (1 + a) / (1 - a)``; a percentile returns the bucket's representative value, which is
within relative error ``a`` (default 1 %) of the true sample at that rank. Histograms merge by
adding counts, so each client task records into its own and the runner merges them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Histogram"]


class Histogram:
    """Latency histogram in nanoseconds with relative accuracy *accuracy* (0 < accuracy < 1)."""

    __slots__ = ("_counts", "_gamma", "_log_gamma", "accuracy", "count", "max", "min", "total")

    def __init__(self, accuracy: float = 0.01) -> None:
        if not 0.0 < accuracy < 1.0:
            raise ValueError("accuracy must be between 0 and 1")
        self.accuracy = accuracy
        self._gamma = (1.0 + accuracy) / (1.0 - accuracy)
        self._log_gamma = math.log(self._gamma)
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value_ns: int, times: int = 1) -> None:
        """Add a sample (nanoseconds; values below 1 count as 1), *times* times over."""
        v = value_ns if value_ns > 1 else 1
        index = math.ceil(math.log(v) / self._log_gamma)
        counts = self._counts
        counts[index] = counts.get(index, 0) + times
        if self.count == 0 or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        self.count += times
        self.total += v * times

    def record_many(self, values_ns: Iterable[int]) -> None:
        """Add several samples."""
        for v in values_ns:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        """Add every sample of *other* (which must have the same accuracy) into this one."""
        if other.accuracy != self.accuracy:
            raise ValueError("cannot merge histograms of different accuracy")
        if other.count == 0:
            return
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def _bucket_value(self, index: int) -> float:
        return 2.0 * self._gamma**index / (self._gamma + 1.0)

    def percentile(self, p: float) -> float:
        """The value (ns) at percentile *p* (0-100); 0.0 when empty; 100 is the exact max."""
        if not 0.0 <= p <= 100.0:
            raise ValueError("percentile must be between 0 and 100")
        if self.count == 0:
            return 0.0
        if p >= 100.0:
            return float(self.max)
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                value = self._bucket_value(index)
                return float(min(max(value, self.min), self.max))
        return float(self.max)

    def mean(self) -> float:
        """The exact mean (ns); 0.0 when empty."""
        return self.total / self.count if self.count else 0.0

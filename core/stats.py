"""Counters of what objects do: turns, cache hits and misses, flushes, batch sizes, resets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ObjectStats"]


@dataclass
class ObjectStats:
    """Counters of one object instance, or summed over a namespace."""

    activations: int = 0
    turns: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    evictions: int = 0
    flushes: int = 0
    flushed_writes: int = 0
    max_batch: int = 0
    gate_waits: int = 0
    resets: int = 0
    fenced: int = 0
    alarms: int = 0
    alarm_failures: int = 0
    forwarded: int = 0

    def add(self, other: ObjectStats) -> None:
        """Add *other*'s counters to these (``max_batch`` takes the maximum)."""
        for f in fields(self):
            if f.name == "max_batch":
                self.max_batch = max(self.max_batch, other.max_batch)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)

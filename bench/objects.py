"""The durable object the benchmarks drive, and the plain-Python baseline for stub calls.

Imported only when a benchmark runs against duro (it subclasses :class:`duro.DurableObject`).
"""

from __future__ import annotations

import builtins

import duro
from duro.bench.workloads import key_name, rotate

__all__ = ["BenchObject", "PlainObject"]


class BenchObject(duro.DurableObject):
    """Per-op methods (one stub call each) and in-object loops (many storage ops per call)."""

    async def noop(self) -> None:
        """Do nothing: the cost of a stub call (and, the first time, of activation)."""

    async def get(self, key: str) -> bytes | None:
        """Read one key."""
        value = await self.storage.get(key)
        return None if value is None else bytes(value)

    async def put(self, key: str, value: bytes) -> None:
        """Write one key; the call returns once the write is durable."""
        self.storage.put(key, value)

    async def rmw(self, key: str) -> int:
        """Read-modify-write one key in a transaction; returns the new value's size."""
        async with self.storage.transaction() as txn:
            old = await txn.get(key)
            new = rotate(None if old is None else bytes(old), b"\x00")
            txn.put(key, new)
        return len(new)

    async def scan(self, start: str, limit: int) -> int:
        """Read up to *limit* keys from *start*; returns how many were read."""
        items = await self.storage.list(start=start, limit=limit)
        return len(items)

    async def load(self, first: int, count: int, value: bytes) -> int:
        """Write records ``first .. first+count-1`` in one batch."""
        self.storage.put_many({key_name(i): value for i in range(first, first + count)})
        return count

    async def pad(self, count: int, size: int) -> int:
        """Write *count* values of *size* bytes in one batch, then delete them in another.

        This brings a fresh store to its steady state before timing (SQLite's WAL at full
        size and reused in place, LMDB's free pages available), the same as the baselines do.
        """
        filler = bytes(size)
        keys = [f"~pad{i:06d}" for i in range(count)]
        await self.storage.put_many(dict.fromkeys(keys, filler))
        await self.storage.delete_many(keys)
        return count

    async def read_loop(self, keys: builtins.list[str]) -> int:
        """Read every key in turn inside the object (cached gets); returns the hits."""
        get = self.storage.get
        hits = 0
        for key in keys:
            if await get(key) is not None:
                hits += 1
        return hits

    async def read_rounds(self, records: int, rounds: int) -> int:
        """Read keys ``0 .. records-1`` *rounds* times inside the object (cached gets).

        The keys are made here, so the stub call's arguments do not weigh on the figure.
        """
        keys = [key_name(i) for i in range(records)]
        get = self.storage.get
        hits = 0
        for _ in range(rounds):
            for key in keys:
                if await get(key) is not None:
                    hits += 1
        return hits

    async def put_loop(self, keys: builtins.list[str], values: builtins.list[bytes]) -> int:
        """Write each key and await its durability before the next (lone awaited puts)."""
        put = self.storage.put
        for key, value in zip(keys, values, strict=True):
            await put(key, value)
        return len(keys)

    async def txn_loop(self, keys: builtins.list[str]) -> int:
        """One read-modify-write transaction per key, each awaited until durable."""
        for key in keys:
            async with self.storage.transaction() as txn:
                old = await txn.get(key)
                txn.put(key, rotate(None if old is None else bytes(old), b"\x00"))
            await self.storage.sync()
        return len(keys)

    async def scan_loop(self, starts: builtins.list[str], limit: int) -> int:
        """One ``list(start=…, limit=…)`` per start key; returns the rows read."""
        rows = 0
        for start in starts:
            rows += len(await self.storage.list(start=start, limit=limit))
        return rows

    async def list(self, prefix: str, limit: int) -> int:
        """Read up to *limit* keys under *prefix*; returns how many were read."""
        items = await self.storage.list(prefix=prefix, limit=limit)
        return len(items)


class PlainObject:
    """The baseline for a stub call: a plain Python object with an async method."""

    async def noop(self) -> None:
        """Do nothing."""

"""A durable counter: run it twice and the count goes on from where it stopped.

    python examples/counter.py            # embedded default backend (sqlite:///.duro/duro.db)
    DURO_BACKEND=lmdb:///.duro/lmdb python examples/counter.py
"""

from __future__ import annotations

import asyncio

import duro


class Counter(duro.DurableObject):
    """One counter per name; 100 concurrent increments commit in a few batches."""

    async def increment(self, by: int = 1) -> int:
        n = await self.storage.get("n", 0)
        self.storage.put("n", n + by)  # applied at once; the caller sees it once durable
        return int(n + by)

    async def value(self) -> int:
        return int(await self.storage.get("n", 0))


async def main() -> None:
    async with duro.App() as app:
        counters = app.namespace(Counter)
        alice = counters.get(counters.id_from_name("alice"))
        before = await alice.value()
        results = await asyncio.gather(*(alice.increment() for _ in range(100)))
        stats = counters.stats()
        print(f"backend: {app.url}")
        print(f"alice: {before} -> {max(results)} after 100 concurrent increments "
              f"({stats.flushes} durable batches, {stats.cache_hits} cache hits)")


if __name__ == "__main__":
    asyncio.run(main())

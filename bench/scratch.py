"""Removing what a benchmark run wrote into a store the user named with ``--backend``."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["drop_namespaces"]


async def drop_namespaces(url: str, names: Iterable[str]) -> int:
    """Delete every object of the namespaces *names* on *url*; the number deleted.

    Each object is deleted through :meth:`duro.Namespace.delete_object` (state, alarm and
    metadata at once, under its lease), so a run's data leaves nothing behind.
    """
    import duro
    from duro.bench.objects import BenchObject

    deleted = 0
    async with duro.App(backend=url, listen=None) as app:
        for name in names:
            ns = app.namespace(BenchObject, name=name)
            after = None
            while page := await ns.list_objects(after=after, limit=500):
                for summary in page:
                    await ns.delete_object(summary.id)
                    deleted += 1
                after = page[-1].id
    return deleted

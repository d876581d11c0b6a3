"""Group commit across objects: one durable transaction carries many objects' writes.

Every object flushes its own batch (one flush in flight per object), but a backend with
:attr:`~duro.backends.Backend.group_commit` gets them together: while one group transaction is
in flight, the batches, lease acquires and releases that other objects queue meanwhile wait,
and the next group carries all of them (up to :data:`MAX_GROUP`). A lone write goes at once,
so grouping adds no latency; under load one sync serves many objects.

Per-object guarantees stay as they were, because :meth:`~duro.backends.Backend.commit_many`
checks each op's own epoch inside the shared transaction: a fenced object fails alone and
never sinks the others' writes; a failed transaction fails every op in it (each object then
resets: nothing of it was acknowledged). Each object's output gate opens on its own op's
future, which resolves only after the whole transaction is durable.

Backends without group commit (S3: one conditional PUT per batch) keep one call per op, run
in parallel on the App's I/O threads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from duro.backends.base import WriteOp
from duro.errors import ObjectReset

if TYPE_CHECKING:
    from duro.app import App

__all__ = ["MAX_GROUP", "Committer"]

MAX_GROUP: Final = 1024
"""Most ops in one group transaction (bounds a group's latency and memory)."""


class Committer:
    """Gathers the write ops queued by many objects of one App into group transactions."""

    __slots__ = ("_app", "_in_flight", "_queue")

    def __init__(self, app: App) -> None:
        self._app = app
        self._queue: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._in_flight = False

    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue *op*; the future resolves to its result once it is durable, or raises."""
        app = self._app
        backend = app.backend
        loop = asyncio.get_running_loop()
        if not backend.group_commit:
            return loop.run_in_executor(app.executor, op.apply, backend)
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, fut))
        if not self._in_flight:
            self._start(loop)
        return fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        self._in_flight = True
        app = self._app
        try:
            done = loop.run_in_executor(app.executor, app.backend.commit_many,
                                        [op for op, _ in group])
        except RuntimeError as exc:  # the I/O threads are shut down: the App is closed
            self._in_flight = False
            failed, self._queue = group + self._queue, []
            for _, fut in failed:
                if not fut.done():
                    fut.set_exception(ObjectReset(f"the App is closed: {exc}"))
            return
        done.add_done_callback(lambda f: self._finished(loop, group, f))

    def _finished(self, loop: asyncio.AbstractEventLoop,
                  group: list[tuple[WriteOp, asyncio.Future[Any]]],
                  done: asyncio.Future[list[object]]) -> None:
        self._in_flight = False
        if done.cancelled():
            err: BaseException | None = ObjectReset("the group commit was cancelled")
        else:
            err = done.exception()
        if err is not None:
            for _, fut in group:  # the shared transaction failed: every op fails with it
                if not fut.done():
                    fut.set_exception(err)
        else:
            for (_, fut), res in zip(group, done.result(), strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        if self._queue:
            self._start(loop)

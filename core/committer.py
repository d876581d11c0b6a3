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

Group transactions run on one dedicated :class:`WriterThread` per App, which hands each result
back with ``call_soon_threadsafe``: a leaner hop than ``run_in_executor`` (no concurrent
Future chained to an asyncio one, no pool bookkeeping). An App whose I/O runs on a custom
executor (the consistency suite's deterministic scheduler) runs them on that executor instead,
so the executor still decides when each one happens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, Protocol

from duro.backends.base import WriteOp
from duro.errors import ObjectReset

if TYPE_CHECKING:
    from duro.backends.base import Backend

__all__ = ["MAX_GROUP", "Committer", "WriterThread"]

log = logging.getLogger("duro.committer")

MAX_GROUP: Final = 1024
"""Most ops in one group transaction (bounds a group's latency and memory)."""


class WriterThread:
    """One thread that runs blocking calls in order and hands results back to their loop."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any], arg: Any,
               done: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``fn(arg)`` on the thread, then ``done(result, error)`` on *loop*."""
        self._queue.put((loop, fn, arg, done))

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``await`` ``fn()`` run on the thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)

        self.submit(loop, lambda _: fn(), None, done)
        return await fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fn, arg, done = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(arg)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never lost
                error = exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                log.warning("duro writer thread: a result arrived after its event loop closed")

    def close(self) -> None:
        """Stop after the calls already submitted."""
        self._queue.put(None)


class Writes(Protocol):
    """What a :class:`Committer` uses of its App: the backend and the executor for its I/O."""

    @property
    def backend(self) -> Backend: ...
    @property
    def executor(self) -> Executor: ...


class Committer:
    """Gathers the write ops queued by many objects of one App into group transactions."""

    __slots__ = ("_app", "_closed", "_in_flight", "_queue", "_thread")

    def __init__(self, app: Writes) -> None:
        self._app = app
        self._queue: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._in_flight = False
        self._thread: WriterThread | None = None
        self._closed = False

    def close(self) -> None:
        """Stop the writer thread (the App is shut down; no commit is in flight)."""
        self._closed = True
        if self._thread is not None:
            self._thread.close()
            self._thread = None

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
        ops = [op for op, _ in group]
        executor: Executor = app.executor  # SimApp: a custom executor
        if self._closed:
            self._in_flight = False
            failed, self._queue = group + self._queue, []
            for _, fut in failed:
                if not fut.done():
                    fut.set_exception(ObjectReset("the App is closed"))
            return
        if isinstance(executor, ThreadPoolExecutor):  # a real App: the dedicated thread
            if self._thread is None:
                self._thread = WriterThread("duro-commit")
            self._thread.submit(loop, app.backend.commit_many, ops,
                                lambda res, exc: self._finished(loop, group, res, exc))
            return
        try:
            done = loop.run_in_executor(executor, app.backend.commit_many, ops)
        except RuntimeError as exc:  # the I/O threads are shut down: the App is closed
            self._in_flight = False
            failed, self._queue = group + self._queue, []
            for _, fut in failed:
                if not fut.done():
                    fut.set_exception(ObjectReset(f"the App is closed: {exc}"))
            return

        def finished(f: asyncio.Future[list[object]]) -> None:
            if f.cancelled():
                self._finished(loop, group, None, ObjectReset("the group commit was cancelled"))
            else:
                exc = f.exception()
                self._finished(loop, group, None if exc is not None else f.result(), exc)

        done.add_done_callback(finished)

    def _finished(self, loop: asyncio.AbstractEventLoop,
                  group: list[tuple[WriteOp, asyncio.Future[Any]]],
                  results: list[object] | None, err: BaseException | None) -> None:
        self._in_flight = False
        if err is not None or results is None:
            err = err or ObjectReset("the group commit returned nothing")
            for _, fut in group:  # the shared transaction failed: every op fails with it
                if not fut.done():
                    fut.set_exception(err)
        else:
            for (_, fut), res in zip(group, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        if self._queue:
            self._start(loop)

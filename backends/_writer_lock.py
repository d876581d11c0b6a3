"""The SQL backend's writer lock, on which lease renewals go first."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["WriterLock"]


class WriterLock:
    """A mutex (``with lock:``) whose :meth:`first` waiters are served before plain ones.

    Many I/O threads queue commits on the one writer connection; a plain lock lets them
    take it again and again while a lease renewal waits. Renewals wait only for the
    transaction in progress.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._first = 0

    def __enter__(self) -> None:
        with self._cond:
            while self._held or self._first:
                self._cond.wait()
            self._held = True

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        """Hold the lock, ahead of every plain waiter."""
        with self._cond:
            self._first += 1
            try:
                while self._held:
                    self._cond.wait()
            finally:
                self._first -= 1
            self._held = True
        try:
            yield
        finally:
            self.__exit__()

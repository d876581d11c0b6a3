"""Call timeouts without a timer per call.

A stub call registers its deadline here; the App's maintenance tick (about once a second)
cancels the calls whose deadline has passed, and the call turns that cancellation into
:class:`~duro.errors.CallTimeout`. This costs a dict insert and delete per call, where
``asyncio.timeout`` schedules and cancels a loop timer (a fifth of a durable call's CPU time).
"""

from __future__ import annotations

import asyncio

__all__ = ["Deadlines"]


class Deadlines:
    """Deadlines of in-flight calls, by token."""

    def __init__(self) -> None:
        self._pending: dict[object, tuple[float, asyncio.Task[object]]] = {}
        self._expired: set[object] = set()

    def add(self, deadline: float) -> object:
        """Register the current task's deadline; returns the token to pass to the others."""
        token = object()
        task = asyncio.current_task()
        if task is not None:
            self._pending[token] = (deadline, task)
        return token

    def discard(self, token: object) -> None:
        """The call is over (answered, failed or timed out)."""
        self._pending.pop(token, None)
        self._expired.discard(token)

    def expired(self, token: object) -> bool:
        """Whether a ``CancelledError`` the call got came from its deadline (and absorb it)."""
        if token not in self._expired:
            return False
        self._expired.discard(token)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    def sweep(self, now: float) -> None:
        """Cancel every call whose deadline is at most *now*."""
        due = [t for t, (deadline, _) in self._pending.items() if deadline <= now]
        for token in due:
            _, task = self._pending.pop(token)
            self._expired.add(token)
            task.cancel()

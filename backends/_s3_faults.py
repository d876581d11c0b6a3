"""Request counting and deterministic fault injection for the S3 backend (tests, benchmarks).

Both hook into botocore's ``before-send.s3`` event, which sees every HTTP attempt after it
was signed. :class:`RequestCounts` counts the attempts that reach the server, per operation.
:class:`FaultInjector` holds a queue of planned faults; the first planned fault that matches
an attempt (operation and a substring of the URL) is consumed and applied:

- ``"409"``, ``"500"``, ``"503"``: answer with that S3 error; the request never reaches S3.
- ``"timeout_before"``: raise a read timeout without sending (the write did not land).
- ``"timeout_after"``: send the request, then raise a read timeout (the write landed, but the
  client cannot know).
- ``"slow"``: sleep ``delay`` seconds, then send normally.
- ``"hook"``: call ``hook()`` (e.g. to let another writer act in this exact window), then send
  normally: explicit interleavings without timing.

Besides planned faults, :meth:`FaultInjector.set_link` models a slow uplink: every request
body takes ``size / rate`` seconds to send; one that cannot be sent within the request's
timeout (the client's ``read_timeout``) fails with a read timeout after that long and does
not land, as a real upload cut off by the socket timeout. The decision depends only on the
size, the rate and the timeout, never on how fast the machine runs.

Only tests use the injector (``backend._faults``); with nothing planned it costs one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session

__all__ = ["FAULT_KINDS", "FaultInjector", "PlannedFault", "RequestCounts"]

FAULT_KINDS: Final = ("409", "500", "503", "timeout_before", "timeout_after", "slow", "hook")

_ERRORS: Final = {
    "409": ("ConditionalRequestConflict",
            "A conflicting operation occurred. If using PutObject you can retry the request."),
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class PlannedFault:
    """One planned fault: applied to the first attempt of *op* whose URL contains *key*."""

    kind: str
    op: str | None = None
    key: str | None = None
    delay: float = 0.0
    hook: Callable[[], object] | None = None

    def matches(self, op: str, url: str) -> bool:
        """Whether this fault applies to an attempt of *op* on *url*."""
        return (self.op is None or self.op == op) and (self.key is None or self.key in url)


class _Raw:
    """The minimal ``raw`` object botocore reads a response body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs: Any) -> list[bytes]:
        return [self._body]


class RequestCounts:
    """Thread-safe counts of the HTTP attempts sent to S3, per operation name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()

    def add(self, op: str, nbytes: int = 0) -> None:
        """Count one attempt of *op* that sent *nbytes* of body."""
        with self._lock:
            self._counts[op] += 1
            self._bytes[op] += nbytes

    def bytes_sent(self) -> Counter[str]:
        """Request body bytes sent so far, per operation (uploads: ``PutObject``)."""
        with self._lock:
            return Counter(self._bytes)

    def snapshot(self) -> Counter[str]:
        """A copy of the counts so far (subtract two snapshots to measure a span)."""
        with self._lock:
            return Counter(self._counts)

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts.clear()
            self._bytes.clear()

    @staticmethod
    def summary(counts: Counter[str]) -> dict[str, int]:
        """Group operation counts into ``put``, ``get``, ``list``, ``delete`` and ``other``."""
        out = {"put": 0, "get": 0, "list": 0, "delete": 0, "other": 0}
        for op, n in counts.items():
            if op.startswith("Put"):
                out["put"] += n
            elif op.startswith(("Get", "Head")):
                out["get"] += n
            elif op.startswith("List"):
                out["list"] += n
            elif op.startswith("Delete"):
                out["delete"] += n
            else:
                out["other"] += n
        return out


def _body_size(request: AWSPreparedRequest) -> int:
    """The request body's size in bytes (from ``Content-Length``; 0 without a body)."""
    try:
        return int(request.headers.get("Content-Length") or 0)
    except (TypeError, ValueError):
        return 0


class FaultInjector:
    """A queue of planned faults, consumed in order by matching S3 requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: list[PlannedFault] = []
        self.injected: list[tuple[str, str, str]] = []
        """``(kind, op, url)`` of every fault applied so far."""
        self._session: URLLib3Session | None = None
        self._link_rate: float | None = None

    def set_link(self, rate: float | None) -> None:
        """Model an uplink of *rate* bytes per second for request bodies (``None``: off)."""
        if rate is not None and rate <= 0:
            raise ValueError("the link rate must be positive")
        self._link_rate = rate

    def plan(self, kind: str, *, op: str | None = None, key: str | None = None,
             count: int = 1, delay: float = 0.0,
             hook: Callable[[], object] | None = None) -> None:
        """Plan *count* faults of *kind* for attempts of *op* (e.g. ``"PutObject"``) on URLs
        containing *key* (``None`` = any)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if (kind == "hook") != (hook is not None):
            raise ValueError("a hook= function goes with kind 'hook', and only with it")
        with self._lock:
            self._planned.extend(PlannedFault(kind, op, key, delay, hook) for _ in range(count))

    def clear(self) -> None:
        """Drop every planned fault that has not fired."""
        with self._lock:
            self._planned.clear()

    @property
    def pending(self) -> int:
        """Planned faults that have not fired yet."""
        with self._lock:
            return len(self._planned)

    def _take(self, op: str, url: str) -> PlannedFault | None:
        with self._lock:
            for i, fault in enumerate(self._planned):
                if fault.matches(op, url):
                    del self._planned[i]
                    self.injected.append((fault.kind, op, url))
                    return fault
        return None

    def _forward(self, request: AWSPreparedRequest) -> None:
        with self._lock:
            if self._session is None:
                self._session = URLLib3Session(timeout=30)
            session = self._session
        session.send(request).content  # noqa: B018 - read the body so the request completes

    def apply(self, op: str, request: AWSPreparedRequest, counts: RequestCounts,
              timeout: float | None = None) -> AWSResponse | None:
        """Count the attempt and apply a matching planned fault, if any; *timeout* is the
        client's read timeout (for the link model of :meth:`set_link`).

        Returns a response to short-circuit the request, or ``None`` to send it normally.
        """
        size = _body_size(request)
        rate = self._link_rate
        if rate is not None and size:
            needed = size / rate
            if timeout is not None and needed > timeout:
                time.sleep(timeout)
                counts.add(op, int(rate * timeout))
                with self._lock:
                    self.injected.append(("link-timeout", op, request.url))
                raise ReadTimeoutError(endpoint_url=request.url)
            time.sleep(needed)
        fault = self._take(op, request.url) if self._planned else None
        if fault is None:
            counts.add(op, size)
            return None
        if fault.kind in _ERRORS:
            code, message = _ERRORS[fault.kind]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>duro-fault</RequestId></Error>")
            return AWSResponse(request.url, int(fault.kind),
                               cast(Any, {"Content-Type": "application/xml"}), _Raw(body.encode()))
        if fault.kind == "timeout_before":
            raise ReadTimeoutError(endpoint_url=request.url)
        if fault.kind == "timeout_after":
            counts.add(op, size)
            self._forward(request)
            raise ReadTimeoutError(endpoint_url=request.url)
        if fault.hook is not None:
            fault.hook()
        else:
            time.sleep(fault.delay)  # "slow"
        counts.add(op, size)
        return None

    def close(self) -> None:
        """Close the forwarding session, if one was opened."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

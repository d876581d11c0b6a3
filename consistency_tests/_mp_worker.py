"""One OS process of the conformance suite's multi-process test.

Run as ``python -m duro.consistency._mp_worker URL NAMESPACE ID OWNER COMMITS LEASE_SECONDS
DEADLINE_SECONDS``. The worker opens the backend, prints ``ready``, waits for a line on stdin
(the start barrier), then repeatedly takes the shared object's lease when it is free, reads the
counter key, commits ``counter + 1`` under its epoch and releases the lease. It prints one JSON
line with what happened: the values it committed and how often it met ``LeaseHeld``,
``Fenced`` or ``BackendUnavailable``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from duro.backends import Batch, LeaseHeld, ObjectRef, open_backend
from duro.errors import BackendUnavailable, Fenced

__all__ = ["COUNTER_KEY", "main"]

COUNTER_KEY = b"counter"


def _run(url: str, ref: ObjectRef, owner: str, commits: int, lease_s: float,
         deadline_s: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"owner": owner, "committed": [], "lease_held": 0, "fenced": 0,
                             "unavailable": 0, "unavailable_messages": []}

    def unavailable(exc: BackendUnavailable) -> None:
        stats["unavailable"] += 1
        if len(stats["unavailable_messages"]) < 5:
            stats["unavailable_messages"].append(str(exc))

    backend = open_backend(url)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        stop = time.monotonic() + deadline_s
        while len(stats["committed"]) < commits and time.monotonic() < stop:
            now = time.time()
            try:
                lease = backend.acquire(ref, owner=owner, address=None, now=now,
                                        until=now + lease_s)
            except LeaseHeld:
                stats["lease_held"] += 1
                time.sleep(random.uniform(0.0005, 0.003))
                continue
            except BackendUnavailable as exc:
                unavailable(exc)
                continue
            try:
                raw = backend.get_many(ref, [COUNTER_KEY]).get(COUNTER_KEY)
                value = int(raw) + 1 if raw is not None else 1
                backend.commit(ref, lease.epoch, Batch(puts={COUNTER_KEY: str(value).encode()}))
                stats["committed"].append(value)
            except Fenced:
                stats["fenced"] += 1
            except BackendUnavailable as exc:
                unavailable(exc)
            try:
                backend.release(ref, lease.epoch)
            except BackendUnavailable as exc:
                unavailable(exc)
    finally:
        backend.close()
    return stats


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring for the arguments."""
    url, namespace, oid, owner, commits, lease_s, deadline_s = argv
    stats = _run(url, ObjectRef(namespace, oid), owner, int(commits), float(lease_s),
                 float(deadline_s))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

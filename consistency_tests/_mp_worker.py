"""One OS process of the conformance suite's multi-process test.

Run as ``python -m duro.consistency._mp_worker URL NAMESPACE ID OWNER MAX_COMMITS LEASE_SECONDS
DURATION_SECONDS HOLD_SECONDS``. The worker opens the backend, prints ``ready`` and waits for a
line on stdin (the start barrier). Then, for DURATION_SECONDS or until it made MAX_COMMITS, it
takes the shared object's lease when it is free, reads the counter key, works for up to
HOLD_SECONDS, commits ``counter + 1`` under its epoch and releases the lease. A lease about as
short as the work lets others take over mid-cycle, so some commits are fenced: that is the
point. At the end it prints one JSON line: the values it committed and how often it met
``LeaseHeld``, ``Fenced`` or ``BackendUnavailable``.
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
         duration_s: float, hold_s: float) -> dict[str, Any]:
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
        stop = time.monotonic() + duration_s
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
                time.sleep(random.uniform(0.0, hold_s))  # work while holding the lease
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
    url, namespace, oid, owner, commits, lease_s, duration_s, hold_s = argv
    stats = _run(url, ObjectRef(namespace, oid), owner, int(commits), float(lease_s),
                 float(duration_s), float(hold_s))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

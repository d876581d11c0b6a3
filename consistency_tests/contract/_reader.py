"""A reader process of the contract stage's cross-process atomicity check.

Run as ``python -m duro.consistency.contract._reader URL NAMESPACE ID NKEYS``. It opens the
backend, prints ``ready``, then reads the object's NKEYS keys ``k00..`` with ``get_many`` and
``scan`` over and over. The writer commits all keys with one value per batch, so every read
must see one value on every key. It stops once it reads the value ``stop`` everywhere (the
writer's last batch), or when its stdin closes (the writer is done), or after 60 s, and prints
one JSON line: reads, torn reads, an example, and whether it saw the last batch.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from duro.backends import ObjectRef, open_backend

__all__ = ["STOP", "main"]

STOP = b"stop"
LIMIT_S = 60.0


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code."""
    url, namespace, object_id, nkeys = argv[0], argv[1], argv[2], int(argv[3])
    ref = ObjectRef(namespace, object_id)
    keys = [b"k%02d" % i for i in range(nkeys)]
    backend = open_backend(url)
    stats: dict[str, Any] = {"reads": 0, "torn": 0, "example": None, "stopped": False}
    closed = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the writer closes our stdin
        closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        print("ready", flush=True)
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            final = closed.is_set()  # one more read after the writer is done, then stop
            got = backend.get_many(ref, keys)
            rows = backend.scan(ref, None, None)
            stats["reads"] += 2
            for seen in (sorted(got.items()), rows):
                values = {v for _, v in seen}
                if len(values) != 1 or len(seen) != nkeys:
                    stats["torn"] += 1
                    stats["example"] = stats["example"] or [[k.hex(), v.hex()] for k, v in seen]
            if got and set(got.values()) == {STOP} and len(got) == nkeys:
                stats["stopped"] = True
                break
            if final:
                break
    finally:
        backend.close()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

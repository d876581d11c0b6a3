"""Raw ``sqlite3`` doing exactly what the SQL backend's hot path does, as a baseline.

The statements are the ones :mod:`duro.backends._sql` runs (same text, same tables, same
pragmas), issued directly on a ``sqlite3`` connection with a reused cursor: the cheapest way to
run them from Python. Comparing the backend against this isolates the backend's own overhead.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["FENCE_SQL", "GET_SQL", "SYNC_PRAGMA", "UPSERT_SQL", "RawSQLite"]

FENCE_SQL: Final = (
    "UPDATE objects SET lease_until = COALESCE(?, lease_until), "
    "last_active = COALESCE(?, last_active) WHERE ns = ? AND id = ? AND epoch = ?"
)
UPSERT_SQL: Final = (
    "INSERT INTO kv (ns, id, key, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (ns, id, key) DO UPDATE SET value = excluded.value"
)
GET_SQL: Final = "SELECT value FROM kv WHERE ns = ? AND id = ? AND key = ?"
SYNC_PRAGMA: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class RawSQLite:
    """One ``sqlite3`` connection in WAL mode at a sync level, running the hot-path statements.

    The database must already hold duro's tables and the object's row (open it once with the
    SQL backend and acquire the object).
    """

    def __init__(self, path: Path, sync: str = "full") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {SYNC_PRAGMA[sync]}")
        self.cur = self.conn.cursor()

    def commit_one(self, ns: str, oid: str, epoch: int, key: bytes, value: bytes) -> None:
        """``BEGIN IMMEDIATE``; epoch-checked UPDATE (rowcount 1); UPSERT; ``COMMIT``."""
        cur = self.cur
        cur.execute("BEGIN IMMEDIATE")
        cur.execute(FENCE_SQL, (None, None, ns, oid, epoch))
        if cur.rowcount != 1:
            cur.execute("ROLLBACK")
            raise RuntimeError("fenced")
        cur.execute(UPSERT_SQL, (ns, oid, key, value))
        cur.execute("COMMIT")

    def get_one(self, ns: str, oid: str, key: bytes) -> bytes | None:
        """Point SELECT of one key."""
        cur = self.cur
        cur.execute(GET_SQL, (ns, oid, key))
        row = cur.fetchone()
        if row is None:
            return None
        value: bytes = row[0]
        return value

    def close(self) -> None:
        """Close the connection."""
        self.cur.close()
        self.conn.close()

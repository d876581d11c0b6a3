"""What differs between the SQL dialects the SQL backend runs on (SQLite and PostgreSQL).

Everything dialect-specific lives here: connection setup (SQLite's pragmas, PostgreSQL's
``synchronous_commit``), how a write transaction starts on a raw driver connection (SQLite's
``BEGIN IMMEDIATE``; PostgreSQL begins implicitly and uses row locks), the driver's parameter
style for the pre-built hot-path SQL, the insert-if-absent statement, and which driver errors
are transient. The statements themselves are the same text on both dialects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from duro.backends.base import SyncLevel
from duro.errors import ConfigError

__all__ = ["SUPPORTED", "SQLDialect", "dialect_for", "is_transient"]

SUPPORTED: Final = ("postgresql", "sqlite")

_SQLITE_SYNC: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
# PostgreSQL: "normal" and "off" both mean "consistent, but the last commits may be lost on a
# crash of the server" (synchronous_commit=off); "full" waits for the WAL flush.
_PG_SYNC: Final = {"full": "on", "normal": "off", "off": "off"}

# SQLite result codes (primary) that mean "someone else holds the lock": SQLITE_BUSY, SQLITE_LOCKED.
_SQLITE_BUSY_CODES: Final = (5, 6)
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available,
# admin shutdown / cannot connect now, and connection exceptions (class 08).
_PG_TRANSIENT: Final = ("40001", "40P01", "55P03", "57P01", "57P02", "57P03")


@dataclass(frozen=True, slots=True)
class SQLDialect:
    """The per-dialect switch of the SQL backend."""

    name: str
    begin_write: str | None
    """Raw SQL that opens a write transaction (``None``: the driver begins implicitly)."""
    begin_snapshot: str
    """Raw SQL that opens a read-only, consistent snapshot on an autocommit reader."""
    paramstyle_marker: str
    """The driver's positional parameter marker (``?`` or ``%s``)."""
    max_params: int
    """How many bound parameters one statement may carry (kept well under the driver's limit)."""
    setup: Callable[[Any], None]
    """Runs on every new driver connection (pragmas, session settings)."""
    reader_options: dict[str, Any]
    """SQLAlchemy execution options that make a reader connection autocommit."""

    def sql(self, text: str) -> str:
        """*text* written with ``?`` markers, in this driver's parameter style."""
        return text if self.paramstyle_marker == "?" else text.replace("?", self.paramstyle_marker)

    def insert_if_absent(self, table: sa.Table) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` for *table*."""
        if self.name == "sqlite":
            return sqlite_dialect.insert(table).on_conflict_do_nothing()
        return pg_dialect.insert(table).on_conflict_do_nothing()


def _sqlite_setup(sync: SyncLevel, busy_ms: int) -> Callable[[Any], None]:
    level = _SQLITE_SYNC[sync]

    def setup(dbapi_conn: Any) -> None:
        # Take transaction control away from the sqlite3 module: we issue BEGIN [IMMEDIATE]
        # ourselves (SQLAlchemy docs, "Transactions with SQLite and the sqlite3 driver").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            row = cur.execute("PRAGMA journal_mode = WAL").fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise ConfigError(
                    f"SQLite refused WAL mode (journal_mode is {row[0] if row else None!r}); "
                    "duro needs WAL: put the database on a local file system"
                )
            cur.execute(f"PRAGMA synchronous = {level}")
        finally:
            cur.close()

    return setup


def _pg_setup(sync: SyncLevel) -> Callable[[Any], None]:
    value = _PG_SYNC[sync]

    def setup(dbapi_conn: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"SET synchronous_commit TO {value}")
            finally:
                cur.close()
        finally:
            dbapi_conn.autocommit = autocommit

    return setup


def dialect_for(name: str, *, sync: SyncLevel, busy_timeout: float) -> SQLDialect:
    """The switch for SQLAlchemy dialect *name*; :class:`ConfigError` if duro does not run on it."""
    if name == "sqlite":
        return SQLDialect(
            name="sqlite",
            begin_write="BEGIN IMMEDIATE",
            begin_snapshot="BEGIN",
            paramstyle_marker="?",
            max_params=900,
            setup=_sqlite_setup(sync, int(busy_timeout * 1000)),
            reader_options={},
        )
    if name == "postgresql":
        return SQLDialect(
            name="postgresql",
            begin_write=None,
            begin_snapshot="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            paramstyle_marker="%s",
            max_params=10_000,
            setup=_pg_setup(sync),
            reader_options={"isolation_level": "AUTOCOMMIT"},
        )
    raise ConfigError(
        f"the SQL backend runs on {' and '.join(SUPPORTED)}, not {name}: "
        "use a sqlite:/// or postgresql+psycopg:// URL"
    )


def is_transient(exc: BaseException) -> bool:
    """Whether driver error *exc* means "busy or unreachable, retry later"."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _SQLITE_BUSY_CODES
    text = str(exc).lower()
    if "database is locked" in text or "database table is locked" in text:
        return True
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in _PG_TRANSIENT or sqlstate.startswith("08")
    # psycopg raises OperationalError (no SQLSTATE) when the connection is lost.
    return type(exc).__name__ == "OperationalError" and "sqlite" not in type(exc).__module__

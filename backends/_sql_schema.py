"""The SQL backend's tables, as SQLAlchemy Core objects (one definition for every dialect).

- ``duro_meta(name, value)``: the storage-format version (and room for more settings).
- ``objects(ns, id, ...)``: one row per object ever acquired: the lease (epoch, owner, address,
  lease_until), the alarm (indexed, so due alarms are found without a scan), the registry
  metadata (name, last_active) and the ``deleted`` tombstone flag (the epoch survives deletion,
  so a stale owner stays fenced).
- ``kv(ns, id, key, value)``: the storage rows; keys are binary so that SQLite and PostgreSQL
  both order them bytewise (UTF-8 order for the encoded keys). ``WITHOUT ROWID`` on SQLite.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

__all__ = ["CLUSTER_KEY", "FORMAT_KEY", "kv", "meta", "metadata", "objects"]

FORMAT_KEY: Final = "format_version"
"""``duro_meta.name`` of the row holding the storage-format version."""
CLUSTER_KEY: Final = "cluster_key"
"""``duro_meta.name`` of the row holding the cluster key (hex)."""

# Text compared and sorted by code point on every dialect: SQLite's default BINARY collation
# already does that; PostgreSQL needs the "C" collation (the database default may be a locale).
_Text = sa.String().with_variant(sa.String(collation="C"), "postgresql")
_Id = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")

metadata: Final = sa.MetaData()

meta: Final = sa.Table(
    "duro_meta",
    metadata,
    sa.Column("name", _Text, primary_key=True),
    sa.Column("value", _Text, nullable=False),
)

objects: Final = sa.Table(
    "objects",
    metadata,
    sa.Column("ns", _Text, primary_key=True),
    sa.Column("id", _Id, primary_key=True),
    sa.Column("name", _Text, nullable=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("owner", _Text, nullable=True),
    sa.Column("address", _Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=False),
    sa.Column("alarm_at", sa.Double, nullable=True),
    sa.Column("last_active", sa.Double, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sqlite_with_rowid=False,
)

sa.Index(
    "objects_alarm_at",
    objects.c.alarm_at,
    sqlite_where=objects.c.alarm_at.is_not(None),
    postgresql_where=objects.c.alarm_at.is_not(None),
)

kv: Final = sa.Table(
    "kv",
    metadata,
    sa.Column("ns", _Text, primary_key=True),
    sa.Column("id", _Id, primary_key=True),
    sa.Column("key", sa.LargeBinary, primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

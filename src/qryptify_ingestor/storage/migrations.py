"""Schema migrations: the numbered SQL files, applied once each, recorded, under a lock.

The files live in the package (`storage/sql/`, so an installed wheel has them); `sql/` at the
repository root is a symlink to that folder, which docker-compose mounts as the init dir of the
official image (it runs every `*.sql` with psql on first start). Every file is idempotent (it
may already have run as an init script), so a file whose checksum changed is simply applied
again and its record updated.

The whole run is one transaction holding `pg_advisory_xact_lock`: two processes starting at once
serialize, and the second finds everything applied.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

# Arbitrary constant naming "the qryptify schema migration" among advisory locks.
MIGRATION_LOCK_ID = 0x71727970_74696679  # b"qryptify"
_FILE_RE = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
SQL_DIR_ENV = "QRYPTIFY_SQL_DIR"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """What `migrate()` found: the newest schema version and whether TimescaleDB is in use."""

    version: int
    timescaledb: bool


def sql_dir() -> Traversable:
    """The folder holding the migrations: $QRYPTIFY_SQL_DIR, the package copy, or `<repo>/sql`."""
    override = os.environ.get(SQL_DIR_ENV)
    if override:
        return Path(override)
    packaged = resources.files(__package__ or "qryptify_ingestor.storage") / "sql"
    if packaged.is_dir() and any(_FILE_RE.match(f.name) for f in packaged.iterdir()):
        return packaged
    return Path(__file__).resolve().parents[3] / "sql"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migrations in `directory` (default `sql_dir()`), ordered by version."""
    folder = sql_dir() if directory is None else directory
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        m = _FILE_RE.match(entry.name)
        if not m:
            continue
        version = int(m.group(1))
        if version in found:
            raise RuntimeError(f"two migrations numbered {version} in {folder}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise RuntimeError(f"no migrations (NNN_name.sql) found in {folder}")
    return [found[v] for v in sorted(found)]


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

_RECORD = """
INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)
ON CONFLICT (version) DO UPDATE
SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()
"""

_TIMESCALEDB_IN_USE = """
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
   AND EXISTS (SELECT 1 FROM timescaledb_information.hypertables
               WHERE hypertable_name = 'candlesticks' AND hypertable_schema = current_schema())
"""


async def apply_migrations(
    conn: AsyncConnection[Any], migrations: list[Migration] | None = None
) -> SchemaInfo:
    """Apply the migrations not yet recorded (or changed) in one locked transaction."""
    todo = load_migrations() if migrations is None else migrations
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        await conn.execute(_CREATE_LEDGER)
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
        applied = {int(v): str(c) for v, c in await cur.fetchall()}
        for m in todo:
            if applied.get(m.version) == m.checksum:
                continue
            # No parameters: psycopg sends the file as one simple query, several statements.
            await conn.execute(m.sql.encode())
            await conn.execute(_RECORD, (m.version, m.name, m.checksum))
        return await schema_info(conn)


async def schema_info(conn: AsyncConnection[Any]) -> SchemaInfo:
    """The recorded schema version (0 if never migrated) and whether TimescaleDB is in use."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    version = 0
    if row is not None and row[0]:
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    timescaledb = False
    if await cur.fetchone() is not None:
        cur = await conn.execute(_TIMESCALEDB_IN_USE)
        row = await cur.fetchone()
        timescaledb = bool(row and row[0])
    return SchemaInfo(version=version, timescaledb=timescaledb)

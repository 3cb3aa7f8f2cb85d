"""Schema migrations: packaging, idempotence, concurrency, and psql (docker init) compatibility."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import psycopg
import pytest

from qryptify_ingestor.storage.migrations import apply_migrations, load_migrations, sql_dir
from tests.pg_plugin import PG_BINDIR

REPO_SQL = Path(__file__).resolve().parents[1] / "sql"
PACKAGE_SQL = Path(__file__).resolve().parents[1] / "src/qryptify_ingestor/storage/sql"


def test_repo_sql_is_the_packaged_sql() -> None:
    """`sql/` (docker-compose's init dir, the schema contract) is the package's SQL folder
    itself, so the migrations have one source and ship in the wheel."""
    assert REPO_SQL.is_symlink() and REPO_SQL.resolve() == PACKAGE_SQL.resolve()
    assert sorted(p.name for p in REPO_SQL.glob("*.sql"))[0] == "001_init.sql"


def test_migrations_are_numbered_and_found() -> None:
    """The runner finds the numbered files in order, starting with the 001 contract."""
    migrations = load_migrations()
    assert [m.version for m in migrations][:2] == [1, 2]
    assert migrations[0].name == "init"
    assert any(p.name == "001_init.sql" for p in sql_dir().iterdir())


async def _ledger(url: str) -> list[tuple[int, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        return await cur.fetchall()


async def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    """A second run applies nothing and leaves the ledger as it was."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        first = await apply_migrations(conn)
        ledger = await _ledger(database_url)
        assert await apply_migrations(conn) == first
    assert await _ledger(database_url) == ledger
    assert [v for v, _ in ledger] == [m.version for m in load_migrations()]


async def test_concurrent_migrations_serialize(database_url: str) -> None:
    """Several processes migrating one fresh database at once all succeed with the same result."""
    conns = [await psycopg.AsyncConnection.connect(database_url, autocommit=True) for _ in range(3)]
    try:
        infos = await asyncio.gather(*(apply_migrations(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert len(set(infos)) == 1
    assert infos[0].version == 2
    assert len(await _ledger(database_url)) == 2


async def test_changed_file_is_reapplied(database_url: str) -> None:
    """An idempotent file whose text changed is applied again and its checksum updated."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        migrations = load_migrations()
        await apply_migrations(conn, migrations)
        extra = migrations[0].__class__(
            1, "init", migrations[0].sql + "\nCREATE TABLE IF NOT EXISTS probe (x int);\n"
        )
        await apply_migrations(conn, [extra, *migrations[1:]])
        cur = await conn.execute("SELECT to_regclass('probe') IS NOT NULL")
        assert await cur.fetchone() == (True,)
    assert dict(await _ledger(database_url))[1] == extra.checksum


def test_sql_files_run_as_docker_init_scripts_then_migrator(
    database_url: str, db_mode: str
) -> None:
    """sql/*.sql run cleanly with psql (as the image's init dir does), twice, then the migrator."""
    psql = PG_BINDIR / "psql"
    if not psql.exists():
        pytest.skip(f"{psql} not found")
    for _ in range(2):
        for f in sorted(REPO_SQL.glob("*.sql")):
            done = subprocess.run(
                [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-f", f],
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        info = asyncio.run(_migrate(database_url))
        assert info.timescaledb is (db_mode == "timescaledb")
        cur = conn.execute("SELECT count(*) FROM schema_migrations")
        assert cur.fetchone() == (2,)


async def _migrate(url: str):  # type: ignore[no-untyped-def]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await apply_migrations(conn)

"""One `qryptify run` per database: a session advisory lock, and a standby for the second.

Two ingestors on one database would not corrupt anything (every write is an idempotent upsert
and the resume point only moves over contiguous candles), but they would double the REST weight
and the WebSocket connections from one IP. So `run` takes a PostgreSQL session-level advisory
lock on a dedicated connection. A second `run` logs who holds it and waits as a hot standby; it
takes over when the first one stops or dies (PostgreSQL releases a session lock when the session
ends, including on kill -9 once the server notices the dead connection).

While running, the holder checks its lock connection every few seconds. If that connection was
lost (database restart) it reconnects and takes the lock again; if meanwhile a standby took it,
this process stops with `LockLost` so that exactly one ingestor stays active.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from qryptify_ingestor.errors import DatabaseUnavailable, FatalError
from qryptify_ingestor.storage.postgres import dsn_location

log = logging.getLogger(__name__)

# An arbitrary 32-bit key ("qry"), so pg_locks shows it as classid 0 / objid RUN_LOCK_KEY.
RUN_LOCK_KEY = 0x717279
APPLICATION_PREFIX = "qryptify-run"


class LockLost(FatalError):
    """Another ingestor holds the run lock now; this one stops."""


class RunLock:
    """The database-wide run lock (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        poll_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._dsn = dsn
        self._poll_s = poll_s
        self._sleep = sleep
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._name = f"{APPLICATION_PREFIX} pid={os.getpid()} host={socket.gethostname()}"

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, application_name=self._name[:63], connect_timeout=5
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"database {dsn_location(self._dsn)} unavailable for the run lock: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from exc

    async def _try(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (RUN_LOCK_KEY,))
        ).fetchone()
        return bool(row and row[0])

    async def holder(self, conn: psycopg.AsyncConnection[Any]) -> str:
        """Who holds the lock, as shown by pg_stat_activity (application name, address)."""
        cur = await conn.execute(
            """
            SELECT a.application_name, coalesce(host(a.client_addr), 'local'), a.pid
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s
            """,
            (RUN_LOCK_KEY,),
        )
        row = await cur.fetchone()
        if row is None:
            return "another process"
        return f"{row[0] or 'a client'} (from {row[1]}, server pid {row[2]})"

    async def acquire(self) -> None:
        """Take the lock, waiting as a standby (with a log line) while another run holds it."""
        conn = await self._connect()
        announced = False
        while not await self._try(conn):
            if not announced:
                log.warning(
                    "another qryptify run is already ingesting into %s: %s. This process waits "
                    "as a standby and takes over when that one stops (Ctrl+C to quit).",
                    dsn_location(self._dsn),
                    await self.holder(conn),
                )
                announced = True
            await self._sleep(self._poll_s)
        if announced:
            log.info("the other qryptify run stopped: this process takes over")
        self._conn = conn

    async def hold(self) -> None:
        """Keep the lock (run in the TaskGroup): re-take it after a connection loss."""
        while True:
            await self._sleep(self._poll_s)
            try:
                if self._conn is None or self._conn.closed:
                    raise psycopg.OperationalError("lock connection closed")
                await self._conn.execute("SELECT 1")
                continue
            except psycopg.OperationalError:
                pass
            await self._reacquire()

    async def _reacquire(self) -> None:
        log.warning("lost the run-lock connection to %s; re-taking it", dsn_location(self._dsn))
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        while True:
            try:
                conn = await self._connect()
                break
            except DatabaseUnavailable:
                await self._sleep(self._poll_s)
        if not await self._try(conn):
            who = await self.holder(conn)
            await conn.close()
            raise LockLost(
                f"while the database was unreachable another qryptify run took over {who}; "
                "this process stops so that exactly one ingests"
            )
        self._conn = conn

    async def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()  # ending the session releases the lock
        self._conn = None

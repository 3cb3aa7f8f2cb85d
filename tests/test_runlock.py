"""One `qryptify run` per database: the second waits as a standby and takes over."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from qryptify_ingestor.storage.runlock import LockLost, RunLock

pytestmark = pytest.mark.db


async def test_second_run_waits_as_standby_then_takes_over(
    plain_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While one run holds the lock a second waits, saying who holds it; it takes over after."""
    first = RunLock(plain_database_url, poll_s=0.05)
    second = RunLock(plain_database_url, poll_s=0.05)
    await first.acquire()
    with caplog.at_level(logging.WARNING, logger="qryptify_ingestor.storage.runlock"):
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.3)
        assert not waiting.done()
    assert "already ingesting" in caplog.text and "qryptify-run pid=" in caplog.text
    await first.release()
    await asyncio.wait_for(waiting, 5)
    await second.release()


async def test_holder_retakes_the_lock_after_losing_its_connection(plain_database_url: str) -> None:
    """A holder whose lock session is terminated re-takes the lock when no one else has it."""
    lock = RunLock(plain_database_url, poll_s=0.05)
    await lock.acquire()
    holding = asyncio.create_task(lock.hold())
    with psycopg.connect(plain_database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'qryptify-run%%'"
        )
        await asyncio.sleep(0.5)
        held = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchone()
    assert held == (1,)
    assert not holding.done()
    holding.cancel()
    await lock.release()


async def test_holder_stops_when_a_standby_took_over(plain_database_url: str) -> None:
    """If a standby took the lock while the holder was cut off, the holder stops (LockLost)."""
    first = RunLock(plain_database_url, poll_s=0.5)  # the standby polls faster: it wins the race
    second = RunLock(plain_database_url, poll_s=0.02)
    await first.acquire()
    holding = asyncio.create_task(first.hold())
    standby = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.1)
    with psycopg.connect(plain_database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
            " WHERE l.locktype = 'advisory' AND l.granted"
        )
    await asyncio.wait_for(standby, 5)
    with pytest.raises(LockLost, match="took over"):
        await asyncio.wait_for(holding, 5)
    await second.release()
    await first.release()

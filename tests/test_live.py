"""Live: closed candles over the simulator's WebSocket, through drops, stalls and odd finals.

The simulator's clock is controlled: tests jump it forward to close candles, so each test takes
seconds. Every test ends with the table equal to the simulator's closed candles for the run,
nothing unclosed stored, and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
import pytest

from qryptify_ingestor.binance.stream import KlineStreams
from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS, StreamKey
from qryptify_ingestor.sim import Simulator
from tests.ingest_plugin import (
    Assembled,
    MakeIngestor,
    last_closed,
    stored_rows,
    sync_last,
    truth_diff,
)
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.db

KEYS = [StreamKey("BTCUSDT", "1m"), StreamKey("ETHUSDT", "1m"), StreamKey("SOLUSDT", "3m")]


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def caught_up(sim: Simulator, dsn: str, keys: Sequence[StreamKey]) -> Callable[[], bool]:
    def check() -> bool:
        now = sim.clock.now_ms()
        return all(sync_last(dsn, k) == last_closed(k.interval, now) for k in keys)

    return check


@contextlib.asynccontextmanager
async def following(
    a: Assembled, keys: Sequence[StreamKey], **stream_kwargs: Any
) -> AsyncIterator[KlineStreams]:
    """Run `Ingestor.follow` in the background; stop it at the end (as SIGTERM would)."""
    sim = a.sim
    stream_kwargs.setdefault("silence_timeout_s", 3.0)
    stream_kwargs.setdefault("stream_close_margin_s", 600.0)
    stream_kwargs.setdefault("backoff_base_s", 0.05)
    stream_kwargs.setdefault("backoff_max_s", 0.3)
    streams = KlineStreams(
        sim.ws_url, keys, exchange_clock=lambda: sim.clock.now_ms() / 1000, **stream_kwargs
    )
    task = asyncio.create_task(a.ingestor.follow(streams, keys))
    try:
        await wait_for(caught_up(sim, a.dsn, keys), 15, "backfill and hand-over")
        yield streams
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_candles(sim: Simulator, minutes: int, dsn: str, keys: Sequence[StreamKey]) -> None:
    """Jump the exchange clock minute by minute and wait for the rows to land."""
    for _ in range(minutes):
        sim.clock.advance(MINUTE_MS)
        await wait_for(caught_up(sim, dsn, keys), 10, "closes to land")


def assert_exact(sim: Simulator, dsn: str, keys: Sequence[StreamKey], start: int) -> None:
    now = sim.clock.now_ms()
    diff = truth_diff(sim, dsn, keys, start, now + HOUR_MS)
    assert diff.clean, diff
    for key in keys:
        assert all(r[6] < now for r in stored_rows(dsn, key)), "an unclosed candle was stored"


async def test_closes_land_within_the_interval(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """After backfill, each candle closed on the stream is committed, with no REST involved."""
    start = sim.clock.now_ms() - 2 * HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS):
        requests = sim.stats.requests
        await close_candles(sim, 4, database_url, KEYS)
        assert sim.stats.requests - requests <= len(KEYS)  # live needs (almost) no REST
    assert_exact(sim, database_url, KEYS, start)


async def test_notify_after_commit(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Each commit of closed candles sends NOTIFY candles naming symbol, interval and open time."""
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    key = [StreamKey("BTCUSDT", "1m")]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN candles")
        async with following(a, key):
            sim.clock.advance(MINUTE_MS)
            expected = last_closed("1m", sim.clock.now_ms())
            async with asyncio.timeout(10):
                async for note in listener.notifies():
                    payload = json.loads(note.payload)
                    if payload["symbol"] == "BTCUSDT" and payload["ts"] == expected:
                        break
    assert payload["interval"] == "1m"


async def test_connection_dropped_mid_candle(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A connection dropped mid-candle reconnects; candles closed meanwhile are filled."""
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS):
        sim.faults.ws_drop(abrupt=True)
        sim.clock.advance(2 * MINUTE_MS)  # closes while (maybe) disconnected
        await wait_for(caught_up(sim, database_url, KEYS), 10, "refill after drop")
        await close_candles(sim, 2, database_url, KEYS)
    assert_exact(sim, database_url, KEYS, start)


async def test_silent_stall_is_detected_and_filled(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A connection that stays open but sends nothing is replaced; the hole is filled from REST."""
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS, silence_timeout_s=1.0) as streams:
        sim.faults.ws_stall(2.5)
        sim.clock.advance(MINUTE_MS)
        await wait_for(caught_up(sim, database_url, KEYS), 10, "recovery from the stall")
        assert streams.statistics().stalls >= 1
        await close_candles(sim, 1, database_url, KEYS)
    assert_exact(sim, database_url, KEYS, start)


async def test_duplicate_and_late_finals_are_harmless(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Duplicate finals and a final arriving after the next candle's first update store once."""
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS):
        sim.faults.ws_duplicate_finals(count=3)
        await close_candles(sim, 1, database_url, KEYS)
        sim.faults.ws_late_finals(count=3)
        sim.clock.advance(MINUTE_MS)
        await asyncio.sleep(0.6)  # the late finals follow the next candle's first update
        await wait_for(caught_up(sim, database_url, KEYS), 10, "late finals")
        await close_candles(sim, 1, database_url, KEYS)
    assert_exact(sim, database_url, KEYS, start)


async def test_forced_lifetime_disconnect(
    make_sim: MakeSim, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """The server's forced disconnect (Binance's 24 h cut, shortened) loses nothing."""
    sim = await make_sim(ws_lifetime_s=1.5)
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS):
        await asyncio.sleep(2.0)  # past the lifetime: the server cuts every connection
        await close_candles(sim, 2, database_url, KEYS)
    assert sim.stats.ws_forced_closes >= 1
    assert_exact(sim, database_url, KEYS, start)


async def test_stream_with_no_data_is_filled_from_rest(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A stream that never delivers on the WebSocket is kept complete from REST by the lag
    watchdog, while the other streams flow normally."""
    sim.faults.ws_silent("SOLUSDT")
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=1)
    async with following(a, KEYS):
        sim.clock.advance(3 * MINUTE_MS + 5_000)
        await wait_for(caught_up(sim, database_url, KEYS), 15, "REST fill of the silent stream")
    assert_exact(sim, database_url, KEYS, start)


async def test_restart_during_live_fills_the_downtime(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Stopping live and starting again later fills every candle closed while it was down."""
    start = sim.clock.now_ms() - HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(a, KEYS):
        await close_candles(sim, 1, database_url, KEYS)
    sim.clock.advance(7 * MINUTE_MS)  # down for seven minutes
    b = await make_ingestor(sim, database_url, start_ms=start, close_margin_s=600)
    async with following(b, KEYS):
        await close_candles(sim, 1, database_url, KEYS)
    assert_exact(sim, database_url, KEYS, start)

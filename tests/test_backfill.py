"""Backfill against the simulator and a real PostgreSQL (plain and TimescaleDB)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS, Interval, StreamKey, datetime_to_ms
from qryptify_ingestor.sim import Simulator
from tests.ingest_plugin import MakeIngestor, last_closed, stored_rows, sync_last, truth_diff
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.db
DAY_MS = 24 * HOUR_MS


def keys(*pairs: str) -> list[StreamKey]:
    return [StreamKey(*p.split()) for p in pairs]


async def test_backfill_equals_the_exchange(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """After backfill the table equals the exchange's closed candles, value for value,
    including a symbol listed after start_date (clamped to its real first candle)."""
    from datetime import UTC, datetime

    start = datetime_to_ms(datetime(2026, 6, 15, tzinfo=UTC))  # NOVAUSDT lists 2026-06-16 08:00
    wanted = keys("BTCUSDT 4h", "ETHUSDT 1d", "NOVAUSDT 4h", "1000PEPEUSDT 1w", "BTCUSDT 1M")
    a = await make_ingestor(sim, database_url, start_ms=start)
    results = await a.ingestor.backfill(wanted)
    now = sim.clock.now_ms()
    diff = truth_diff(sim, database_url, wanted, start, now)
    assert diff.clean, diff
    nova = stored_rows(database_url, StreamKey("NOVAUSDT", "4h"))
    listed = Interval("4h").ceil(sim.market.specs["NOVAUSDT"].first_ms)
    assert nova[0][0] == listed
    state = await a.storage.sync_state(StreamKey("NOVAUSDT", "4h"))
    assert state is not None and state.listing_ms == listed and state.first_ms == listed
    for key in wanted:
        assert results[key].failed == []
        assert sync_last(database_url, key) == last_closed(key.interval, now)


async def test_recent_minutes_across_many_pages(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """1m history spanning many 499-row pages lands complete, and no open candle is stored."""
    wanted = keys("BTCUSDT 1m", "ETHUSDT 1m", "SOLUSDT 5m")
    start = sim.clock.now_ms() - 2 * DAY_MS - 17 * MINUTE_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill(wanted)
    now = sim.clock.now_ms()
    assert truth_diff(sim, database_url, wanted, start, now + DAY_MS).clean
    for key in wanted:
        rows = stored_rows(database_url, key)
        assert all(r[6] < now for r in rows), "an open candle was stored"
        assert len(rows) == Interval(key.interval).count(
            Interval(key.interval).ceil(start), Interval(key.interval).floor(now)
        )


async def test_second_backfill_makes_at_most_one_request_per_stream(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Right after a complete backfill, a second one costs at most one request per stream."""
    wanted = keys("BTCUSDT 1m", "ETHUSDT 15m", "BNBUSDT 1h")
    start = sim.clock.now_ms() - DAY_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill(wanted)
    before = sim.stats.requests
    sim.clock.advance(MINUTE_MS)  # one more 1m candle closes
    b = await make_ingestor(sim, database_url, start_ms=start)
    await b.ingestor.backfill(wanted)
    assert sim.stats.requests - before <= len(wanted)
    assert truth_diff(sim, database_url, wanted, start, sim.clock.now_ms()).clean


async def test_resume_after_interruption_refetches_nothing_stored(
    make_sim: MakeSim, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A backfill stopped mid-way resumes from what is stored: exact rows, no duplicates,
    and the pages already committed are not fetched again."""
    sim = await make_sim()
    sim.faults.rest_latency(30)
    wanted = keys("BTCUSDT 1m", "ETHUSDT 1m")
    start = sim.clock.now_ms() - 3 * DAY_MS
    a = await make_ingestor(sim, database_url, start_ms=start, max_requests_in_flight=2)
    task = asyncio.create_task(a.ingestor.backfill(wanted))
    async with asyncio.timeout(30):
        while sum(len(stored_rows(database_url, k)) for k in wanted) < 2000:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resumed_from = {k: sync_last(database_url, k) for k in wanted}
    assert all(v is not None for v in resumed_from.values())
    sim.faults.clear()
    await asyncio.sleep(0.3)  # requests the stopped run left in flight finish server-side
    rows_before = sim.stats.klines_rows_served
    b = await make_ingestor(sim, database_url, start_ms=start)
    await b.ingestor.backfill(wanted)
    now = sim.clock.now_ms()
    assert truth_diff(sim, database_url, wanted, start, now).clean
    total = sum(
        Interval("1m").count(Interval("1m").ceil(start), Interval("1m").floor(now)) for _ in wanted
    )
    stored_at_stop = sum(
        Interval("1m").count(Interval("1m").ceil(start), resumed_from[k] + MINUTE_MS)
        for k in wanted
    )
    # The second run fetched only what was missing (plus at most one probe row per stream).
    assert sim.stats.klines_rows_served - rows_before <= total - stored_at_stop + len(wanted)


async def test_exchange_gap_recorded_once_and_not_refetched(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A hole in Binance's own history is recorded as an exchange gap, the resume point moves
    past it, and the next run does not fetch it again."""
    now = sim.clock.now_ms()
    gap_start = Interval("1m").floor(now - 20 * HOUR_MS)
    gap_end = gap_start + 3 * HOUR_MS
    sim.faults.exchange_gap(gap_start, gap_end, symbol="BTCUSDT")
    wanted = keys("BTCUSDT 1m", "ETHUSDT 1m")
    start = now - DAY_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    results = await a.ingestor.backfill(wanted)
    assert results[StreamKey("BTCUSDT", "1m")].gaps == [(gap_start, gap_end)]
    assert results[StreamKey("ETHUSDT", "1m")].gaps == []
    assert truth_diff(sim, database_url, wanted, start, sim.clock.now_ms()).clean
    with psycopg.connect(database_url) as conn:
        gaps = conn.execute(
            "SELECT symbol, (extract(epoch FROM gap_start)*1000)::bigint,"
            " (extract(epoch FROM gap_end)*1000)::bigint FROM exchange_gaps"
        ).fetchall()
    assert gaps == [("BTCUSDT", gap_start, gap_end)]
    assert sync_last(database_url, StreamKey("BTCUSDT", "1m")) == last_closed("1m", now)
    before = sim.stats.requests
    b = await make_ingestor(sim, database_url, start_ms=start)
    again = await b.ingestor.backfill(wanted)
    assert sim.stats.requests == before  # nothing closed since: nothing to fetch, gap included
    assert again[StreamKey("BTCUSDT", "1m")].gaps == []


async def test_malformed_row_is_never_stored_and_reported(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A page that stays malformed writes nothing from that page, is recorded as a failed
    range, and the other streams and pages still complete; the resume point stays before it."""
    now = sim.clock.now_ms()
    start = Interval("1m").ceil(now - 3 * HOUR_MS)
    bad = start + 10 * MINUTE_MS
    sim.faults.malformed("BTCUSDT", "1m", bad, kind="high_below_low")
    wanted = keys("BTCUSDT 1m", "ETHUSDT 1m")
    a = await make_ingestor(sim, database_url, start_ms=start)
    results = await a.ingestor.backfill(wanted)
    btc = StreamKey("BTCUSDT", "1m")
    assert len(results[btc].failed) == 1
    fail_start, fail_end, reason = results[btc].failed[0]
    assert fail_start <= bad < fail_end
    assert "OHLC" in reason
    stored = {r[0] for r in stored_rows(database_url, btc)}
    assert not any(fail_start <= t < fail_end for t in stored)
    assert sync_last(database_url, btc) is None or sync_last(database_url, btc) < fail_start
    assert truth_diff(sim, database_url, [StreamKey("ETHUSDT", "1m")], start, now).clean
    with psycopg.connect(database_url) as conn:
        failed = conn.execute("SELECT symbol, reason FROM failed_ranges").fetchall()
    assert [f[0] for f in failed] == ["BTCUSDT"]


async def test_rate_limit_storm_and_latency_earn_no_ban(
    make_sim: MakeSim, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Through a 429 storm and a latency spike: zero 418s, data complete."""
    sim = await make_sim(weight_limit=400, weight_window_ms=2_000)
    sim.faults.rate_limit_storm(count=3)
    sim.faults.rest_latency(400, count=10)
    wanted = keys("BTCUSDT 1m", "ETHUSDT 1m", "BNBUSDT 5m")
    start = sim.clock.now_ms() - DAY_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill(wanted)
    assert sim.stats.rate_limited_429 >= 3
    assert sim.stats.banned_418 == 0
    assert truth_diff(sim, database_url, wanted, start, sim.clock.now_ms()).clean


async def test_server_errors_and_resets_are_retried(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """5xx answers and connections reset mid-body are retried until the data is complete."""
    sim.faults.rest_errors(count=4, status=502)
    sim.faults.rest_reset(count=3)
    wanted = keys("XRPUSDT 1m")
    start = sim.clock.now_ms() - DAY_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill(wanted)
    assert sim.stats.errors_5xx >= 4 and sim.stats.resets >= 3
    assert truth_diff(sim, database_url, wanted, start, sim.clock.now_ms()).clean

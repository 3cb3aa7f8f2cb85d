"""`repair`: what verify finds missing is re-fetched exactly; old exchange gaps are re-checked."""

from __future__ import annotations

import psycopg
import pytest

from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS, Interval, StreamKey
from qryptify_ingestor.sim import Simulator
from qryptify_ingestor.storage.verify import holes, verify
from tests.ingest_plugin import Assembled, MakeIngestor, last_closed, sync_last, truth_diff

pytestmark = pytest.mark.db

BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "5m")


async def run_repair(a: Assembled, keys: list[StreamKey], recheck_before_ms: int = 0) -> dict:
    async def find(key: StreamKey) -> list[tuple[int, int, bool]]:
        state = await a.storage.sync_state(key)
        if state is None or state.first_ms is None or state.last_ms is None:
            return []  # nothing contiguous stored yet: the backfill pass covers it
        end = Interval(key.interval).next_open(state.last_ms)
        found = await holes(a.dsn, key, state.first_ms, end)
        return [
            (r.start, r.end, state.first_ms < r.start and r.end <= state.last_ms) for r in found
        ]

    return await a.ingestor.repair(
        keys,
        holes=find,
        start_ms=0,
        end_ms=a.sim.clock.now_ms(),
        recheck_gaps_before_ms=recheck_before_ms,
    )


def execute(dsn: str, query: str, *args: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, args)


def delete_range(dsn: str, symbol: str, start_ms: int, end_ms: int) -> None:
    """Delete the symbol's candles opening in [start_ms, end_ms): a hole made by hand."""
    execute(
        dsn,
        "DELETE FROM candlesticks WHERE symbol = %s AND ts >= to_timestamp(%s / 1000.0)"
        " AND ts < to_timestamp(%s / 1000.0)",
        symbol,
        start_ms,
        end_ms,
    )


async def test_repair_restores_exactly_what_was_deleted(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """Deleted rows (one candle and a whole range) are found by verify and restored by repair."""
    start = sim.clock.now_ms() - 6 * HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill([BTC, ETH])
    one = Interval("1m").ceil(start) + 30 * MINUTE_MS
    delete_range(database_url, "BTCUSDT", one, one + MINUTE_MS)
    delete_range(database_url, "ETHUSDT", start + 2 * HOUR_MS, start + 3 * HOUR_MS)
    before = await verify(database_url, keys=[BTC, ETH], now_ms=sim.clock.now_ms(), check_lag=False)
    assert not before.ok
    results = await run_repair(a, [BTC, ETH])
    assert results[BTC].holes == 1 and results[BTC].written == 1
    assert results[ETH].holes == 1 and results[ETH].written == 12
    assert truth_diff(sim, database_url, [BTC, ETH], start, sim.clock.now_ms()).clean
    after = await verify(database_url, keys=[BTC, ETH], now_ms=sim.clock.now_ms(), check_lag=False)
    assert after.ok, after.to_json()


async def test_repair_retries_a_failed_range_and_moves_the_resume_point(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A range that failed (malformed) is fetched again by repair once Binance serves it clean;
    the failure record is cleared and the resume point catches up."""
    start = Interval("1m").ceil(sim.clock.now_ms() - 2 * HOUR_MS)
    sim.faults.malformed("BTCUSDT", "1m", start + 5 * MINUTE_MS, kind="missing_field")
    a = await make_ingestor(sim, database_url, start_ms=start)
    results = await a.ingestor.backfill([BTC])
    assert results[BTC].failed
    assert sync_last(database_url, BTC) != last_closed("1m", sim.clock.now_ms())
    sim.faults.clear()
    await run_repair(a, [BTC])
    assert truth_diff(sim, database_url, [BTC], start, sim.clock.now_ms()).clean
    assert sync_last(database_url, BTC) == last_closed("1m", sim.clock.now_ms())
    assert await a.storage.failed_ranges() == []


async def test_repair_rechecks_old_exchange_gaps(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A recorded exchange gap older than the re-check age is fetched again; when Binance now
    has those candles they are stored and the gap record is removed."""
    start = sim.clock.now_ms() - 4 * HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill([BTC])
    gap_start = Interval("1m").ceil(start) + HOUR_MS
    gap_end = gap_start + 20 * MINUTE_MS
    delete_range(database_url, "BTCUSDT", gap_start, gap_end)
    await a.storage.record_exchange_gap(BTC, gap_start, gap_end)
    # A young gap is left alone ...
    young = await run_repair(a, [BTC], recheck_before_ms=0)
    assert young[BTC].gaps_rechecked == 0 and young[BTC].written == 0
    # ... an old one is re-checked: Binance back-filled it.
    old = await run_repair(a, [BTC], recheck_before_ms=sim.clock.now_ms() + 10**12)
    assert old[BTC].gaps_rechecked == 1 and old[BTC].written == 20
    assert await a.storage.exchange_gaps(BTC) == []
    assert truth_diff(sim, database_url, [BTC], start, sim.clock.now_ms()).clean


async def test_hole_binance_still_lacks_becomes_an_exchange_gap(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """A stored hole that REST still answers with nothing is recorded as an exchange gap
    (never fabricated), so verify stops reporting it as a hole."""
    start = sim.clock.now_ms() - 4 * HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=start)
    await a.ingestor.backfill([BTC])
    gap_start = Interval("1m").ceil(start) + HOUR_MS
    gap_end = gap_start + 15 * MINUTE_MS
    delete_range(database_url, "BTCUSDT", gap_start, gap_end)
    sim.faults.exchange_gap(gap_start, gap_end, symbol="BTCUSDT")
    results = await run_repair(a, [BTC])
    assert results[BTC].gaps_recorded == 1 and results[BTC].written == 0
    gaps = await a.storage.exchange_gaps(BTC)
    assert [(g.start_ms, g.end_ms) for g in gaps] == [(gap_start, gap_end)]
    report = await verify(database_url, keys=[BTC], now_ms=sim.clock.now_ms(), check_lag=False)
    assert report.ok, report.to_json()


async def test_cli_repair_from_extends_history_backwards(
    sim: Simulator, database_url: str, make_ingestor: MakeIngestor
) -> None:
    """`qryptify repair --from DATE` before the stored history fetches the older candles."""
    import asyncio
    import os
    import sys

    from qryptify_ingestor.domain import ms_to_datetime

    now = sim.clock.now_ms()
    early, late = now - 6 * HOUR_MS, now - 2 * HOUR_MS
    a = await make_ingestor(sim, database_url, start_ms=late)
    await a.ingestor.backfill([BTC])
    env = {
        **os.environ,
        "QRYPTIFY_DATABASE_URL": database_url,
        "QRYPTIFY_REST_URL": sim.rest_url,
        "QRYPTIFY_SYMBOLS": "BTCUSDT",
        "QRYPTIFY_INTERVALS": "1m",
        "QRYPTIFY_START_DATE": ms_to_datetime(late).isoformat(timespec="milliseconds"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qryptify_ingestor", "repair", "--config", os.devnull,
        "--from", ms_to_datetime(early).isoformat(timespec="milliseconds"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert truth_diff(sim, database_url, [BTC], early, sim.clock.now_ms()).clean
    assert await a.storage.exchange_gaps(BTC) == []

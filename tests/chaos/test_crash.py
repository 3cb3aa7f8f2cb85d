"""SIGKILL and SIGTERM of the real CLI, during backfill and during live: nothing lost, nothing
stored twice, and a restart does not fetch again what was committed."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS
from tests.chaos.harness import (
    StartCli,
    assert_exact,
    caught_up,
    cli_env,
    keys_of,
    near_now_ms,
    row_count,
    wait_until,
)
from tests.ingest_plugin import stored_rows, sync_last
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

# The CLI ingests the cross product of QRYPTIFY_SYMBOLS and QRYPTIFY_INTERVALS.
KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m", "3m"])

# Slow the backfill down (one request at a time, 100 ms each, small commits) so that a signal
# reliably lands in the middle of it.
SLOW_BACKFILL = {
    "QRYPTIFY_BINANCE_MAX_REQUESTS_IN_FLIGHT": "1",
    "QRYPTIFY_BACKFILL_WRITE_BATCH_ROWS": "500",
}


async def test_sigkill_during_backfill_then_resume(
    make_sim: MakeSim, database_url: str, start_cli: StartCli
) -> None:
    """A backfill killed with SIGKILL resumes where its last commit ended: exact rows, no
    duplicate, and the second run fetches only what the first did not store."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(sim, database_url, keys=KEYS, start_ms=start, **SLOW_BACKFILL)
    sim.faults.rest_latency(100, path="/fapi/v1/klines")
    backfill_from = sim.clock.now_ms()
    first = await start_cli(["backfill"], env)
    await wait_until(lambda: row_count(database_url) >= 1500, 30, "a part of the backfill")
    await first.kill()
    stored = row_count(database_url)
    total = sum(len(sim.candles(k.symbol, k.interval, start, sim.clock.now_ms())) for k in KEYS)
    assert 0 < stored < total, (stored, total)
    for key in KEYS:  # the resume point is exactly the last stored candle
        rows = stored_rows(database_url, key)
        assert sync_last(database_url, key) == (rows[-1][0] if rows else None)

    sim.faults.clear()
    # The killed process's last request may still be in the simulator (100 ms latency): let it
    # be counted before taking the baseline.
    await asyncio.sleep(0.5)
    served = sim.stats.klines_rows_served
    backfill_from = sim.clock.now_ms()
    second = await start_cli(["backfill"], env)
    assert await second.wait_exit(60) == 0, second.tail()
    refetched = sim.stats.klines_rows_served - served
    total = sum(len(sim.candles(k.symbol, k.interval, start, sim.clock.now_ms())) for k in KEYS)
    # One limit=1 probe per stream, plus the candles that closed while the test ran.
    slack = len(KEYS) * (2 + 5)
    assert refetched <= total - stored + slack, (
        refetched,
        total,
        stored,
        {str(k): len(stored_rows(database_url, k)) for k in KEYS},
        second.tail(8),
    )
    assert_exact(sim, database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_sigkill_during_live_then_restart_fills_downtime(
    make_sim: MakeSim, database_url: str, start_cli: StartCli
) -> None:
    """`qryptify run` killed with SIGKILL while live and restarted minutes later fills every
    candle that closed while it was down."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 3 * HOUR_MS
    env = cli_env(sim, database_url, keys=KEYS, start_ms=start)
    first = await start_cli(["run"], env)
    await wait_until(caught_up(sim, database_url, KEYS), 30, "backfill and hand-over")
    await first.wait_output(r"live: \d+ stream", 10)
    sim.clock.advance(MINUTE_MS)
    await wait_until(caught_up(sim, database_url, KEYS), 15, "a live close")
    await asyncio.sleep(0.5)  # mid-candle: updates of the next candle are flowing
    await first.kill()
    sim.clock.advance(7 * MINUTE_MS)  # down for seven minutes
    second = await start_cli(["run"], env)
    await wait_until(caught_up(sim, database_url, KEYS), 30, "the downtime filled")
    sim.clock.advance(MINUTE_MS)
    await wait_until(caught_up(sim, database_url, KEYS), 15, "a live close after restart")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(10) == 0, second.tail()
    assert_exact(sim, database_url, KEYS, start)


async def test_sigterm_during_backfill_exits_0_quickly_and_loses_nothing(
    make_sim: MakeSim, database_url: str, start_cli: StartCli
) -> None:
    """SIGTERM during a backfill: exit 0 within 5 s; the restart completes it exactly."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(sim, database_url, keys=KEYS, start_ms=start, **SLOW_BACKFILL)
    sim.faults.rest_latency(100, path="/fapi/v1/klines")
    first = await start_cli(["run"], env)
    await wait_until(lambda: row_count(database_url) >= 1500, 30, "a part of the backfill")
    sent = time.monotonic()
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(5) == 0, first.tail()
    assert time.monotonic() - sent < 5
    assert "Traceback" not in first.output, first.tail()
    assert row_count(database_url) < sum(
        len(sim.candles(k.symbol, k.interval, start, sim.clock.now_ms())) for k in KEYS
    ), "the backfill was already complete: the signal did not land during it"
    sim.faults.clear()
    backfill_from = sim.clock.now_ms()
    second = await start_cli(["backfill"], env)
    assert await second.wait_exit(60) == 0, second.tail()
    assert_exact(sim, database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_sigterm_during_live_exits_0_quickly_and_loses_nothing(
    make_sim: MakeSim, database_url: str, start_cli: StartCli
) -> None:
    """SIGTERM while live: exit 0 within 5 s; a restart later fills the downtime exactly."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * HOUR_MS
    env = cli_env(sim, database_url, keys=KEYS, start_ms=start)
    first = await start_cli(["run"], env)
    await wait_until(caught_up(sim, database_url, KEYS), 30, "backfill and hand-over")
    sim.clock.advance(MINUTE_MS)
    await wait_until(caught_up(sim, database_url, KEYS), 15, "a live close")
    sent = time.monotonic()
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(5) == 0, first.tail()
    assert time.monotonic() - sent < 5
    assert "Traceback" not in first.output, first.tail()
    sim.clock.advance(4 * MINUTE_MS)
    backfill_from = sim.clock.now_ms()
    second = await start_cli(["backfill"], env)
    assert await second.wait_exit(30) == 0, second.tail()
    assert_exact(sim, database_url, KEYS, start, closed_before_ms=backfill_from)

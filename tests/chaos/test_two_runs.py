"""Two `qryptify run` processes started on the same database by mistake: one ingests, the other
waits as a standby and says so; when the first stops the standby takes over; the table stays
exact with no duplicate."""

from __future__ import annotations

import signal

import pytest

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS
from tests.chaos.harness import (
    StartCli,
    assert_exact,
    caught_up,
    cli_env,
    keys_of,
    near_now_ms,
    recover,
    wait_until,
)
from tests.ingest_plugin import stored_rows, sync_last
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m"])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_second_run_waits_as_standby_and_takes_over(
    stop: signal.Signals, make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """The second `run` logs that another run is ingesting into this database and waits; data
    stays exact while both run and after it takes over from the first (stopped or crashed)."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * HOUR_MS
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    first = await start_cli(["run"], env)
    await wait_until(caught_up(sim, plain_database_url, KEYS), 30, "the first run live", first)
    second = await start_cli(["run"], env)
    await second.wait_output(r"another qryptify run is already ingesting.*standby", 15)
    rows_served = sim.stats.klines_rows_served
    for _ in range(2):
        sim.clock.advance(MINUTE_MS)
        await wait_until(caught_up(sim, plain_database_url, KEYS), 15, "closes", first)
    assert second.running, second.tail()
    assert "live:" not in second.output, "the standby follows the streams too"
    # The first run's fills only (a few rows); a standby backfilling would fetch hundreds.
    assert sim.stats.klines_rows_served - rows_served < 60

    first.signal(stop)
    code = await first.wait_exit(10)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL), first.tail()
    await second.wait_output(r"takes over", 15)
    sim.clock.advance(2 * MINUTE_MS)  # closes while the standby takes over
    await recover(sim, plain_database_url, KEYS, second, closes=2)
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(10) == 0, second.tail()
    assert_exact(sim, plain_database_url, KEYS, start)


async def test_two_concurrent_backfills_store_each_candle_once(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """Two `qryptify backfill` processes writing the same streams at the same time leave each
    candle stored once, exact, with consistent resume points."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(
        sim,
        plain_database_url,
        keys=KEYS,
        start_ms=start,
        QRYPTIFY_BINANCE_MAX_REQUESTS_IN_FLIGHT="2",
        QRYPTIFY_BACKFILL_WRITE_BATCH_ROWS="500",
    )
    sim.faults.rest_latency(50, path="/fapi/v1/klines")
    backfill_from = sim.clock.now_ms()
    first = await start_cli(["backfill"], env)
    backfill_from = sim.clock.now_ms()
    second = await start_cli(["backfill"], env)
    assert await first.wait_exit(60) == 0, first.tail()
    assert await second.wait_exit(60) == 0, second.tail()
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)
    for key in KEYS:
        assert sync_last(plain_database_url, key) == stored_rows(plain_database_url, key)[-1][0]

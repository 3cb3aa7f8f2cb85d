"""PostgreSQL crashes (stop -m immediate) under the running CLI, during backfill and live: the
process keeps running with bounded memory, retries, and catches up with no operator action."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from qryptify_ingestor.domain import DAY_MS, MINUTE_MS
from qryptify_ingestor.sim import Simulator
from tests.chaos.harness import (
    Cli,
    StartCli,
    assert_exact,
    caught_up,
    cli_env,
    keys_of,
    near_now_ms,
    row_count,
    wait_until,
)
from tests.pg_plugin import PgCluster
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m", "3m"])

# Issue 7: PostgreSQL away for 20 s. Write retries back off to at most 5 s (Tuning.db_retry_max_s),
# so the ingestor catches up within seconds of the restart.
OUTAGE_S = 20.0
RSS_GROWTH_LIMIT_KB = 48 * 1024


async def _outage(cluster: PgCluster, cli: Cli) -> list[int]:
    """Crash the server, keep it down for OUTAGE_S while sampling the CLI's RSS, restart it."""
    await asyncio.to_thread(cluster.stop, "immediate")
    samples: list[int] = []
    try:
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert cli.running, f"the CLI exited while the database was down:\n{cli.tail()}"
            samples.append(cli.rss_kb())
            await asyncio.sleep(0.25)
    finally:
        await asyncio.to_thread(cluster.start)
    return samples


async def test_database_outage_during_backfill_and_live(
    make_sim: MakeSim, pg_cluster: PgCluster, database_url: str, start_cli: StartCli
) -> None:
    """PostgreSQL down for a while during backfill and again during live: `qryptify run` keeps
    running with bounded RSS, retries and catches up by itself; the table ends exact."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(
        sim,
        database_url,
        keys=KEYS,
        start_ms=start,
        QRYPTIFY_BINANCE_MAX_REQUESTS_IN_FLIGHT="1",
        QRYPTIFY_BACKFILL_WRITE_BATCH_ROWS="500",
    )
    sim.faults.rest_latency(100, path="/fapi/v1/klines")
    cli = await start_cli(["run"], env)
    await wait_until(lambda: row_count(database_url) >= 500, 30, "a part of the backfill")
    before = cli.rss_kb()
    samples = await _outage(pg_cluster, cli)
    assert max(samples) - before < RSS_GROWTH_LIMIT_KB, (before, samples)
    await cli.wait_output(r"(?i)database unavailable", 5)
    sim.faults.clear()
    await wait_until(caught_up(sim, database_url, KEYS), 45, "the backfill to finish")

    sim.clock.advance(MINUTE_MS)
    await wait_until(caught_up(sim, database_url, KEYS), 15, "a live close")
    before = cli.rss_kb()
    outage = asyncio.create_task(_outage(pg_cluster, cli))
    await asyncio.sleep(1.0)
    sim.clock.advance(3 * MINUTE_MS)  # candles close while the database is away
    samples = await outage
    assert max(samples) - before < RSS_GROWTH_LIMIT_KB, (before, samples)
    await wait_until(caught_up(sim, database_url, KEYS), 45, "live to catch up")
    sim.clock.advance(MINUTE_MS)
    await wait_until(caught_up(sim, database_url, KEYS), 15, "a live close after the outage")
    cli.signal(signal.SIGTERM)
    assert await cli.wait_exit(10) == 0, cli.tail()
    assert_exact(sim, database_url, KEYS, start)


async def _sigterm_while_database_down(
    sim: Simulator, cluster: PgCluster, dsn: str, start_cli: StartCli
) -> tuple[int, float, Cli, dict[str, str], int]:
    """Crash the database mid-backfill, SIGTERM the CLI 2 s later (its writes failing), restart
    the database; returns (exit code, seconds to exit, the CLI, its env, start)."""
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(
        sim,
        dsn,
        keys=KEYS,
        start_ms=start,
        QRYPTIFY_BINANCE_MAX_REQUESTS_IN_FLIGHT="1",
        QRYPTIFY_BACKFILL_WRITE_BATCH_ROWS="500",
    )
    sim.faults.rest_latency(100, path="/fapi/v1/klines")
    cli = await start_cli(["run"], env)
    await wait_until(lambda: row_count(dsn) >= 500, 30, "a part of the backfill")
    await asyncio.to_thread(cluster.stop, "immediate")
    try:
        await asyncio.sleep(2.0)
        sent = time.monotonic()
        cli.signal(signal.SIGTERM)
        code = await cli.wait_exit(10)
        elapsed = time.monotonic() - sent
    finally:
        await asyncio.to_thread(cluster.start)
    sim.faults.clear()
    return code, elapsed, cli, env, start


async def test_sigterm_while_the_database_is_down_exits_0_within_5s_and_loses_nothing(
    make_sim: MakeSim, pg_plain_cluster: PgCluster, plain_database_url: str, start_cli: StartCli
) -> None:
    """SIGTERM while writes fail on a crashed database is a normal stop (exit 0 within 5 s, no
    traceback); what was not committed is fetched again by the next run, exactly."""
    sim = await make_sim(start_ms=near_now_ms())
    code, elapsed, cli, env, start = await _sigterm_while_database_down(
        sim, pg_plain_cluster, plain_database_url, start_cli
    )
    assert elapsed < 5, (elapsed, code, cli.tail())
    assert "Traceback" not in cli.output, cli.tail()
    assert code == 0, cli.tail()
    backfill_from = sim.clock.now_ms()
    again = await start_cli(["backfill"], env)
    assert await again.wait_exit(60) == 0, again.tail()
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)

"""The real `qryptify run` against a misbehaving WebSocket: dropped and stalled connections,
duplicate and late finals, the server's forced lifetime disconnect. Nothing lost or doubled."""

from __future__ import annotations

import asyncio
import signal

import pytest

from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS
from qryptify_ingestor.sim import Simulator
from tests.chaos.harness import (
    Cli,
    StartCli,
    assert_exact,
    caught_up,
    cli_env,
    keys_of,
    near_now_ms,
    recover,
    wait_until,
)
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m", "3m"])


async def _run_live(sim: Simulator, dsn: str, start_cli: StartCli, start: int, **extra: str) -> Cli:
    extra.setdefault("QRYPTIFY_LIVE_SILENCE_TIMEOUT_S", "1.5")
    # A 3m stream whose final was lost gets its next final up to 3 minutes later; the lag
    # watchdog fills it from REST once overdue by this margin (default 30 s of exchange time).
    extra.setdefault("QRYPTIFY_LIVE_CLOSE_MARGIN_S", "2")
    cli = await start_cli(["run"], cli_env(sim, dsn, keys=KEYS, start_ms=start, **extra))
    await wait_until(caught_up(sim, dsn, KEYS), 30, "backfill and hand-over")
    await cli.wait_output(r"live: \d+ stream", 10)
    return cli


async def _stop(cli: Cli) -> None:
    cli.signal(signal.SIGTERM)
    assert await cli.wait_exit(10) == 0, cli.tail()


async def test_connection_dropped_mid_candle(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """Connections dropped mid-candle (clean and abrupt) reconnect; closes missed are filled."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - HOUR_MS
    cli = await _run_live(sim, plain_database_url, start_cli, start)
    connections = sim.stats.ws_connections_total
    await asyncio.sleep(0.5)  # mid-candle: updates are flowing
    assert sim.faults.ws_drop(abrupt=True) >= 1
    sim.clock.advance(2 * MINUTE_MS)  # closes while (maybe) disconnected
    await recover(sim, plain_database_url, KEYS, cli)
    await asyncio.sleep(0.5)
    assert sim.faults.ws_drop(abrupt=False) >= 1
    await recover(sim, plain_database_url, KEYS, cli)
    await recover(sim, plain_database_url, KEYS, cli, closes=1)
    assert sim.stats.ws_connections_total >= connections + 2
    await _stop(cli)
    assert_exact(sim, plain_database_url, KEYS, start)


async def test_silent_stall_is_detected_and_filled(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A connection that stays open but sends nothing is replaced; the candles that closed
    during the stall are filled from REST."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - HOUR_MS
    cli = await _run_live(sim, plain_database_url, start_cli, start)
    connections = sim.stats.ws_connections_total
    sim.faults.ws_stall(4.0)
    sim.clock.advance(MINUTE_MS)  # this final is never sent on the stalled connection
    await wait_until(
        lambda: sim.stats.ws_connections_total > connections, 10, "the silent connection replaced"
    )
    await asyncio.sleep(4.0)  # the stall ends
    await recover(sim, plain_database_url, KEYS, cli)
    await recover(sim, plain_database_url, KEYS, cli, closes=1)
    await _stop(cli)
    assert_exact(sim, plain_database_url, KEYS, start)


async def test_duplicate_and_late_finals_are_stored_once(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """Finals sent twice, and finals arriving after the next candle's first update, are
    stored once with the right values."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - HOUR_MS
    cli = await _run_live(sim, plain_database_url, start_cli, start)
    sim.faults.ws_duplicate_finals(count=6)
    await recover(sim, plain_database_url, KEYS, cli, closes=2)
    sim.faults.ws_late_finals(count=6)
    sim.clock.advance(MINUTE_MS)
    await asyncio.sleep(0.6)  # the late finals follow the next candle's first update
    await recover(sim, plain_database_url, KEYS, cli)
    await recover(sim, plain_database_url, KEYS, cli, closes=1)
    await _stop(cli)
    assert_exact(sim, plain_database_url, KEYS, start)


async def test_forced_lifetime_disconnect(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """The server's forced disconnect (Binance's 24 h cut, shortened to 2 s) loses nothing."""
    sim = await make_sim(start_ms=near_now_ms(), ws_lifetime_s=2.0)
    start = sim.clock.now_ms() - HOUR_MS
    cli = await _run_live(sim, plain_database_url, start_cli, start)
    # Past the lifetime the server cuts every connection; the CLI reconnects, and so on.
    await wait_until(lambda: sim.stats.ws_forced_closes >= 1, 10, "the first cut", cli)
    await recover(sim, plain_database_url, KEYS, cli)
    await wait_until(lambda: sim.stats.ws_forced_closes >= 2, 10, "the second cut", cli)
    await recover(sim, plain_database_url, KEYS, cli)
    assert cli.running, cli.tail()
    await _stop(cli)
    assert_exact(sim, plain_database_url, KEYS, start)

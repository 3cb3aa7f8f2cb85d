"""The real CLI against a misbehaving Binance REST API: 429 storms, a 418 ban, 5xx bursts,
connections reset mid-body and latency spikes. Each backfill still ends exact."""

from __future__ import annotations

import time

import pytest

from qryptify_ingestor.domain import DAY_MS
from tests.chaos.harness import (
    StartCli,
    assert_exact,
    cli_env,
    keys_of,
    near_now_ms,
    row_count,
    wait_until,
)
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m", "3m"])
KLINES = "/fapi/v1/klines"
# A 2 s weight window (exchangeInfo says so): a 429's Retry-After (the window's end) is short.
WINDOW_MS = 2_000


async def test_429_storm_is_waited_out_without_earning_a_ban(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A burst of 429s pauses every request until Retry-After: no 418 follows, data exact."""
    sim = await make_sim(start_ms=near_now_ms(), weight_limit=200, weight_window_ms=WINDOW_MS)
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    # Five 429s: the most a window tolerates; one more 429 in that window is a 418.
    sim.faults.rate_limit_storm(count=5, path=KLINES)
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    assert await cli.wait_exit(60) == 0, cli.tail()
    assert sim.stats.rate_limited_429 >= 5
    assert sim.stats.banned_418 == 0, cli.tail()
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_418_ban_time_is_honoured(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """After a 418 no request reaches the exchange until the ban ends; then the backfill
    finishes exact."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(
        sim,
        plain_database_url,
        keys=KEYS,
        start_ms=start,
        QRYPTIFY_BINANCE_MAX_REQUESTS_IN_FLIGHT="1",
    )
    sim.faults.rest_latency(100, path=KLINES)
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    await wait_until(lambda: row_count(plain_database_url) > 0, 30, "the backfill to start")
    ban_ms = 3_000
    sim.faults.ban(duration_ms=ban_ms)
    await wait_until(lambda: sim.stats.banned_418 == 1, 5, "the 418")
    banned_at, requests = time.monotonic(), sim.stats.requests
    # While the ban lasts, any request would be answered 418 again (and counted).
    await wait_until(lambda: time.monotonic() - banned_at > ban_ms / 1000 - 0.2, 5, "the ban")
    assert sim.stats.requests == requests, "requests were sent during the ban"
    assert await cli.wait_exit(60) == 0, cli.tail()
    assert sim.stats.banned_418 == 1
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_5xx_bursts_and_resets_mid_body_are_retried(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """Bursts of 500/502/503/504 answers and connections reset half-way through a body are
    retried; nothing partial is stored."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    for variant in ("500", "502", "503", "503-unavailable", "504"):
        sim.faults.rest_errors(2, variant=variant, path=KLINES)
    sim.faults.rest_reset(4, path=KLINES)
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    assert await cli.wait_exit(60) == 0, cli.tail()
    assert sim.stats.errors_5xx == 10
    assert sim.stats.resets == 4
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_latency_spikes_are_waited_out(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """Responses delayed by 5 s (under the 10 s request timeout) slow the backfill, not break
    it; other requests proceed meanwhile."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - 2 * DAY_MS
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    sim.faults.rest_latency(5_000, count=3, path=KLINES)
    began = time.monotonic()
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    assert await cli.wait_exit(60) == 0, cli.tail()
    # The three slow requests overlap (requests run concurrently): about 5 s, not 15 s.
    assert 5 <= time.monotonic() - began < 12
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)

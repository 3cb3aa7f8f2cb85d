"""REST fault injection, the `/_sim/` admin endpoints and the `qryptify sim` process."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import orjson
import pytest

from qryptify_ingestor.domain import MINUTE_MS, Interval
from qryptify_ingestor.sim import Simulator
from tests.sim_plugin import SIM_START_MS, MakeSim

KLINES = "/fapi/v1/klines"
PARAMS = {"symbol": "BTCUSDT", "interval": "1m", "limit": 3}


async def test_5xx_variants_for_n_requests(sim: Simulator) -> None:
    """The next N requests answer the chosen 5xx, then service resumes; weight still counted."""
    sim.faults.rest_errors(2, status=502)
    sim.faults.rest_errors(1, variant="503-unknown")
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        answers = [await client.get(KLINES, params=PARAMS) for _ in range(4)]
    assert [r.status_code for r in answers] == [502, 502, 503, 200]
    assert answers[0].headers["content-type"].startswith("text/html")
    assert orjson.loads(answers[2].content)["code"] == -1000
    assert answers[2].headers["X-MBX-USED-WEIGHT-1M"] == "3"
    assert sim.stats.errors_5xx == 3


async def test_errors_scoped_to_a_path(sim: Simulator) -> None:
    """A path-scoped fault leaves other endpoints alone."""
    sim.faults.rest_errors(1, status=500, path=KLINES)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        assert (await client.get("/fapi/v1/time")).status_code == 200
        assert (await client.get(KLINES, params=PARAMS)).status_code == 500


async def test_connection_reset_mid_body(sim: Simulator) -> None:
    """A reset sends headers and part of the body, then drops the connection."""
    sim.faults.rest_reset(1)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(KLINES, params=PARAMS)
        assert (await client.get(KLINES, params=PARAMS)).status_code == 200
    assert sim.stats.resets == 1


async def test_latency_for_n_requests(sim: Simulator) -> None:
    """Added latency delays exactly the requests it was given."""
    sim.faults.rest_latency(300, count=1)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        t0 = time.monotonic()
        await client.get("/fapi/v1/time")
        slow = time.monotonic() - t0
        t0 = time.monotonic()
        await client.get("/fapi/v1/time")
        fast = time.monotonic() - t0
    assert slow >= 0.3 > fast


async def test_storm_and_forced_ban(make_sim: MakeSim) -> None:
    """A 429 storm answers 429 whatever the weight; a forced ban answers 418 for its duration."""
    sim = await make_sim(ban_after_429s=10)
    sim.faults.rate_limit_storm(count=2)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        statuses = [(await client.get("/fapi/v1/time")).status_code for _ in range(3)]
        assert statuses == [429, 429, 200]
        sim.faults.ban(400)
        banned = await client.get("/fapi/v1/time")
        assert banned.status_code == 418 and banned.headers["Retry-After"] == "1"
        assert (await client.get("/fapi/v1/time")).status_code == 418
        await asyncio.sleep(0.45)
        assert (await client.get("/fapi/v1/time")).status_code == 200
    assert (sim.stats.rate_limited_429, sim.stats.banned_418) == (2, 2)


@pytest.mark.parametrize("kind", ["non_numeric", "missing_field", "high_below_low"])
async def test_malformed_rows(sim: Simulator, kind: str) -> None:
    """A malformed row is served for its candle `count` times, then the good row again."""
    t = Interval("1m").floor(SIM_START_MS) - 10 * MINUTE_MS
    sim.faults.malformed("BTCUSDT", "1m", t, kind, count=1)
    params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": t - MINUTE_MS, "limit": 3}
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        bad = orjson.loads((await client.get(KLINES, params=params)).content)
        good = orjson.loads((await client.get(KLINES, params=params)).content)
    truth = sim.candles("BTCUSDT", "1m", t - MINUTE_MS, t + 2 * MINUTE_MS)
    assert good == truth and bad[0] == truth[0] and bad[2] == truth[2]
    assert bad[1] != truth[1]
    if kind == "missing_field":
        assert len(bad[1]) < 12
    elif kind == "high_below_low":
        assert float(bad[1][2]) < float(bad[1][3])


async def test_exchange_gap_over_rest(sim: Simulator) -> None:
    """An exchange gap removes the rows from REST and from the truth alike."""
    t = Interval("1m").floor(SIM_START_MS) - 30 * MINUTE_MS
    sim.faults.exchange_gap(t, t + 5 * MINUTE_MS)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        rows = orjson.loads(
            (
                await client.get(
                    KLINES,
                    params={"symbol": "ETHUSDT", "interval": "1m", "startTime": t - MINUTE_MS},
                )
            ).content
        )
    opens = [r[0] for r in rows]
    assert opens[:2] == [t - MINUTE_MS, t + 5 * MINUTE_MS]
    assert [r for r in rows if r[0] + MINUTE_MS <= sim.clock.now_ms()] == sim.candles(
        "ETHUSDT", "1m", t - MINUTE_MS, SIM_START_MS
    )


async def test_admin_endpoints(sim: Simulator) -> None:
    """/_sim/ drives faults and the clock and reports stats and truth, without weight."""
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        r = await client.post(
            "/_sim/faults", json={"fault": "rest_errors", "count": 1, "status": 503}
        )
        assert r.status_code == 200
        assert (await client.get("/fapi/v1/time")).status_code == 503
        bad = await client.post("/_sim/faults", json={"fault": "explode"})
        assert bad.status_code == 400
        before = sim.clock.now_ms()
        state = (await client.post("/_sim/clock/advance", json={"ms": 3_600_000})).json()
        assert state["now_ms"] >= before + 3_600_000 and state["controlled"] is True
        await client.post("/_sim/clock/speed", json={"speed": 0})
        assert (await client.get("/_sim/clock")).json()["speed"] == 0
        stats = (await client.get("/_sim/stats")).json()
        assert stats["requests"] == 1 and stats["errors_5xx"] == 1
        t = Interval("1m").floor(SIM_START_MS)
        truth = (
            await client.get(
                "/_sim/candles",
                params={
                    "symbol": "BTCUSDT",
                    "interval": "1m",
                    "start": t,
                    "end": t + 3 * MINUTE_MS,
                },
            )
        ).json()
        assert truth == sim.candles("BTCUSDT", "1m", t, t + 3 * MINUTE_MS)
        await client.post("/_sim/faults", json={"fault": "rate_limit_storm"})
        assert (await client.get("/fapi/v1/time")).status_code == 429
        await client.post("/_sim/faults/clear")
        assert (await client.get("/fapi/v1/time")).status_code == 200


async def test_cli_process_serves_and_stops() -> None:
    """The `qryptify sim` process serves, obeys /_sim/ and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qryptify_ingestor.sim.cli",
        "--port",
        "0",
        "--symbols",
        "BTCUSDT",
        "ETHUSDT",
        "--clock-start",
        "2026-10-01T00:00:30Z",
        "--clock-speed",
        "0",
        "--weight-limit",
        "100",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        rest_url = line.split("rest=")[1].split()[0]
        async with httpx.AsyncClient(base_url=rest_url) as client:
            assert (await client.get("/fapi/v1/time")).json() == {"serverTime": SIM_START_MS}
            info = (await client.get("/fapi/v1/exchangeInfo")).json()
            assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
            assert info["rateLimits"][0]["limit"] == 100
            await client.post("/_sim/clock/advance", json={"ms": 60_000})
            assert (await client.get("/fapi/v1/time")).json()["serverTime"] == SIM_START_MS + 60_000
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0

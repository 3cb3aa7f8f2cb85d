"""The simulator's REST API over loopback: klines semantics, errors, weights, 429 and 418."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS, Interval
from qryptify_ingestor.sim import Simulator
from tests.sim_plugin import SIM_START_MS, MakeSim

KLINES = "/fapi/v1/klines"


async def get(sim: Simulator, path: str, **params: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        return await client.get(path, params=params)


async def klines(sim: Simulator, **params: object) -> list[list[object]]:
    response = await get(sim, KLINES, **params)
    assert response.status_code == 200, response.text
    rows: list[list[object]] = orjson.loads(response.content)
    return rows


async def test_ping_time_and_exchange_info(sim: Simulator) -> None:
    """ping, time and exchangeInfo answer in Binance's shapes with the exchange clock."""
    assert orjson.loads((await get(sim, "/fapi/v1/ping")).content) == {}
    server_time = orjson.loads((await get(sim, "/fapi/v1/time")).content)["serverTime"]
    assert abs(server_time - sim.clock.now_ms()) < 1000
    info = orjson.loads((await get(sim, "/fapi/v1/exchangeInfo")).content)
    assert info["timezone"] == "UTC"
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 2400,
    }
    symbols = {s["symbol"]: s for s in info["symbols"]}
    assert symbols["BTCUSDT"]["contractType"] == "PERPETUAL"
    assert symbols["BTCUSDT"]["deliveryDate"] == 4133404800000
    assert symbols["BTCUSDT_261225"]["contractType"] == "CURRENT_QUARTER"
    assert symbols["TOMOUSDT"]["status"] == "SETTLING"
    assert symbols["BTCUSDC"]["marginAsset"] == "USDC"
    assert symbols["BTCUSDT"]["filters"][0]["tickSize"] == "0.10"


async def test_configured_limit_is_reflected(make_sim: MakeSim) -> None:
    """A shortened weight window shows up in exchangeInfo.rateLimits."""
    sim = await make_sim(weight_limit=400, weight_window_ms=10_000)
    info = orjson.loads((await get(sim, "/fapi/v1/exchangeInfo")).content)
    assert info["rateLimits"][0]["interval"] == "SECOND"
    assert (info["rateLimits"][0]["intervalNum"], info["rateLimits"][0]["limit"]) == (10, 400)


async def test_paging_from_start_time_matches_truth(sim: Simulator) -> None:
    """Paging with next = last open + interval reproduces the truth exactly."""
    start = SIM_START_MS - 2 * DAY_MS - 30_000
    pages: list[list[object]] = []
    cursor = start
    while True:
        page = await klines(sim, symbol="ETHUSDT", interval="5m", startTime=cursor, limit=200)
        pages += page
        if len(page) < 200:
            break
        cursor = int(str(page[-1][0])) + 5 * MINUTE_MS
    closed = [row for row in pages if int(str(row[6])) < sim.clock.now_ms()]
    assert closed == sim.candles("ETHUSDT", "5m", start, SIM_START_MS)
    assert len(pages) == len(closed) + 1  # the open candle is included last


async def test_default_limit_latest_and_open_candle(sim: Simulator) -> None:
    """No time params: the latest 500 candles, ending with the open one (close in the future)."""
    rows = await klines(sim, symbol="BTCUSDT", interval="1m")
    assert len(rows) == 500
    now = sim.clock.now_ms()
    assert rows[-1][0] == Interval("1m").floor(now) and int(str(rows[-1][6])) > now
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


async def test_end_time_only_counts_back(sim: Simulator) -> None:
    """endTime alone: `limit` candles ending at the candle containing endTime."""
    end = SIM_START_MS - 10 * HOUR_MS + 123
    rows = await klines(sim, symbol="BTCUSDT", interval="1h", endTime=end, limit=5)
    assert [r[0] for r in rows] == [
        Interval("1h").floor(end) - i * HOUR_MS for i in range(4, -1, -1)
    ]


async def test_inclusive_bounds_and_unaligned_start(sim: Simulator) -> None:
    """startTime/endTime are inclusive on open time; an unaligned start begins at the next open."""
    t0 = Interval("1m").floor(SIM_START_MS) - 60 * MINUTE_MS
    rows = await klines(
        sim, symbol="BTCUSDT", interval="1m", startTime=t0, endTime=t0 + 2 * MINUTE_MS
    )
    assert [r[0] for r in rows] == [t0, t0 + MINUTE_MS, t0 + 2 * MINUTE_MS]
    rows = await klines(sim, symbol="BTCUSDT", interval="1m", startTime=t0 + 1, limit=1)
    assert rows[0][0] == t0 + MINUTE_MS


async def test_start_before_listing_clamps_to_first_candle(sim: Simulator) -> None:
    """startTime=0 returns the first candles from the listing, no error."""
    spec = sim.market.specs["NOVAUSDT"]
    rows = await klines(sim, symbol="NOVAUSDT", interval="1m", startTime=0, limit=2)
    assert [r[0] for r in rows] == [spec.onboard_ms, spec.onboard_ms + MINUTE_MS]
    rows = await klines(sim, symbol="NOVAUSDT", interval="1d", startTime=0, limit=1)
    assert rows[0][0] == Interval("1d").floor(spec.onboard_ms)


async def test_limits_and_errors(sim: Simulator) -> None:
    """Invalid requests get Binance's codes with JSON bodies and HTTP 400."""
    cases = [
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": 1501}, -1130),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": 0}, -1130),
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121),
        ({"symbol": "BTCUSDT", "interval": "1s"}, -1120),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": 2, "endTime": 1}, -1023),
        ({"interval": "1m"}, -1102),
        ({"symbol": "BTCUSDT"}, -1102),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": "ten"}, -1100),
        ({"symbol": "BTCUSDT", "interval": "1m", "star_time": 5}, -1104),
    ]
    for params, code in cases:
        response = await get(sim, KLINES, **params)
        assert response.status_code == 400, params
        assert response.headers["content-type"].startswith("application/json")
        assert orjson.loads(response.content)["code"] == code, params
    assert len(await klines(sim, symbol="BTCUSDT", interval="1m", limit=1500)) == 1500


async def test_weights_by_limit_tier_in_header(sim: Simulator) -> None:
    """X-MBX-USED-WEIGHT-1M grows by 1/2/5/10 per limit tier and 1 for the other endpoints."""
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        used = []
        for limit in (99, 100, 499, 500, 1000, 1001):
            r = await client.get(
                KLINES, params={"symbol": "BTCUSDT", "interval": "1m", "limit": limit}
            )
            used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        r = await client.get("/fapi/v1/exchangeInfo")
        used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
    steps = [b - a for a, b in zip([0, *used], used, strict=False)]
    assert steps == [1, 2, 2, 5, 5, 10, 1]
    assert sim.stats.weight_used == sum(steps)


async def test_429_then_418_escalating_bans(make_sim: MakeSim) -> None:
    """Over budget gives 429 with Retry-After; continuing earns 418 bans that double."""
    sim = await make_sim(
        weight_limit=10, weight_window_ms=60_000, ban_after_429s=2, ban_base_ms=300
    )
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        statuses = [(await client.get("/fapi/v1/time")).status_code for _ in range(12)]
        assert statuses[:10] == [200] * 10
        assert statuses[10:] == [429, 429]
        limited = await client.get("/fapi/v1/ping")
        assert limited.status_code == 418
        body = orjson.loads(limited.content)
        assert body["code"] == -1003 and "IP banned until" in body["msg"]
        assert int(limited.headers["Retry-After"]) >= 1
        banned_until = int(body["msg"].split("until ")[1].split(".")[0])
        assert 0 < banned_until - sim.clock.now_ms() <= 300
        await asyncio.sleep(0.35)
        second = await client.get("/fapi/v1/ping")  # still over budget in this window
        assert second.status_code == 429
        assert [(await client.get("/fapi/v1/ping")).status_code for _ in range(2)] == [429, 418]
        r = await client.get("/fapi/v1/ping")
        assert r.status_code == 418
        until = int(orjson.loads(r.content)["msg"].split("until ")[1].split(".")[0])
        assert 300 < until - sim.clock.now_ms() <= 600  # doubled
    assert sim.stats.rate_limited_429 == 4 and sim.stats.banned_418 == 3


async def test_429_body_and_retry_after(make_sim: MakeSim) -> None:
    """The 429 body carries the -1003 text and Retry-After counts to the window end."""
    sim = await make_sim(weight_limit=5, weight_window_ms=10_000)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        for _ in range(5):
            assert (await client.get("/fapi/v1/time")).status_code == 200
        r = await client.get("/fapi/v1/time")
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    assert r.headers["X-MBX-USED-WEIGHT-1M"] == "6"
    msg = orjson.loads(r.content)["msg"]
    assert msg.startswith("Too many requests; current limit is 5")
    assert "Please use the websocket for live updates" in msg

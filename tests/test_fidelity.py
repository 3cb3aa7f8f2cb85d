"""Fidelity: third-party Binance clients work against the simulator unchanged.

ccxt's `binanceusdm` (REST and ccxt.pro WebSocket) and `binance-futures-connector`'s `UMFutures`
are pointed at the simulator by base URL only. What they load and parse must equal the simulator's
truth, and the klines they parse must equal what our own parser makes of the same answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import httpx
import orjson
import pytest
import websockets
from binance.um_futures import UMFutures

from qryptify_ingestor.binance.parse import (
    KlineEvent,
    parse_exchange_info,
    parse_kline_rows,
    parse_stream_message,
)
from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS, Candle, Interval
from qryptify_ingestor.sim import Simulator
from tests.sim_plugin import SIM_START_MS, MakeSim

_API_VERSIONS = {"fapiPublic": "v1", "fapiPublicV2": "v2", "fapiPublicV3": "v3"}


def point_at(exchange: Any, sim: Simulator) -> None:
    """Redirect a ccxt binanceusdm instance to the simulator (base URLs only)."""
    for key, version in _API_VERSIONS.items():
        exchange.urls["api"][key] = f"{sim.rest_url}/fapi/{version}"
    # ccxt.pro rewrites a linear URL ending in /ws to <prefix>/market/ws, then adds /<n>.
    if "ws" in exchange.urls["api"]:  # ccxt.pro only
        exchange.urls["api"]["ws"]["linear"] = sim.rest_url.replace("http://", "ws://") + "/ws"


@pytest.fixture
async def ccxt_rest(sim: Simulator) -> AsyncIterator[Any]:
    exchange = ccxt_async.binanceusdm({"options": {"fetchMarkets": ["linear"]}})
    point_at(exchange, sim)
    yield exchange
    await exchange.close()


def ohlcv_of(row: list[Any]) -> list[float]:
    """A REST row as ccxt's OHLCV list: [t, o, h, l, c, v] with floats."""
    return [row[0], *(float(x) for x in row[1:6])]


def ohlcv_of_candle(c: Candle) -> list[float]:
    return [c.open_time, *(float(x) for x in (c.open, c.high, c.low, c.close, c.volume))]


async def test_ccxt_load_markets_and_time(sim: Simulator, ccxt_rest: Any) -> None:
    """ccxt loads every simulated contract with the right ids, types, expiry and activity."""
    markets = await ccxt_rest.load_markets()
    by_id = {m["id"]: m for m in markets.values()}
    assert set(by_id) == set(sim.market.specs)
    assert markets["BTC/USDT:USDT"]["id"] == "BTCUSDT"
    assert markets["BTC/USDT:USDT"]["swap"] and markets["BTC/USDT:USDT"]["linear"]
    quarterly = by_id["BTCUSDT_261225"]
    assert (
        quarterly["future"]
        and quarterly["expiry"] == sim.market.specs["BTCUSDT_261225"].delivery_ms
    )
    assert by_id["TOMOUSDT"]["active"] is False
    assert by_id["BTCUSDC"]["settle"] == "USDC"
    assert Decimal(str(markets["BTC/USDT:USDT"]["precision"]["price"])) == Decimal("0.1")
    server_time = await ccxt_rest.fetch_time()
    assert abs(server_time - sim.clock.now_ms()) < 1000
    # Our parser reads the same exchangeInfo to the same universe.
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (await client.get("/fapi/v1/exchangeInfo")).content
    info = parse_exchange_info(body)
    assert set(info.symbols) == set(by_id)
    assert info.request_weight_limit() == (2400, 60_000)
    for symbol_id, market in by_id.items():
        assert (info.symbols[symbol_id].status == "TRADING") == market["active"]


async def test_ccxt_fetch_ohlcv_pages_equal_truth_and_our_parser(
    sim: Simulator, ccxt_rest: Any
) -> None:
    """ccxt pages through 1m history; its candles equal the truth and our parse of the bodies."""
    await ccxt_rest.load_markets()
    start = Interval("1m").floor(SIM_START_MS) - 1200 * MINUTE_MS
    got: list[list[float]] = []
    since = start
    while since < Interval("1m").floor(SIM_START_MS):
        page = await ccxt_rest.fetch_ohlcv("ETH/USDT:USDT", "1m", since=since, limit=500)
        assert page
        got += page
        since = page[-1][0] + MINUTE_MS
    closed = [c for c in got if c[0] + MINUTE_MS <= sim.clock.now_ms()]
    truth = sim.candles("ETHUSDT", "1m", start, SIM_START_MS)
    assert closed == [ohlcv_of(r) for r in truth]
    assert len(truth) == 1200 and sim.stats.requests >= 4
    # The same request, parsed by our parser, gives the same numbers.
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (
            await client.get(
                "/fapi/v1/klines",
                params={"symbol": "ETHUSDT", "interval": "1m", "startTime": start, "limit": 500},
            )
        ).content
    ours = parse_kline_rows("ETHUSDT", "1m", body)
    assert [ohlcv_of_candle(c) for c in ours] == got[:500]
    assert [c.quote_volume for c in ours] == [Decimal(r[7]) for r in truth[:500]]


async def test_ccxt_daily_and_monthly_history(sim: Simulator, ccxt_rest: Any) -> None:
    """Long intervals come back to the listing, consistent with the truth."""
    await ccxt_rest.load_markets()
    daily = await ccxt_rest.fetch_ohlcv("BNB/USDT:USDT", "1d", since=0, limit=1500)
    spec = sim.market.specs["BNBUSDT"]
    assert daily[0][0] == Interval("1d").floor(spec.onboard_ms)
    truth = sim.candles("BNBUSDT", "1d", 0, daily[-1][0])
    assert daily[: len(truth)] == [ohlcv_of(r) for r in truth]
    monthly = await ccxt_rest.fetch_ohlcv("BNB/USDT:USDT", "1M", since=0, limit=100)
    assert [m[0] for m in monthly[:-1]] == [
        r[0] for r in sim.candles("BNBUSDT", "1M", 0, sim.clock.now_ms())
    ]


async def test_ccxt_pro_watch_ohlcv(make_sim: MakeSim) -> None:
    """ccxt.pro connects to /market/ws/<n>, SUBSCRIBEs and receives live and closed candles."""
    sim = await make_sim(ws_tick_ms=50)
    exchange = ccxt_pro.binanceusdm({"options": {"fetchMarkets": ["linear"]}})
    point_at(exchange, sim)
    try:
        first = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USDT:USDT", "1m"), 5)
        open_ms = Interval("1m").floor(sim.clock.now_ms())
        assert first[-1][0] == open_ms
        sim.clock.advance(MINUTE_MS)
        seen: dict[int, list[float]] = {}
        async with asyncio.timeout(5):
            while open_ms + MINUTE_MS not in seen:
                for candle in await exchange.watch_ohlcv("BTC/USDT:USDT", "1m"):
                    seen[candle[0]] = candle
        final = sim.candles("BTCUSDT", "1m", open_ms, open_ms + 1)[0]
        assert seen[open_ms] == ohlcv_of(final)
    finally:
        await exchange.close()
    assert sim.stats.ws_connections_total == 1


async def test_our_stream_parser_reads_the_finals(make_sim: MakeSim) -> None:
    """Our parser turns the simulator's combined final into the same candle as REST's row."""
    sim = await make_sim(ws_tick_ms=50)
    url = f"{sim.ws_url}/stream?streams=solusdt@kline_15m"
    async with websockets.connect(url) as ws:
        sim.clock.advance(15 * MINUTE_MS)
        async with asyncio.timeout(5):
            while True:
                event = parse_stream_message(await ws.recv())
                if isinstance(event, KlineEvent) and event.closed:
                    break
    assert event.stream == "solusdt@kline_15m"
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (
            await client.get(
                "/fapi/v1/klines",
                params={
                    "symbol": "SOLUSDT",
                    "interval": "15m",
                    "startTime": event.candle.open_time,
                    "limit": 1,
                },
            )
        ).content
    assert parse_kline_rows("SOLUSDT", "15m", body) == [event.candle]


async def test_binance_futures_connector_klines(sim: Simulator) -> None:
    """binance-futures-connector's UMFutures reads the same rows as the truth, exactly."""
    client = UMFutures(base_url=sim.rest_url)
    start = SIM_START_MS - 48 * HOUR_MS
    rows = await asyncio.to_thread(client.klines, "XRPUSDT", "1h", startTime=start, limit=30)
    assert rows == sim.candles("XRPUSDT", "1h", start, start + 30 * HOUR_MS)
    server_time = await asyncio.to_thread(client.time)
    assert abs(server_time["serverTime"] - sim.clock.now_ms()) < 1000
    ours = parse_kline_rows("XRPUSDT", "1h", orjson.dumps(rows))
    assert [str(c.volume) for c in ours] == [r[5] for r in rows]

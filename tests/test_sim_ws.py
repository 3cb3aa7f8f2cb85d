"""The simulator's WebSocket streams over loopback: routes, control messages, finals, keepalive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from qryptify_ingestor.domain import MINUTE_MS, Interval
from qryptify_ingestor.sim import Simulator, generated_symbols
from tests.sim_plugin import SIM_START_MS, MakeSim

Event = dict[str, Any]


async def fast_sim(make_sim: MakeSim, **kwargs: Any) -> Simulator:
    kwargs.setdefault("ws_tick_ms", 50)
    return await make_sim(**kwargs)


async def next_json(ws: websockets.ClientConnection, wait_s: float = 2.0) -> Event:
    message: Event = orjson.loads(await asyncio.wait_for(ws.recv(), wait_s))
    return message


async def collect(
    ws: websockets.ClientConnection, done: Callable[[list[Event]], bool], wait_s: float = 3.0
) -> list[Event]:
    """Receive messages until `done(messages)` holds."""
    out: list[Event] = []
    async with asyncio.timeout(wait_s):
        while not done(out):
            out.append(orjson.loads(await ws.recv()))
    return out


async def silent_for(ws: websockets.ClientConnection, seconds: float) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    return False


def row_of(k: Event) -> list[object]:
    """A kline event's `k` as a REST row (binance-futures.md §4.3 mapping)."""
    return [
        k["t"],
        k["o"],
        k["h"],
        k["l"],
        k["c"],
        k["v"],
        k["T"],
        k["q"],
        k["n"],
        k["V"],
        k["Q"],
        "0",
    ]


def finals(messages: list[Event]) -> list[Event]:
    return [m["data"]["k"] if "data" in m else m["k"] for m in messages if _k(m).get("x")]


def _k(m: Event) -> Event:
    data = m.get("data", m)
    k: Event = data.get("k", {})
    return k


async def test_combined_stream_updates_and_finals_equal_rest(make_sim: MakeSim) -> None:
    """Combined envelope; ~250 ms updates while open; finals after a jump equal REST, in order."""
    sim = await fast_sim(make_sim)
    url = f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@kline_5m"
    async with websockets.connect(url) as ws:
        first = await next_json(ws)
        assert first["stream"] in ("btcusdt@kline_1m", "ethusdt@kline_5m")
        data = first["data"]
        assert data["e"] == "kline" and data["k"]["x"] is False
        assert data["k"]["T"] > data["E"] >= data["k"]["t"]
        sim.clock.advance(5 * MINUTE_MS)
        messages = await collect(
            ws, lambda ms: len([m for m in ms if _k(m).get("x")]) >= 6, wait_s=3
        )
    by_stream: dict[str, list[Event]] = {}
    for m in messages:
        if m["data"]["k"]["x"]:
            by_stream.setdefault(m["stream"], []).append(m["data"]["k"])
    base = Interval("1m").floor(SIM_START_MS)
    assert [k["t"] for k in by_stream["btcusdt@kline_1m"]] == [
        base + i * MINUTE_MS for i in range(5)
    ]
    truth = sim.candles("BTCUSDT", "1m", base, base + 5 * MINUTE_MS)
    assert [row_of(k) for k in by_stream["btcusdt@kline_1m"]] == truth
    eth = by_stream["ethusdt@kline_5m"]
    assert [row_of(k) for k in eth] == sim.candles("ETHUSDT", "5m", base, base + 5 * MINUTE_MS)
    assert (("BTCUSDT", "1m", base) in sim.final_sent_at) and sim.stats.ws_finals_sent >= 6


async def test_final_follows_real_close(make_sim: MakeSim) -> None:
    """Without jumps, the final goes out right after the candle's close time."""
    sim = await fast_sim(make_sim, start_ms=Interval("1m").floor(SIM_START_MS) + 59_700)
    async with websockets.connect(f"{sim.ws_url}/ws/solusdt@kline_1m") as ws:
        messages = await collect(ws, lambda ms: bool(ms) and bool(ms[-1]["k"]["x"]), wait_s=2)
    k = messages[-1]["k"]
    assert messages[-1]["E"] > k["T"] and messages[-1]["E"] - k["T"] < 200
    assert row_of(k) == sim.candles("SOLUSDT", "1m", k["t"], k["t"] + 1)[0]


async def test_raw_and_chained_paths(make_sim: MakeSim) -> None:
    """/market/ws/<a>/<b> sends bare events of both streams."""
    sim = await fast_sim(make_sim)
    async with websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m/bnbusdt@kline_1h") as ws:
        messages = await collect(ws, lambda ms: len({m["s"] for m in ms}) == 2)
    assert all("stream" not in m and m["e"] == "kline" for m in messages)
    assert {m["k"]["i"] for m in messages} == {"1m", "1h"}


async def test_subscribe_list_properties_unsubscribe(make_sim: MakeSim) -> None:
    """SUBSCRIBE/LIST/SET_PROPERTY/GET_PROPERTY/UNSUBSCRIBE answer as documented (§4.5)."""
    sim = await fast_sim(make_sim)
    async with websockets.connect(f"{sim.ws_url}/ws/0") as ws:  # ccxt's URL shape
        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}')
        assert await next_json(ws) == {"result": None, "id": 1}
        assert (await next_json(ws))["k"]["s"] == "BTCUSDT"
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        await ws.send('{"method":"GET_PROPERTY","params":["combined"],"id":4}')
        await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":5}')
        replies = await collect(ws, lambda ms: len([m for m in ms if "id" in m]) == 3)
        assert [m for m in replies if "id" in m] == [
            {"result": ["btcusdt@kline_1m"], "id": 3},
            {"result": False, "id": 4},
            {"result": None, "id": 5},
        ]
        assert (await next_json(ws))["stream"] == "btcusdt@kline_1m"
        await ws.send('{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":6}')
        await collect(ws, lambda ms: bool(ms) and ms[-1].get("id") == 6)
        assert await silent_for(ws, 0.3)


@pytest.mark.parametrize(
    ("request_text", "code"),
    [
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":"x"}', 2),
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":-1}', 2),
        ('{"params":[],"id":1}', 2),
        ('{"method":"HELLO","id":1}', 2),
        ('{"method":"SET_PROPERTY","params":["colour",true],"id":1}', 0),
        ('{"method":"SET_PROPERTY","params":["combined",1],"id":1}', 1),
        ('{"method":"SET_PROPERTY","params":[5,true],"id":1}', 2),
    ],
)
async def test_control_errors(sim: Simulator, request_text: str, code: int) -> None:
    """Bad control requests get the documented error codes and the connection stays."""
    async with websockets.connect(f"{sim.ws_url}/ws") as ws:
        await ws.send(request_text)
        reply = await next_json(ws)
        assert reply["error"]["code"] == code
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":9}')
        assert await next_json(ws) == {"result": [], "id": 9}


async def test_invalid_json_disconnects(sim: Simulator) -> None:
    """Invalid JSON gets error code 3 and a disconnect."""
    async with websockets.connect(f"{sim.ws_url}/ws") as ws:
        await ws.send("{nope")
        assert (await next_json(ws))["error"]["code"] == 3
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_unrouted_paths_ack_but_stay_silent(make_sim: MakeSim) -> None:
    """Legacy /ws and /stream accept kline subscriptions and never send kline data."""
    sim = await fast_sim(make_sim)
    base = sim.rest_url.replace("http", "ws")
    async with websockets.connect(f"{base}/ws") as ws:
        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":7}')
        assert await next_json(ws) == {"result": None, "id": 7}
        sim.clock.advance(2 * MINUTE_MS)
        assert await silent_for(ws, 0.4)
    async with websockets.connect(f"{base}/stream?streams=btcusdt@kline_1m") as ws:
        assert await silent_for(ws, 0.3)


async def test_lifetime_disconnect(make_sim: MakeSim) -> None:
    """Connections are closed when their lifetime ends."""
    sim = await fast_sim(make_sim, ws_lifetime_s=0.3)
    async with websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_server_pings_and_pong_deadline(make_sim: MakeSim) -> None:
    """The server pings; a client that never pongs is dropped; client pings are answered."""
    sim = await fast_sim(make_sim, ws_ping_interval_s=0.1, ws_pong_timeout_s=0.4)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{sim.ws_url}/ws", autoping=False) as ws,
    ):
        await ws.ping(b"hello")
        kinds = []
        async with asyncio.timeout(3):
            async for msg in ws:
                kinds.append(msg.type)
                if msg.type == aiohttp.WSMsgType.PONG:
                    assert msg.data == b"hello"
        assert aiohttp.WSMsgType.PING in kinds and aiohttp.WSMsgType.PONG in kinds
        assert ws.close_code == 1008
    # A client that answers pings (websockets does) stays connected past the deadline.
    async with websockets.connect(f"{sim.ws_url}/ws", ping_interval=None) as ws:
        assert await silent_for(ws, 0.8)
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert await next_json(ws) == {"result": [], "id": 1}


async def test_incoming_message_rate_limit(sim: Simulator) -> None:
    """More than 10 incoming messages in a second closes the connection."""
    async with websockets.connect(f"{sim.ws_url}/ws") as ws:
        for i in range(11):
            await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(2):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_stream_count_limit(make_sim: MakeSim) -> None:
    """More streams than allowed per connection: SUBSCRIBE refused, URL rejected."""
    sim = await make_sim(ws_max_streams=3)
    names = [f"{s}@kline_1m" for s in ("btcusdt", "ethusdt", "bnbusdt", "solusdt")]
    async with websockets.connect(f"{sim.ws_url}/ws") as ws:
        await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}).decode())
        assert (await next_json(ws))["error"]["code"] == 2
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{sim.ws_url}/stream?streams={'/'.join(names)}")


async def test_many_streams_share_bytes(make_sim: MakeSim) -> None:
    """Hundreds of streams over two connections: every final arrives, byte-identical."""
    gen = await fast_sim(
        make_sim, symbols=generated_symbols(150, onboard_ms=SIM_START_MS - 86_400_000)
    )
    names = [f"{s.lower()}@kline_{i}" for s in gen.market.specs for i in ("1m", "5m")]
    url = f"{gen.ws_url}/stream?streams={'/'.join(names)}"
    async with (
        websockets.connect(url, max_size=None) as a,
        websockets.connect(url, max_size=None) as b,
    ):
        await next_json(a)
        gen.clock.advance(MINUTE_MS)

        async def finals_of(ws: websockets.ClientConnection) -> list[str | bytes]:
            out: list[str | bytes] = []
            async with asyncio.timeout(5):
                while len(out) < 150:
                    raw = await ws.recv()
                    if '"x":true' in str(raw):
                        out.append(raw)
            return out

        fa, fb = await asyncio.gather(finals_of(a), finals_of(b))
    assert sorted(map(str, fa)) == sorted(map(str, fb))
    assert gen.stats.ws_connections_total == 2


async def test_fault_drop_only_carriers(make_sim: MakeSim) -> None:
    """ws_drop(stream) closes the connections carrying that stream and leaves the others."""
    sim = await fast_sim(make_sim)
    async with (
        websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m") as carrier,
        websockets.connect(f"{sim.ws_url}/ws/ethusdt@kline_1m") as other,
    ):
        await next_json(carrier)
        assert sim.faults.ws_drop("btcusdt@kline_1m") == 1
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(2):
                while True:
                    await carrier.recv()
        assert (await next_json(other))["s"] == "ETHUSDT"
        assert sim.faults.ws_drop(abrupt=True) == 1
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(2):
                while True:
                    await other.recv()


async def test_fault_stall_keeps_pings(make_sim: MakeSim) -> None:
    """A stall stops data but the connection keeps answering pings; data resumes after."""
    sim = await fast_sim(make_sim)
    async with websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m", ping_interval=None) as ws:
        await next_json(ws)
        sim.faults.ws_stall(0.6)
        await asyncio.sleep(0.1)
        while not await silent_for(ws, 0.06):  # drain what was queued before the stall
            pass
        assert await silent_for(ws, 0.3)
        pong = await ws.ping()
        await asyncio.wait_for(pong, 1)
        assert (await next_json(ws, wait_s=2))["s"] == "BTCUSDT"


async def test_fault_duplicate_and_late_finals(make_sim: MakeSim) -> None:
    """Duplicate finals arrive twice; a late final arrives after the next candle's first update."""
    sim = await fast_sim(make_sim)
    async with websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m") as ws:
        await next_json(ws)
        sim.faults.ws_duplicate_finals(1)
        sim.clock.advance(MINUTE_MS)
        messages = await collect(ws, lambda ms: len(finals(ms)) == 2)
        assert finals(messages)[0] == finals(messages)[1]
        sim.faults.ws_late_finals(1)
        sim.clock.advance(MINUTE_MS)
        late = await collect(ws, lambda ms: len(finals(ms)) == 1)
    final_t = finals(late)[0]["t"]
    updates_after = [m["k"]["t"] for m in late if not m["k"]["x"]]
    assert final_t + MINUTE_MS in updates_after  # the next candle's update came first


async def test_fault_silent_symbol(make_sim: MakeSim) -> None:
    """A symbol that never trades on WS: subscription acknowledged, nothing sent."""
    sim = await fast_sim(make_sim)
    sim.faults.ws_silent("XRPUSDT")
    async with websockets.connect(f"{sim.ws_url}/stream?streams=xrpusdt@kline_1m") as ws:
        sim.clock.advance(MINUTE_MS)
        assert await silent_for(ws, 0.4)


async def test_gap_has_no_ws_data(make_sim: MakeSim) -> None:
    """During an exchange gap the stream sends nothing, neither updates nor finals."""
    sim = await fast_sim(make_sim)
    now = sim.clock.now_ms()
    sim.faults.exchange_gap(now - MINUTE_MS, now + 2 * MINUTE_MS, "BTCUSDT")
    async with websockets.connect(f"{sim.ws_url}/ws/btcusdt@kline_1m") as ws:
        assert await silent_for(ws, 0.3)
        sim.clock.advance(3 * MINUTE_MS)
        messages = await collect(ws, lambda ms: len(ms) >= 2)
    assert all(m["k"]["t"] >= Interval("1m").floor(now + 2 * MINUTE_MS) for m in messages)


async def test_refused_handshake(sim: Simulator) -> None:
    """ws_refuse makes the next handshake fail with HTTP 503."""
    sim.faults.ws_refuse(1)
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{sim.ws_url}/ws")
    async with websockets.connect(f"{sim.ws_url}/ws"):
        pass

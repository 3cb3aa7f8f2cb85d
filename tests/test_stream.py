"""KlineStreams: pure decisions without a loop, then the adapter against real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from qryptify_ingestor.binance.parse import KlineEvent
from qryptify_ingestor.binance.protocol import combined_stream_url
from qryptify_ingestor.binance.stream import (
    AttemptWindow,
    KlineStreams,
    Resync,
    StreamItem,
    StreamsUp,
    classify_connect_error,
    connection_verdict,
    overdue_keys,
    shard_keys,
    validate_ws_base,
)
from qryptify_ingestor.domain import MINUTE_MS, StreamKey
from qryptify_ingestor.errors import ConfigError, ExchangeRejected, RestrictedLocation
from qryptify_ingestor.observe import Observer
from tests.sim_plugin import SIM_START_MS, MakeSim

BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "5m")
T0 = 1_700_000_040_000  # a 1m boundary; _open_time() aligns per interval


def _open_time(key: StreamKey, n: int) -> int:
    step = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS}[key.interval]
    return (T0 // step) * step + n * step


def kline(key: StreamKey, n: int = 0, *, closed: bool = True, pad: int = 0) -> str:
    """A combined-stream kline frame as Binance sends it (UM:ws/Kline-Candlestick-Streams)."""
    t = _open_time(key, n)
    step = _open_time(key, 1) - _open_time(key, 0)
    k = {
        "t": t,
        "T": t + step - 1,
        "s": key.symbol,
        "i": key.interval,
        "f": 1,
        "L": 2,
        "o": "100.0",
        "c": "101.0",
        "h": "102.0",
        "l": "99.0",
        "v": "1.5",
        "n": 2,
        "x": closed,
        "q": "150.0",
        "V": "0.5",
        "Q": "50.0",
        "B": "0" * max(1, pad),
    }
    data = {"e": "kline", "E": t + step, "s": key.symbol, "k": k}
    return orjson.dumps({"stream": key.stream_name, "data": data}).decode()


Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_binance(
    handler: Handler, **kwargs: object
) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A real loopback WebSocket server; yields (route base ws://…/market, connections seen)."""
    seen: list[ServerConnection] = []

    async def wrapped(ws: ServerConnection) -> None:
        seen.append(ws)
        with contextlib.suppress(ConnectionClosed):
            await handler(ws)

    server: Server
    async with serve(wrapped, "127.0.0.1", 0, **kwargs) as server:  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/market", seen


@contextlib.asynccontextmanager
async def running(streams: KlineStreams) -> AsyncIterator[KlineStreams]:
    """Run `streams` in a task group for the block, then stop it with aclose()."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(streams.run())
        try:
            yield streams
        finally:
            await streams.aclose()


async def take(streams: KlineStreams, n: int, timeout_s: float = 3.0) -> list[StreamItem]:
    out: list[StreamItem] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < n:
            out.append(await streams.get())
    return out


def fast(ws_base: str, keys: list[StreamKey], **kwargs: object) -> KlineStreams:
    """KlineStreams with test-sized timeouts; finals are never overdue unless a test says so."""
    opts: dict[str, object] = {
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "silence_timeout_s": 2.0,
        "stream_close_margin_s": 3600.0,
        "close_timeout_s": 1.0,
    }
    opts.update(kwargs)
    return KlineStreams(ws_base, keys, **opts)  # type: ignore[arg-type]


async def hold_open(ws: ServerConnection) -> None:
    await ws.wait_closed()


# --- pure helpers -----------------------------------------------------------------------------


def test_shard_keys_balances_dedupes_and_bounds_url_length() -> None:
    """Shards are balanced, duplicates dropped, and no shard's URL exceeds the byte bound."""
    keys = [StreamKey(f"S{i:03d}USDT", "1m") for i in range(450)]
    shards = shard_keys([*keys, keys[0]], ws_base="wss://h/market", max_per_connection=200)
    assert [len(s) for s in shards] == [150, 150, 150]
    assert [k for s in shards for k in s] == keys
    small = shard_keys(keys, ws_base="wss://h/market", max_url_bytes=1000)
    assert all(
        len(combined_stream_url("wss://h/market", [k.stream_name for k in s])) <= 1000
        for s in small
    )
    assert [k for s in small for k in s] == keys
    with pytest.raises(ConfigError):
        shard_keys(keys, ws_base="wss://h/market", max_per_connection=1025)


def test_attempt_window_limits_attempts_per_window() -> None:
    """The N+1th attempt within the window waits until the oldest one leaves it."""
    w = AttemptWindow(2, window_s=300)
    for t in (0.0, 10.0):
        assert w.wait_s(t) == 0
        w.record(t)
    assert w.wait_s(20.0) == 280.0
    assert w.wait_s(300.0) == 0


def test_connection_verdict_silence_then_lifetime() -> None:
    """Silence past the timeout, or age past the lifetime, mean replace; otherwise keep."""
    kw = {"silence_timeout_s": 30.0, "lifetime_s": 100.0}
    assert connection_verdict(now_s=50, opened_at_s=0, last_message_s=40, **kw) is None
    assert connection_verdict(now_s=71, opened_at_s=0, last_message_s=40, **kw) == "silence"
    assert connection_verdict(now_s=100, opened_at_s=0, last_message_s=99, **kw) == "lifetime"


def test_overdue_keys_needs_a_final_per_interval_plus_margin() -> None:
    """A key is overdue once a candle closed while connected and its final is margin late."""
    m0 = 100 * MINUTE_MS
    kw = {"connected_at_ms": m0 + 10_000, "margin_ms": 30_000}
    # The candle open at m0 closes at m0+1min; its final is due by m0+1min+30s.
    assert overdue_keys([BTC], {}, now_ms=m0 + MINUTE_MS + 29_000, **kw) == []
    assert overdue_keys([BTC], {}, now_ms=m0 + MINUTE_MS + 30_000, **kw) == [BTC]
    assert overdue_keys([BTC], {BTC: m0}, now_ms=m0 + MINUTE_MS + 30_000, **kw) == []
    assert overdue_keys([BTC], {BTC: m0}, now_ms=m0 + 2 * MINUTE_MS + 31_000, **kw) == [BTC]
    # A 5m stream owes nothing yet at the same instants.
    assert overdue_keys([ETH], {}, now_ms=m0 + MINUTE_MS + 30_000, **kw) == []
    # A candle that closed before we connected is REST's job, not this connection's.
    late = {"connected_at_ms": m0 + MINUTE_MS + 5_000, "margin_ms": 30_000}
    assert overdue_keys([BTC], {}, now_ms=m0 + MINUTE_MS + 40_000, **late) == []


def test_ws_base_requires_tls_off_loopback() -> None:
    """ws:// is refused for a non-loopback host unless allow_insecure; other schemes refused."""
    assert validate_ws_base("wss://fstream.binance.com/market/") == (
        "wss://fstream.binance.com/market"
    )
    assert validate_ws_base("ws://127.0.0.1:9/market") == "ws://127.0.0.1:9/market"
    assert validate_ws_base("ws://[::1]:9/market") == "ws://[::1]:9/market"
    with pytest.raises(ConfigError, match="loopback"):
        validate_ws_base("ws://fstream.binance.com/market")
    with pytest.raises(ConfigError, match="loopback"):
        KlineStreams("ws://10.0.0.1/market", [BTC])
    assert validate_ws_base("ws://10.0.0.1/market", allow_insecure=True)
    with pytest.raises(ConfigError):
        validate_ws_base("https://fstream.binance.com/market")


def test_classify_connect_error_retries_transients_only() -> None:
    """Network errors and 5xx/429 are retried; 451/other 4xx on the handshake are fatal."""
    assert classify_connect_error(OSError("refused")) is None
    assert classify_connect_error(TimeoutError()) is None
    assert classify_connect_error(InvalidStatus(Response(503, "x", {}))) is None  # type: ignore[arg-type]
    assert classify_connect_error(InvalidStatus(Response(429, "x", {}))) is None  # type: ignore[arg-type]
    assert isinstance(
        classify_connect_error(InvalidStatus(Response(451, "x", {}))),  # type: ignore[arg-type]
        RestrictedLocation,
    )
    assert isinstance(
        classify_connect_error(InvalidStatus(Response(404, "x", {}))),  # type: ignore[arg-type]
        ExchangeRejected,
    )


# --- against loopback servers -----------------------------------------------------------------


async def test_connects_to_combined_url_under_market_and_yields_finals() -> None:
    """One connection to /market/stream?streams=…; StreamsUp first, then only closed klines."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(kline(BTC, 0, closed=False))
        await ws.send(kline(BTC, 0, closed=True))
        await ws.send(kline(ETH, 0, closed=True))
        await hold_open(ws)

    async with fake_binance(handler) as (base, seen), running(fast(base, [BTC, ETH])) as s:
        items = await take(s, 3)
        assert seen[0].request is not None
        assert seen[0].request.path == "/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_5m"
        assert items[0] == StreamsUp((BTC, ETH), "connect")
        events = [i for i in items if isinstance(i, KlineEvent)]
        assert [(e.stream, e.closed) for e in events] == [
            ("btcusdt@kline_1m", True),
            ("ethusdt@kline_5m", True),
        ]
        stats = s.statistics()
        assert stats.connections == 1 and stats.messages == 3
        assert stats.last_event_ms[BTC] == _open_time(BTC, 1)
    # aclose() ended the connection with a normal close frame.
    assert seen[0].close_code == 1000


async def test_closed_only_false_yields_open_candle_updates_too() -> None:
    """With closed_only=False every kline push (x=false and x=true) is passed on."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(kline(BTC, 0, closed=False))
        await ws.send(kline(BTC, 0, closed=True))
        await hold_open(ws)

    async with (
        fake_binance(handler) as (base, _),
        running(fast(base, [BTC], closed_only=False)) as s,
    ):
        items = await take(s, 3)
        assert [i.closed for i in items if isinstance(i, KlineEvent)] == [False, True]


async def test_server_drop_yields_resync_then_streams_up_after_reconnect() -> None:
    """A server close (1001) gives Resync, a backed-off reconnect, and StreamsUp again."""

    async def handler(ws: ServerConnection) -> None:
        n = len(seen)
        await ws.send(kline(BTC, n))
        if n == 1:
            await ws.close(1001, "going away")
        await hold_open(ws)

    async with fake_binance(handler) as (base, seen), running(fast(base, [BTC])) as s:
        items = await take(s, 5)
        assert items[0] == StreamsUp((BTC,), "connect")
        assert isinstance(items[1], KlineEvent)
        assert isinstance(items[2], Resync) and "1001" in items[2].reason
        assert items[3] == StreamsUp((BTC,), "reconnect after server close")
        assert isinstance(items[4], KlineEvent) and items[4].candle.open_time == _open_time(BTC, 2)
        assert s.statistics().reconnects == 1
        assert len(seen) == 2


async def test_reconnect_attempts_are_bounded_per_window() -> None:
    """With nothing listening, attempts stop at max_reconnects_per_5min and then wait."""
    async with fake_binance(hold_open) as (base, _):
        pass  # the port is free again: every attempt is refused
    s = fast(base, [BTC], max_reconnects_per_5min=3, backoff_max_s=0.01)
    async with running(s):
        await asyncio.sleep(0.5)
        assert s.statistics().reconnects == 2  # 3 attempts in all: the first plus 2 retries
        assert s.statistics().connections == 0


async def test_silent_connection_is_replaced() -> None:
    """A connection that stays open and answers pings but sends nothing is replaced."""

    async def handler(ws: ServerConnection) -> None:
        n = len(seen)
        await ws.send(kline(BTC, n))
        if n > 1:
            await ws.send(kline(BTC, n + 10))
        await hold_open(ws)  # pings are answered by websockets; data stops

    async with fake_binance(handler) as (base, seen):
        streams = fast(base, [BTC], silence_timeout_s=0.4, ping_interval_s=0.1)
        async with running(streams):
            items = await take(streams, 6)
            kinds = [type(i).__name__ for i in items]
            assert kinds == [
                "StreamsUp",
                "KlineEvent",
                "Resync",
                "StreamsUp",
                "KlineEvent",
                "KlineEvent",
            ]
            resync = items[2]
            assert isinstance(resync, Resync) and resync.reason.startswith("silence")
            assert items[3] == StreamsUp((BTC,), "reconnect after silence")
            assert streams.statistics().stalls == 1
            # We closed the stalled connection ourselves, cleanly.
            await asyncio.wait_for(seen[0].wait_closed(), 1.0)
            assert seen[0].close_code == 1000


async def test_lifetime_rotation_is_make_before_break() -> None:
    """Rotation opens the new connection and waits for its data before closing the old one."""
    log: list[tuple[str, int, float]] = []
    loop = asyncio.get_running_loop()

    async def handler(ws: ServerConnection) -> None:
        n = len(seen)
        log.append(("open", n, loop.time()))
        try:
            for i in range(1000):
                await ws.send(kline(BTC, n * 1000 + i))
                if i == 0:
                    log.append(("first", n, loop.time()))
                await asyncio.sleep(0.01)
        finally:
            log.append(("closed", n, loop.time()))

    async with fake_binance(handler) as (base, seen):
        streams = fast(base, [BTC], lifetime_s=0.3)
        async with running(streams):
            stamps: list[float] = []
            items: list[StreamItem] = []
            async with asyncio.timeout(3):
                while sum(isinstance(i, StreamsUp) for i in items) < 3:
                    items.append(await streams.get())
                    stamps.append(loop.time())
    assert not any(isinstance(i, Resync) for i in items)
    assert [i.reason for i in items if isinstance(i, StreamsUp)] == ["connect", "rotate", "rotate"]
    # Events never paused for long: no gap anywhere near a reconnect's worth.
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 0.15
    when = {(what, n): t for what, n, t in log}
    # Connection 2 opened and sent data before connection 1 was closed: they overlapped.
    assert when[("open", 2)] < when[("first", 2)] < when[("closed", 1)]
    assert seen[0].close_code == 1000


async def test_keys_beyond_max_per_connection_are_sharded() -> None:
    """Five keys at two per connection use three connections, each with its own URL."""
    keys = [StreamKey(f"S{i}USDT", "1m") for i in range(5)]

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        for name in ws.request.path.split("streams=")[1].split("/"):
            key = next(k for k in keys if k.stream_name == name)
            await ws.send(kline(key, 0))
        await hold_open(ws)

    async with (
        fake_binance(handler) as (base, seen),
        running(fast(base, keys, max_streams_per_connection=2)) as s,
    ):
        items = await take(s, 8)
        ups = [i for i in items if isinstance(i, StreamsUp)]
        assert sorted(len(u.keys) for u in ups) == [1, 2, 2]
        assert sorted(str(k) for u in ups for k in u.keys) == sorted(map(str, keys))
        assert len({e.stream for e in items if isinstance(e, KlineEvent)}) == 5
        assert len(seen) == 3 and s.statistics().connections == 3


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.malformed_keys: list[StreamKey] = []
        self.stalls = 0

    def malformed(self, key: StreamKey, source: str) -> None:
        self.malformed_keys.append(key)

    def ws_stall(self) -> None:
        self.stalls += 1


async def test_malformed_frames_are_skipped_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage and invalid klines are counted per key, logged with an excerpt, never yielded."""
    bad_ohlc = kline(BTC, 0).replace('"h":"102.0"', '"h":"1.0"')

    async def handler(ws: ServerConnection) -> None:
        await ws.send("not json at all")
        await ws.send(bad_ohlc)
        await ws.send(kline(BTC, 1))
        await hold_open(ws)

    obs = RecordingObserver()
    with caplog.at_level(logging.WARNING, logger="qryptify_ingestor.binance.stream"):
        async with (
            fake_binance(handler) as (base, _),
            running(fast(base, [BTC], observer=obs)) as s,
        ):
            items = await take(s, 2)
            assert isinstance(items[0], StreamsUp)
            assert isinstance(items[1], KlineEvent)
            assert items[1].candle.open_time == _open_time(BTC, 1)
            assert s.statistics().malformed == 2
    assert obs.malformed_keys == [StreamKey("?", "?"), BTC]
    assert "not json at all" in caplog.text


async def test_oversized_message_closes_with_1009_and_reconnects() -> None:
    """A frame above max_message_bytes is refused (close 1009), then the shard reconnects."""

    async def handler(ws: ServerConnection) -> None:
        n = len(seen)
        await ws.send(kline(BTC, n))
        if n == 1:
            await ws.send(kline(BTC, 5, pad=4096))
        await hold_open(ws)

    async with (
        fake_binance(handler) as (base, seen),
        running(fast(base, [BTC], max_message_bytes=2048)) as s,
    ):
        items = await take(s, 5)
        assert isinstance(items[2], Resync) and "sent 1009" in items[2].reason
        assert isinstance(items[3], StreamsUp)
        assert seen[0].close_code == 1009


async def test_overdue_final_replaces_connection() -> None:
    """Pushes keep coming but no x=true within interval + margin: Resync and reconnect."""
    now = [T0 / 1000 + 10]

    async def handler(ws: ServerConnection) -> None:
        while True:  # open-candle updates only, as a half-stalled stream does
            await ws.send(kline(BTC, 0, closed=False))
            await asyncio.sleep(0.02)

    obs = RecordingObserver()
    async with fake_binance(handler) as (base, seen):
        streams = fast(
            base,
            [BTC],
            stream_close_margin_s=5.0,
            silence_timeout_s=1.0,
            clock=lambda: now[0],
            observer=obs,
        )
        async with running(streams):
            assert isinstance(await streams.get(), StreamsUp)
            now[0] += 60  # past the close at T0+60s and its 5 s margin
            items = await take(streams, 2)
            assert isinstance(items[0], Resync)
            assert items[0].reason == f"overdue final for {BTC}"
            assert items[1] == StreamsUp((BTC,), "reconnect after overdue final")
            assert obs.stalls == 1 and len(seen) == 2


async def test_full_queue_applies_backpressure_without_dropping() -> None:
    """With a tiny queue and a slow consumer every event still arrives, in order."""

    async def handler(ws: ServerConnection) -> None:
        for i in range(40):
            await ws.send(kline(BTC, i))
        await hold_open(ws)

    async with fake_binance(handler) as (base, _), running(fast(base, [BTC], max_queue=2)) as s:
        await asyncio.sleep(0.2)  # let the readers fill the queue and block
        assert s.statistics().queued == 2
        items = s.drain()  # takes what is queued without waiting; the readers resume
        assert len(items) == 2
        items += await take(s, 39)
        opens = [i.candle.open_time for i in items if isinstance(i, KlineEvent)]
        assert opens == [_open_time(BTC, i) for i in range(40)]
        assert not any(isinstance(i, Resync) for i in items)


async def test_handshake_451_is_fatal() -> None:
    """An HTTP 451 on the handshake stops run() with RestrictedLocation instead of retrying."""

    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(451, "restricted location\n")

    async with fake_binance(hold_open, process_request=refuse) as (base, _):
        with pytest.raises(RestrictedLocation):
            await asyncio.wait_for(fast(base, [BTC]).run(), 3)


async def test_cancelling_run_closes_connections_cleanly() -> None:
    """Cancelling the run() task (the service's shutdown path) sends a normal close frame."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(kline(BTC, 0))
        await hold_open(ws)

    async with fake_binance(handler) as (base, seen):
        streams = fast(base, [BTC])
        task = asyncio.create_task(streams.run())
        got: list[StreamItem] = []
        async with asyncio.timeout(3):
            async for item in streams.events():
                got.append(item)
                if isinstance(item, KlineEvent):
                    break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen[0].wait_closed(), 1.0)
    assert isinstance(got[0], StreamsUp)
    assert seen[0].close_code == 1000
    assert streams.statistics().connections == 0


# --- against the simulator (qryptify_ingestor.sim) --------------------------------------------

SIM_BTC = StreamKey("BTCUSDT", "1m")
SIM_ETH = StreamKey("ETHUSDT", "1m")


async def until(
    streams: KlineStreams, done: Callable[[StreamItem], bool], timeout_s: float = 5.0
) -> list[StreamItem]:
    """Items up to and including the first one for which `done` is true."""
    out: list[StreamItem] = []
    async with asyncio.timeout(timeout_s):
        while not out or not done(out[-1]):
            out.append(await streams.get())
    return out


def is_up(item: StreamItem) -> bool:
    return isinstance(item, StreamsUp)


def is_final(item: StreamItem) -> bool:
    return isinstance(item, KlineEvent) and item.closed


async def test_sim_drop_mid_candle_resyncs_and_still_delivers_the_final(
    make_sim: MakeSim,
) -> None:
    """A server drop mid-candle gives Resync, a reconnect, and the candle's final afterwards."""
    sim = await make_sim()
    open_ms = MINUTE_MS * (SIM_START_MS // MINUTE_MS)
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False)
    async with running(streams):
        first = await until(streams, lambda i: isinstance(i, KlineEvent))
        assert first[0] == StreamsUp((SIM_BTC,), "connect")
        assert sim.faults.ws_drop() == 1
        items = await until(streams, is_up)
        resyncs = [i for i in items if isinstance(i, Resync)]
        assert len(resyncs) == 1 and "1001" in resyncs[0].reason
        assert items[-1] == StreamsUp((SIM_BTC,), "reconnect after server close")
        sim.clock.advance(MINUTE_MS)
        final = (await until(streams, is_final))[-1]
        assert isinstance(final, KlineEvent) and final.candle.open_time == open_ms


async def test_sim_abrupt_drop_without_close_frame_reconnects(make_sim: MakeSim) -> None:
    """A TCP reset (no close frame) is a loss too: Resync, then StreamsUp on a new connection."""
    sim = await make_sim()
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False)
    async with running(streams):
        await until(streams, lambda i: isinstance(i, KlineEvent))
        sim.faults.ws_drop(abrupt=True)
        items = await until(streams, is_up)
        assert any(isinstance(i, Resync) for i in items)
        assert streams.statistics().reconnects == 1


async def test_sim_stall_is_detected_and_replaced(make_sim: MakeSim) -> None:
    """A stalled feed (pings answered, no data) gives Resync and a fresh live connection."""
    sim = await make_sim()
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False, silence_timeout_s=0.4)
    async with running(streams):
        await until(streams, lambda i: isinstance(i, KlineEvent))
        sim.faults.ws_stall(1.0)
        items = await until(streams, is_up)
        resync = next(i for i in items if isinstance(i, Resync))
        assert resync.reason.startswith("silence")
        assert items[-1] == StreamsUp((SIM_BTC,), "reconnect after silence")
        assert streams.statistics().stalls >= 1


async def test_sim_one_stalled_stream_is_caught_by_its_overdue_final(make_sim: MakeSim) -> None:
    """One stream stalls while another flows: its missing final replaces the connection."""
    sim = await make_sim()
    streams = fast(
        sim.ws_url,
        [SIM_BTC, SIM_ETH],
        stream_close_margin_s=5.0,
        silence_timeout_s=60.0,  # keep the connection-wide watchdog out of this test
        clock=lambda: sim.clock.now_ms() / 1000,
    )
    async with running(streams):
        assert await streams.get() == StreamsUp((SIM_BTC, SIM_ETH), "connect")
        sim.faults.ws_stall(3600, stream=SIM_BTC.stream_name)
        sim.clock.advance(MINUTE_MS)  # ETH's final arrives, BTC's does not
        items = await until(streams, lambda i: isinstance(i, Resync), timeout_s=4)
        assert [i.candle.symbol for i in items if isinstance(i, KlineEvent)] == ["ETHUSDT"]
        resync = items[-1]
        assert isinstance(resync, Resync) and resync.reason == f"overdue final for {SIM_BTC}"


async def test_sim_duplicate_and_late_finals_are_passed_on_without_alarm(
    make_sim: MakeSim,
) -> None:
    """A final sent twice arrives twice; a late final (after the next update) is no stall."""
    sim = await make_sim()
    first_open = MINUTE_MS * (SIM_START_MS // MINUTE_MS)
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False)
    async with running(streams):
        await until(streams, lambda i: isinstance(i, KlineEvent))
        sim.faults.ws_duplicate_finals(1)
        sim.clock.advance(MINUTE_MS)
        items = await until(streams, is_final)
        items += await until(streams, lambda i: isinstance(i, KlineEvent))
        finals = [i.candle.open_time for i in items if is_final(i)]  # type: ignore[union-attr]
        assert finals == [first_open, first_open]

        sim.faults.ws_late_finals(1)
        sim.clock.advance(MINUTE_MS)
        items = await until(streams, is_final)
        kl = [i for i in items if isinstance(i, KlineEvent)]
        # The update of the next candle came first, then the late final of the previous one.
        assert kl[-1].candle.open_time == first_open + MINUTE_MS
        assert any(not e.closed and e.candle.open_time == first_open + 2 * MINUTE_MS for e in kl)
        assert not any(isinstance(i, Resync) for i in items)
        assert streams.statistics().stalls == 0


async def test_sim_lifetime_cut_reconnects(make_sim: MakeSim) -> None:
    """The server's forced lifetime disconnect (1001) is a loss: Resync, then StreamsUp."""
    sim = await make_sim(ws_lifetime_s=0.5)
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False)
    async with running(streams):
        items = await until(streams, is_up)  # connect
        items = await until(streams, is_up)  # after the cut
        resync = next(i for i in items if isinstance(i, Resync))
        assert "lifetime" in resync.reason
        assert items[-1] == StreamsUp((SIM_BTC,), "reconnect after server close")


async def test_sim_rotation_before_the_cut_loses_nothing(make_sim: MakeSim) -> None:
    """Rotating before the server's lifetime cut never yields a Resync; pushes keep coming."""
    sim = await make_sim(ws_lifetime_s=1.0)
    streams = fast(sim.ws_url, [SIM_BTC], closed_only=False, lifetime_s=0.4)
    async with running(streams):
        items: list[StreamItem] = []
        while sum(map(is_up, items)) < 4:
            items += await until(streams, is_up)
    assert [i.reason for i in items if isinstance(i, StreamsUp)] == ["connect"] + ["rotate"] * 3
    assert not any(isinstance(i, Resync) for i in items)
    assert sim.stats.ws_forced_closes == 0


async def test_sim_unrouted_url_is_caught_by_the_first_message_timeout(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    """Kline streams on the unrouted /stream get no data: never reported live, counted as stalls."""
    sim = await make_sim()
    with caplog.at_level(logging.WARNING, logger="qryptify_ingestor.binance.stream"):
        streams = fast(f"ws://127.0.0.1:{sim.port}", [SIM_BTC], silence_timeout_s=0.2)
        async with running(streams):
            await asyncio.sleep(0.7)
            assert streams.drain() == []
            assert streams.statistics().stalls >= 2
    assert "does not end in /market" in caplog.text
    assert "no message within" in caplog.text

"""The simulator's WebSocket market streams: routes, subscriptions, kline events, keepalive.

Protocol facts followed (binance-futures.md §4): routed `/market/stream?streams=a/b` (combined
envelope), `/market/ws/<a>/<b>` raw, `/market/ws` + SUBSCRIBE; unrouted `/ws` and `/stream`
acknowledge kline subscriptions and then send nothing (Binance since 2026-04-23); kline events about
every 250 ms while a candle is open and a final `x: true` right after it closes; server pings every
3 minutes, disconnect without a pong in 10 minutes; at most 1024 streams per connection and 10
incoming messages per second; forced disconnect after 24 hours.

Efficiency: one ticker task produces the events of every stream; each event is serialised once
per envelope form and the same bytes are queued to every subscriber; each connection has one
writer task draining its queue so a slow client never blocks the ticker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from qryptify_ingestor.domain import MINUTE_MS, Interval

if TYPE_CHECKING:
    from qryptify_ingestor.sim.clock import SimClock
    from qryptify_ingestor.sim.faults import Faults
    from qryptify_ingestor.sim.market import Market
    from qryptify_ingestor.sim.stats import SimStats

_STREAM_RE = re.compile(r"^([a-z0-9_]+)@kline_(1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)$")
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MAX_QUEUE = 50_000  # frames queued to one client before it counts as too slow and is closed
_MAX_CATCHUP = 20_000  # finals emitted per stream for one clock jump (older ones are skipped)

FinalHook = Callable[[str, str, int, float], None]


@dataclass(slots=True)
class WsSettings:
    tick_ms: int = 250
    ping_interval_s: float = 180.0
    pong_timeout_s: float = 600.0
    lifetime_s: float = 86_400.0
    max_streams: int = 1024
    max_messages_per_s: int = 10


@dataclass(eq=False, slots=True)
class _Conn:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    routed: bool
    combined: bool
    opened: float = field(default_factory=time.monotonic)
    streams: dict[str, None] = field(default_factory=dict)  # ordered set
    queue: asyncio.Queue[bytes | tuple[int, str]] = field(default_factory=asyncio.Queue)
    last_ping: float = field(default_factory=time.monotonic)
    ping_outstanding_since: float | None = None
    received: deque[float] = field(default_factory=deque)
    closing: bool = False

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        if self.queue.qsize() >= _MAX_QUEUE:
            self.request_close(1008, "too slow")
            return
        self.queue.put_nowait(data)

    def request_close(self, code: int, message: str, *, discard_pending: bool = True) -> None:
        """Close after the frames already queued (or at once, dropping them)."""
        if self.closing:
            return
        self.closing = True
        while discard_pending and not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait((code, message))


@dataclass(eq=False, slots=True)
class _Stream:
    name: str
    symbol: str
    interval: Interval
    open_ms: int  # the candle currently open (the next final to send)
    conns: set[_Conn] = field(default_factory=set)
    deferred: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # late finals


class WsHub:
    """All WebSocket connections and streams of one simulator."""

    def __init__(
        self,
        market: Market,
        clock: SimClock,
        faults: Faults,
        stats: SimStats,
        settings: WsSettings,
        final_sent_at: dict[tuple[str, str, int], float],
        on_final: FinalHook | None = None,
    ) -> None:
        self._market = market
        self._clock = clock
        self._faults = faults
        self._stats = stats
        self.settings = settings
        self._final_sent_at = final_sent_at
        self._on_final = on_final
        self._conns: set[_Conn] = set()
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        clock.add_listener(self._wake.set)

    def close_listeners(self) -> None:
        self._clock.remove_listener(self._wake.set)

    # -- HTTP entry points -------------------------------------------------------------------
    async def handle_market_stream(self, request: web.Request) -> web.StreamResponse:
        streams = [s for s in request.query.get("streams", "").split("/") if s]
        return await self._serve(request, routed=True, combined=True, streams=streams)

    async def handle_market_ws(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        # ccxt connects to /market/ws/<n> and SUBSCRIBEs; only names with '@' are streams.
        streams = [s for s in tail.split("/") if "@" in s]
        return await self._serve(request, routed=True, combined=False, streams=streams)

    async def handle_unrouted_stream(self, request: web.Request) -> web.StreamResponse:
        streams = [s for s in request.query.get("streams", "").split("/") if s]
        return await self._serve(request, routed=False, combined=True, streams=streams)

    async def handle_unrouted_ws(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        streams = [s for s in tail.split("/") if "@" in s]
        return await self._serve(request, routed=False, combined=False, streams=streams)

    async def _serve(
        self, request: web.Request, *, routed: bool, combined: bool, streams: list[str]
    ) -> web.StreamResponse:
        if self._faults.take_refusal():
            return web.Response(status=503, text="Service Unavailable.")
        if len(streams) > self.settings.max_streams:
            return web.json_response(
                {"code": -1100, "msg": f"Too many streams: at most {self.settings.max_streams}."},
                status=400,
            )
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Conn(ws, request.transport, routed, combined)
        self._conns.add(conn)
        self._stats.ws_connections_total += 1
        self._stats.ws_connections_open += 1
        for name in streams:
            self._subscribe(conn, name)
        writer = asyncio.create_task(self._writer(conn), name="sim-ws-writer")
        try:
            await self._reader(conn)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            for name in list(conn.streams):
                self._unsubscribe(conn, name)
            self._conns.discard(conn)
            self._stats.ws_connections_open -= 1
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _writer(self, conn: _Conn) -> None:
        while True:
            item = await conn.queue.get()
            if isinstance(item, tuple):
                code, message = item
                self._stats.ws_forced_closes += 1
                await conn.ws.close(code=code, message=message.encode())
                return
            try:
                await conn.ws.send_frame(item, WSMsgType.TEXT)
            except ConnectionError:
                return
            self._stats.ws_messages_sent += 1

    async def _reader(self, conn: _Conn) -> None:
        ws = conn.ws
        async for msg in ws:
            now = time.monotonic()
            conn.received.append(now)
            while conn.received and conn.received[0] <= now - 1.0:
                conn.received.popleft()
            if len(conn.received) > self.settings.max_messages_per_s:
                conn.request_close(1008, "Too many requests")
                continue
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                conn.ping_outstanding_since = None
            elif msg.type == WSMsgType.TEXT:
                self._control(conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                self._reply(conn, {"error": {"code": 3, "msg": "Invalid JSON: binary frame"}})
                conn.request_close(1003, "Invalid JSON", discard_pending=False)

    # -- control messages (binance-futures.md §4.5) ------------------------------------------
    def _reply(self, conn: _Conn, payload: dict[str, Any]) -> None:
        conn.send(orjson.dumps(payload))

    def _error(self, conn: _Conn, code: int, msg: str, req_id: object) -> None:
        self._reply(conn, {"error": {"code": code, "msg": msg}, "id": req_id})

    def _control(self, conn: _Conn, text: str) -> None:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._reply(conn, {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}})
            conn.request_close(1003, "Invalid JSON", discard_pending=False)
            return
        if not isinstance(req, dict):
            self._error(conn, 2, "Invalid request: expected a JSON object", None)
            return
        req_id = req.get("id")
        if isinstance(req_id, bool) or not isinstance(req_id, int) or req_id < 0:
            self._error(conn, 2, "Invalid request: request ID must be an unsigned integer", req_id)
            return
        method = req.get("method")
        if method is None:
            self._error(conn, 2, "Invalid request: missing field `method`", req_id)
            return
        if method not in _METHODS:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            self._error(
                conn,
                2,
                f"Invalid request: unknown variant `{method}`, expected one of {expected}",
                req_id,
            )
            return
        params = req.get("params", [])
        if not isinstance(params, list):
            self._error(conn, 2, "Invalid request: params must be an array", req_id)
            return
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                self._error(conn, 2, "Invalid request: stream names must be strings", req_id)
                return
            if method == "SUBSCRIBE":
                new = [p for p in params if p not in conn.streams]
                if len(conn.streams) + len(set(new)) > self.settings.max_streams:
                    limit = self.settings.max_streams
                    self._error(
                        conn, 2, f"Invalid request: at most {limit} streams per connection", req_id
                    )
                    return
                for name in params:
                    self._subscribe(conn, name)
            else:
                for name in params:
                    self._unsubscribe(conn, name)
            self._reply(conn, {"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(conn, {"result": list(conn.streams), "id": req_id})
        elif method == "SET_PROPERTY":
            if len(params) != 2:
                self._error(conn, 2, "Invalid request: SET_PROPERTY takes 2 params", req_id)
            elif not isinstance(params[0], str):
                self._error(conn, 2, "Invalid request: property name must be a string", req_id)
            elif params[0] != "combined":
                self._error(conn, 0, "Unknown property", req_id)
            elif not isinstance(params[1], bool):
                self._error(conn, 1, "Invalid value type: expected Boolean", req_id)
            else:
                conn.combined = params[1]
                self._reply(conn, {"result": None, "id": req_id})
        else:  # GET_PROPERTY
            if len(params) != 1:
                self._error(conn, 2, "Invalid request: GET_PROPERTY takes 1 param", req_id)
            elif not isinstance(params[0], str):
                self._error(conn, 2, "Invalid request: property name must be a string", req_id)
            elif params[0] != "combined":
                self._error(conn, 0, "Unknown property", req_id)
            else:
                self._reply(conn, {"result": conn.combined, "id": req_id})

    def _subscribe(self, conn: _Conn, name: str) -> None:
        if name in conn.streams:
            return
        conn.streams[name] = None
        if not conn.routed:
            return  # acknowledged, never fed: kline streams live on /market only
        match = _STREAM_RE.match(name)
        if match is None or match.group(1).upper() not in self._market.specs:
            return  # unknown stream or symbol: Binance acknowledges and sends nothing
        stream = self._streams.get(name)
        if stream is None:
            interval = Interval(match.group(2))
            open_ms = interval.floor(self._clock.now_ms())
            stream = _Stream(name, match.group(1).upper(), interval, open_ms)
            self._streams[name] = stream
        stream.conns.add(conn)
        self._wake.set()

    def _unsubscribe(self, conn: _Conn, name: str) -> None:
        conn.streams.pop(name, None)
        stream = self._streams.get(name)
        if stream is not None:
            stream.conns.discard(conn)
            if not stream.conns:
                del self._streams[name]

    # -- fault hooks -------------------------------------------------------------------------
    def drop(self, stream: str | None, abrupt: bool) -> int:
        victims = [c for c in self._conns if stream is None or stream in c.streams]
        for conn in victims:
            if abrupt and conn.transport is not None:
                conn.closing = True
                conn.transport.abort()
            else:
                conn.request_close(1001, "going away")
        return len(victims)

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def stream_names(self) -> list[str]:
        return list(self._streams)

    # -- the ticker --------------------------------------------------------------------------
    async def run_ticker(self) -> None:
        """Emit updates and finals for every subscribed stream; runs until cancelled."""
        tick_s = self.settings.tick_ms / 1000.0
        while True:
            self._wake.clear()
            now = self._clock.now_ms()
            for stream in list(self._streams.values()):
                self._step(stream, now)
            # Wake for the next tick, or just after the next minute boundary (every interval
            # closes on one), so finals go out right after the close.
            wait = tick_s
            to_boundary = self._clock.wall_seconds_until(now - now % MINUTE_MS + MINUTE_MS)
            if to_boundary is not None:
                wait = min(wait, to_boundary + 0.0005)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.001))

    def _step(self, stream: _Stream, now: int) -> None:
        iv = stream.interval
        current = iv.floor(now)
        if stream.open_ms < current:
            if iv.name != "1M" and (current - stream.open_ms) // iv.nominal_ms > _MAX_CATCHUP:
                stream.open_ms = current - _MAX_CATCHUP * iv.nominal_ms
            while stream.open_ms < current:
                self._final(stream, stream.open_ms, now)
                stream.open_ms = iv.next_open(stream.open_ms)
        if self._silent(stream):
            return
        block = self._market.candle_block(stream.symbol, iv.name, current, now)
        if block is not None:
            raw, combined = self._encode(stream, current, block, now, closed=False)
            self._broadcast(stream, raw, combined)
        if stream.deferred:
            for open_ms, raw, combined in stream.deferred:
                self._broadcast(stream, raw, combined)
                self._record_final(stream, open_ms)
            stream.deferred.clear()

    def _silent(self, stream: _Stream) -> bool:
        return stream.symbol in self._faults.silent_symbols or self._faults.stalled(stream.name)

    def _final(self, stream: _Stream, open_ms: int, now: int) -> None:
        if self._silent(stream):
            return
        block = self._market.candle_block(stream.symbol, stream.interval.name, open_ms, now)
        if block is None:
            return
        raw, combined = self._encode(stream, open_ms, block, now, closed=True)
        if self._faults.take_late():
            stream.deferred.append((open_ms, raw, combined))
            return
        self._broadcast(stream, raw, combined)
        if self._faults.take_duplicate():
            self._broadcast(stream, raw, combined)
        self._record_final(stream, open_ms)

    def _record_final(self, stream: _Stream, open_ms: int) -> None:
        sent_at = time.time()
        key = (stream.symbol, stream.interval.name, open_ms)
        self._final_sent_at[key] = sent_at
        self._stats.ws_finals_sent += 1
        if self._on_final is not None:
            self._on_final(stream.symbol, stream.interval.name, open_ms, sent_at)

    def _encode(
        self, stream: _Stream, open_ms: int, block: Any, now: int, *, closed: bool
    ) -> tuple[bytes, bytes]:
        k = self._market.kline_payload(stream.symbol, stream.interval.name, open_ms, block, closed)
        raw = orjson.dumps({"e": "kline", "E": now, "s": stream.symbol, "k": k})
        combined = b'{"stream":"' + stream.name.encode() + b'","data":' + raw + b"}"
        return raw, combined

    def _broadcast(self, stream: _Stream, raw: bytes, combined: bytes) -> None:
        for conn in stream.conns:
            conn.send(combined if conn.combined else raw)

    # -- keepalive and lifetime --------------------------------------------------------------
    async def run_housekeeping(self) -> None:
        """Server pings, pong deadlines and the connection lifetime; runs until cancelled."""
        s = self.settings
        period = max(0.01, min(1.0, s.ping_interval_s / 4, s.pong_timeout_s / 4, s.lifetime_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._conns):
                if conn.closing or conn.ws.closed:
                    continue
                if now - conn.opened >= s.lifetime_s:
                    conn.request_close(1001, "connection lifetime exceeded")
                elif (
                    conn.ping_outstanding_since is not None
                    and now - conn.ping_outstanding_since >= s.pong_timeout_s
                ):
                    conn.request_close(1008, "pong timeout")
                elif now - conn.last_ping >= s.ping_interval_s:
                    conn.last_ping = now
                    if conn.ping_outstanding_since is None:
                        conn.ping_outstanding_since = now
                    with contextlib.suppress(ConnectionError):
                        await conn.ws.ping(str(int(time.time() * 1000)).encode())

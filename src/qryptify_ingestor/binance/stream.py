"""WebSocket adapter for Binance USDⓈ-M kline streams: connections, rotation, reconnects.

This module owns the live connections to `{ws_base}/stream?streams=…` (combined streams under the
`/market` route, binance-futures.md §4.1) and turns them into one ordered feed of items:

* `KlineEvent` (from `binance.parse`) for every kline push that parses; by default only the
  closed ones (`k.x == true`, `closed_only=True`), because the service persists only finals
  (binance-futures.md §7.5) and skipping the ~4 pushes/s of an open candle saves work. All
  pushes still count as liveness for the watchdogs.
* `StreamsUp(keys, reason)` after every successful connect, reconnect and rotation, once the new
  connection delivered its first message: "these keys are live from now on; fill what came before
  from REST". Also on the first connect, so the service can subscribe first and then backfill.
* `Resync(keys, reason)` as soon as data may have been lost on a connection that was live (server
  close, silence, overdue final). A `StreamsUp` follows when the replacement is live.

The pure decisions (sharding by count and URL size, the connection budget, watchdog verdicts,
handshake-error classification) are synchronous functions at the top, tested without an event
loop; URL building and full-jitter backoff come from `binance.protocol`. The asyncio layer below
only waits and moves bytes. Times for the watchdogs come from the injected `clock` (seconds); the
connection budget and backoff sleeps use the event loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from qryptify_ingestor.binance.parse import ControlReply, KlineEvent, parse_stream_message
from qryptify_ingestor.binance.protocol import backoff_delay, combined_stream_url, is_loopback
from qryptify_ingestor.domain import Interval, StreamKey
from qryptify_ingestor.errors import (
    ConfigError,
    ExchangeRejected,
    MalformedPayload,
    RestrictedLocation,
    WafBlocked,
)
from qryptify_ingestor.observe import NULL_OBSERVER, Observer

__all__ = [
    "AttemptWindow",
    "KlineStreams",
    "Resync",
    "StreamItem",
    "StreamStatistics",
    "StreamsUp",
    "classify_connect_error",
    "connection_verdict",
    "overdue_keys",
    "shard_keys",
    "validate_ws_base",
]

logger = logging.getLogger(__name__)

# Binance allows 1024 streams per connection (UM:ws, DCL 2025-07-02). We shard smaller: one
# connection's reader parses every push of its streams, so fewer streams per socket means less
# head-of-line latency and a smaller blast radius when one connection stalls or is cut.
DEFAULT_STREAMS_PER_CONNECTION = 200
BINANCE_MAX_STREAMS_PER_CONNECTION = 1024
# All streams go into the URL; no SUBSCRIBE is ever sent. That keeps us far from the 10
# incoming msgs/s limit (UM:ws; exceeding it disconnects, repeat offenders get IP bans) and avoids
# the "ACK but no data" trap of a SUBSCRIBE (binance-futures.md §4.5). The price is URL length,
# so shards are also bounded by URL size: 8000 bytes stays below common 8 KiB request-line
# buffers (nginx `large_client_header_buffers`); 200 streams of typical names use ~4 KB.
DEFAULT_MAX_URL_BYTES = 8000
RECONNECT_WINDOW_S = 300.0  # "attempts per 5 minutes" (SPOT-WS: 300 per 5 min per IP)


# --- items yielded to the service -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamsUp:
    """A connection for `keys` is live (first message received): fill anything older from REST."""

    keys: tuple[StreamKey, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Resync:
    """Data for `keys` may have been lost (connection lost or stalled): refill from REST."""

    keys: tuple[StreamKey, ...]
    reason: str


StreamItem = KlineEvent | StreamsUp | Resync


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    """A snapshot of `KlineStreams` state for metrics and `status`."""

    connections: int
    reconnects: int
    stalls: int
    messages: int
    malformed: int
    queued: int
    last_event_ms: Mapping[StreamKey, int]


# --- pure helpers -----------------------------------------------------------------------------


def validate_ws_base(ws_base: str, *, allow_insecure: bool = False) -> str:
    """Return the route base without a trailing slash, or raise ConfigError.

    `wss://` always; `ws://` only to a loopback host (the simulator) unless `allow_insecure`.
    """
    parts = urlsplit(ws_base)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"binance.ws_url: {ws_base!r}: expected wss://host/market")
    if parts.query or parts.fragment:
        raise ConfigError(f"binance.ws_url: {ws_base!r} must not carry a query or fragment")
    if parts.scheme == "ws" and not allow_insecure and not is_loopback(parts.hostname):
        raise ConfigError(
            f"binance.ws_url: refusing unencrypted ws:// URL {ws_base!r}: only loopback hosts may"
            " skip TLS (set binance.allow_insecure to override)"
        )
    base = ws_base.rstrip("/")
    if not parts.path.rstrip("/").endswith("/market"):
        # Since 2026-04-23 an unrouted /stream acknowledges kline subscriptions and then sends
        # nothing (binance-futures.md §4.1, §6.2); the silence watchdog would catch it, but late.
        logger.warning("ws_base %s does not end in /market, where kline streams live", base)
    return base


def shard_keys(
    keys: Iterable[StreamKey],
    *,
    ws_base: str,
    max_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
) -> list[tuple[StreamKey, ...]]:
    """Split `keys` (deduplicated, order kept) into balanced shards, one per connection.

    Each shard has at most `max_per_connection` keys and a URL of at most `max_url_bytes`.
    Balanced (450 keys at 200 -> 150/150/150, not 200/200/50) so no socket is much busier.
    """
    if not 1 <= max_per_connection <= BINANCE_MAX_STREAMS_PER_CONNECTION:
        raise ConfigError(
            f"max_streams_per_connection={max_per_connection}: expected 1.."
            f"{BINANCE_MAX_STREAMS_PER_CONNECTION} (UM:ws)"
        )
    unique = list(dict.fromkeys(keys))
    if not unique:
        return []
    for k in unique:
        one = combined_stream_url(ws_base, [k.stream_name])
        if len(one.encode()) > max_url_bytes:
            raise ConfigError(f"stream {k.stream_name}: URL longer than {max_url_bytes} bytes")
    n = math.ceil(len(unique) / max_per_connection)
    while True:
        size, extra = divmod(len(unique), n)
        shards: list[tuple[StreamKey, ...]] = []
        start = 0
        for i in range(n):
            end = start + size + (1 if i < extra else 0)
            shards.append(tuple(unique[start:end]))
            start = end
        if all(_url_bytes(ws_base, s) <= max_url_bytes for s in shards):
            return shards
        n += 1


def _url_bytes(ws_base: str, shard: Sequence[StreamKey]) -> int:
    return len(combined_stream_url(ws_base, [k.stream_name for k in shard]).encode())


class AttemptWindow:
    """At most `limit` connection attempts in any `window_s` seconds (a sliding window).

    Pure bookkeeping: the caller passes the time. Binance documents no connection-attempt
    limit for fstream; spot allows 300 per 5 min per IP (binance-futures.md §4.4), so we
    budget well below that.
    """

    def __init__(self, limit: int, window_s: float = RECONNECT_WINDOW_S) -> None:
        if limit < 1:
            raise ConfigError(f"max_reconnects_per_5min={limit}: expected >= 1")
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """Seconds until another attempt is allowed (0 if now)."""
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window_s - now

    def record(self, now: float) -> None:
        self._times.append(now)


def connection_verdict(
    *,
    now_s: float,
    opened_at_s: float,
    last_message_s: float,
    silence_timeout_s: float,
    lifetime_s: float,
) -> str | None:
    """Why a live connection must be replaced ("silence" / "lifetime"), or None."""
    if now_s - last_message_s >= silence_timeout_s:
        return "silence"
    if now_s - opened_at_s >= lifetime_s:
        return "lifetime"
    return None


def overdue_keys(
    keys: Iterable[StreamKey],
    last_final_open_ms: Mapping[StreamKey, int],
    *,
    connected_at_ms: int,
    now_ms: int,
    margin_ms: int,
) -> list[StreamKey]:
    """Keys whose latest due final (`x:true`) has not arrived on this connection.

    The final of the candle that closed at `c` is due by `c + margin`. Closing pushes can be tens
    of seconds late (binance-futures.md §4.3) and klines are produced even without trades
    (§1.5), so a missing final past the margin means the stream stalled (§6.2). Only candles
    that closed while this connection was open count: the one in progress at connect still gets
    its final on this connection.
    """
    out: list[StreamKey] = []
    for key in keys:
        iv = Interval(key.interval)
        boundary = iv.floor(now_ms - margin_ms)  # latest close instant whose deadline passed
        if boundary <= connected_at_ms:
            continue
        due_open = iv.floor(boundary - 1)  # the candle that closed at `boundary`
        last = last_final_open_ms.get(key)
        if last is None or last < due_open:
            out.append(key)
    return out


def classify_connect_error(exc: Exception) -> Exception | None:
    """None if a failed connection attempt should be retried, else the error to raise.

    Mirrors python-websockets' `process_exception`: network errors, timeouts and 5xx are
    transient; an HTTP 451/403 or another 4xx on the handshake will not change by retrying.
    429 is retryable (backoff plus the attempt budget are the answer to it).
    """
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 451:
            return RestrictedLocation(f"WebSocket handshake refused: HTTP {status}")
        if status == 403:
            return WafBlocked(f"WebSocket handshake refused: HTTP {status}")
        if 400 <= status < 500 and status not in (408, 429):
            return ExchangeRejected(f"WebSocket handshake refused: HTTP {status}", status=status)
        return None
    if isinstance(exc, InvalidURI):
        return ConfigError(f"invalid WebSocket URL: {exc}")
    if isinstance(exc, OSError | TimeoutError | EOFError | InvalidHandshake | ConnectionClosed):
        return None
    return exc


# Binance serialises `"x":false` without spaces in every kline update of an open candle.
_OPEN_UPDATE = '"x":false'
_OPEN_UPDATE_B = _OPEN_UPDATE.encode()
_STREAM_RE = re.compile(rb'"stream"\s*:\s*"([^"]{1,80})"')
_UNKNOWN_KEY = StreamKey("?", "?")


def _key_of_raw(raw: bytes | str, by_stream: Mapping[str, StreamKey]) -> StreamKey:
    """Best-effort key of a frame that failed to parse, for the malformed counter."""
    data = raw.encode() if isinstance(raw, str) else raw
    m = _STREAM_RE.search(data[:300])
    if m is None:
        return _UNKNOWN_KEY
    return by_stream.get(m.group(1).decode("utf-8", "replace"), _UNKNOWN_KEY)


def _describe_close(exc: ConnectionClosed | None, ws: ClientConnection) -> str:
    """'closed: received 1001 (going away) …' from whichever side closed first."""
    if exc is None and ws.protocol.state is State.CLOSED:
        exc = ws.protocol.close_exc
    if exc is None:
        return f"closed, code {ws.close_code}"
    return f"closed: {exc}"


def _shard_label(keys: Sequence[StreamKey]) -> str:
    shown = ", ".join(str(k) for k in keys[:3])
    return shown if len(keys) <= 3 else f"{shown} and {len(keys) - 3} more"


# --- the asyncio layer ------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    """One open connection and the state its watchdogs read."""

    ws: ClientConnection
    keys: tuple[StreamKey, ...]
    by_stream: Mapping[str, StreamKey]
    up_reason: str
    opened_at_s: float
    last_message_s: float
    opened_exchange_ms: int = 0
    live: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # live or finished
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    last_final_open_ms: dict[StreamKey, int] = field(default_factory=dict)
    # Set when *we* decide to close it; None at the end means the server (or the network) did.
    closing_reason: str | None = None
    blocked: bool = False  # waiting for room in the output queue (backpressure)


class _Stop(Exception):
    """Internal: ends `run()` after `aclose()`."""


class KlineStreams:
    """Live kline streams for `keys`, sharded over connections, kept alive and replaced.

    Use: run `await streams.run()` in the service's TaskGroup, consume `streams.events()` (or
    `await streams.get()`), and cancel the task or call `await streams.aclose()` to stop.

    A connection is replaced when the server closes it (any code, including 1001 and the 24 h
    cut), when nothing arrives for `silence_timeout_s`, when a stream's final is more than
    `stream_close_margin_s` overdue, and before `lifetime_s` (make-before-break: the new
    connection is open and has delivered a message before the old one is closed; events may be
    delivered twice meanwhile, which idempotent writes absorb).

    The output queue is bounded (`max_queue`). When it is full the readers wait (backpressure):
    nothing is ever dropped. If the consumer stalls long enough for the socket buffers to fill,
    Binance or our keepalive will cut the connection, which yields `Resync` and `StreamsUp`.
    """

    def __init__(
        self,
        ws_base: str,
        keys: Sequence[StreamKey],
        *,
        max_streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
        max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
        silence_timeout_s: float = 30.0,
        stream_close_margin_s: float = 30.0,
        lifetime_s: float = 23.5 * 3600,
        max_reconnects_per_5min: int = 60,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_message_bytes: int = 1 << 20,
        max_queue: int = 10_000,
        closed_only: bool = True,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 20.0,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        exchange_clock: Callable[[], float] | None = None,
        observer: Observer = NULL_OBSERVER,
        allow_insecure: bool = False,
    ) -> None:
        self._base = validate_ws_base(ws_base, allow_insecure=allow_insecure)
        for name, value in (
            ("silence_timeout_s", silence_timeout_s),
            ("stream_close_margin_s", stream_close_margin_s),
            ("lifetime_s", lifetime_s),
            ("backoff_max_s", backoff_max_s),
        ):
            if not value > 0:
                raise ConfigError(f"{name}={value}: expected > 0")
        if backoff_base_s < 0 or max_message_bytes < 1 or max_queue < 1:
            raise ConfigError("backoff_base_s, max_message_bytes and max_queue must be positive")
        for k in keys:
            Interval(k.interval)  # ValueError for a bad interval: a caller bug
        self._shards = shard_keys(
            keys,
            ws_base=self._base,
            max_per_connection=max_streams_per_connection,
            max_url_bytes=max_url_bytes,
        )
        if not self._shards:
            raise ConfigError("KlineStreams needs at least one stream key")
        self._silence_s = silence_timeout_s
        self._margin_ms = int(stream_close_margin_s * 1000)
        self._lifetime_s = lifetime_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_message_bytes = max_message_bytes
        self._closed_only = closed_only
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        # Overdue finals are judged on exchange time (candle close times are exchange time);
        # silence and lifetime on `clock`, a plain duration clock.
        self._exchange_clock = exchange_clock or clock
        self._observer = observer
        # The budget is about real connection attempts, so it runs on monotonic time.
        self._attempts = AttemptWindow(max_reconnects_per_5min)
        self._queue: asyncio.Queue[StreamItem] = asyncio.Queue(maxsize=max_queue)
        # How often the watchdogs look; small against the timeouts they enforce.
        self._tick_s = max(0.02, min(1.0, silence_timeout_s / 5, lifetime_s / 5))
        self._conns: set[_Conn] = set()
        self._stop = asyncio.Event()
        self._running = False
        self._stopped = asyncio.Event()
        self._reconnects = 0
        self._stalls = 0
        self._messages = 0
        self._malformed = 0
        self._last_event_ms: dict[StreamKey, int] = {}

    # -- public API --

    @property
    def shards(self) -> tuple[tuple[StreamKey, ...], ...]:
        """The keys of each connection, as sharded."""
        return tuple(self._shards)

    async def run(self) -> None:
        """Keep every shard connected until cancelled or `aclose()`; fatal errors propagate."""
        if self._running:
            raise RuntimeError("KlineStreams.run() is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                for i, shard in enumerate(self._shards):
                    tg.create_task(self._supervise(i, shard), name=f"kline-shard-{i}")
                tg.create_task(self._wait_stop(), name="kline-stop")
        except BaseExceptionGroup as eg:
            # Unwrap so the caller sees e.g. RestrictedLocation, not a group around it.
            leaves = [e for e in _leaves(eg) if not isinstance(e, _Stop)]
            if len(leaves) == 1:
                raise leaves[0] from None
            if leaves:
                raise
        finally:
            await self._close_all("shutdown")
            self._running = False
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop `run()` and close every connection with a normal close frame."""
        self._stop.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self._close_all("shutdown")

    async def get(self) -> StreamItem:
        """The next item, waiting for one."""
        return await self._queue.get()

    def drain(self, max_items: int | None = None) -> list[StreamItem]:
        """The items already queued (up to `max_items`), without waiting; frees room at once."""
        out: list[StreamItem] = []
        while not self._queue.empty() and (max_items is None or len(out) < max_items):
            out.append(self._queue.get_nowait())
        return out

    async def events(self) -> AsyncIterator[StreamItem]:
        """All items, in arrival order, forever (stop by breaking out or cancelling)."""
        while True:
            yield await self._queue.get()

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(
            connections=sum(1 for c in self._conns if not c.finished.is_set()),
            reconnects=self._reconnects,
            stalls=self._stalls,
            messages=self._messages,
            malformed=self._malformed,
            queued=self._queue.qsize(),
            last_event_ms=MappingProxyType(dict(self._last_event_ms)),
        )

    # -- supervision --

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stop

    async def _supervise(self, index: int, keys: tuple[StreamKey, ...]) -> None:
        """One shard: connect, watch, replace; forever. Readers live in this task group."""
        label = f"shard {index} ({_shard_label(keys)})"
        async with asyncio.TaskGroup() as tg:
            conn = await self._establish(tg, keys, label, "connect", kind="connect", immediate=True)
            while True:
                reason = await self._watch(conn, label)
                if reason == "lifetime":
                    # Make-before-break: the old connection keeps reading until the new one
                    # delivered its first message (Binance cuts at 24 h, UM:ws).
                    new = await self._establish(
                        tg, keys, label, "rotate", kind="lifetime", immediate=True
                    )
                    await self._retire(conn, "rotated")
                    conn = new
                    continue
                await self._retire(conn, reason)
                conn = await self._establish(
                    tg, keys, label, f"reconnect after {reason}", kind=reason
                )

    async def _establish(
        self,
        tg: asyncio.TaskGroup,
        keys: tuple[StreamKey, ...],
        label: str,
        reason: str,
        *,
        kind: str,
        immediate: bool = False,
    ) -> _Conn:
        """Open connections until one delivers a message; backoff and budget between tries.

        `reason` goes into `StreamsUp` and the log; `kind` is the short label for metrics.
        `immediate`: no backoff before the first try (the first connect, and a rotation, where
        the old connection still delivers). Every later try waits a full-jitter backoff.
        """
        url = combined_stream_url(self._base, [k.stream_name for k in keys])
        attempt = 0
        while True:
            if not immediate or attempt:
                # Full jitter (protocol.backoff_delay counts retries from 1).
                delay = backoff_delay(attempt + 1, self._backoff_base_s, self._backoff_max_s)
                await asyncio.sleep(delay)
            await self._take_attempt(label)
            if not immediate or attempt:
                self._reconnects += 1
                self._observer.ws_reconnect(kind if attempt == 0 else "connect failed")
            attempt += 1
            try:
                ws = await connect(
                    url,
                    max_size=self._max_message_bytes,
                    ping_interval=self._ping_interval_s,
                    ping_timeout=self._ping_timeout_s,
                    open_timeout=self._open_timeout_s,
                    close_timeout=self._close_timeout_s,
                    # The environment's proxy settings do not apply to the loopback simulator.
                    proxy=None if is_loopback(urlsplit(url).hostname or "") else True,
                )
            except Exception as exc:  # translated or re-raised by classify_connect_error
                fatal = classify_connect_error(exc)
                if fatal is not None:
                    if fatal is exc:
                        raise
                    raise fatal from exc
                logger.warning("%s: connect failed (%s): %r", label, reason, exc)
                continue
            now = self._clock()
            conn = _Conn(
                ws=ws,
                keys=keys,
                by_stream={k.stream_name: k for k in keys},
                up_reason=reason,
                opened_at_s=now,
                last_message_s=now,
                opened_exchange_ms=int(self._exchange_clock() * 1000),
            )
            self._conns.add(conn)
            self._observer.ws_connections(self.statistics().connections)
            tg.create_task(self._read(conn, label), name=f"kline-reader {label}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._silence_s):
                    await conn.settled.wait()
            if conn.live.is_set():
                logger.info("%s: live (%s), %d streams", label, reason, len(keys))
                return conn
            if not conn.finished.is_set():
                # An ACK without data is the classic wrong-route symptom (§4.1, §6.2).
                logger.warning(
                    "%s: no message within %.1fs of connecting; retrying", label, self._silence_s
                )
                self._stalls += 1
                self._observer.ws_stall()
            await self._retire(conn, "no first message")

    async def _take_attempt(self, label: str) -> None:
        loop = asyncio.get_running_loop()
        while (wait := self._attempts.wait_s(loop.time())) > 0:
            logger.warning(
                "%s: %d connection attempts in 5 min; waiting %.1fs",
                label,
                self._attempts.limit,
                wait,
            )
            await asyncio.sleep(wait)
        self._attempts.record(loop.time())

    async def _watch(self, conn: _Conn, label: str) -> str:
        """Wait until `conn` must be replaced; return why. Closes nothing except on a stall."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s):
                    await conn.finished.wait()
            if conn.finished.is_set():
                return "server close"
            if conn.blocked:
                continue  # we are not reading: silence now is our consumer's, not Binance's
            now = self._clock()
            verdict = connection_verdict(
                now_s=now,
                opened_at_s=conn.opened_at_s,
                last_message_s=conn.last_message_s,
                silence_timeout_s=self._silence_s,
                lifetime_s=self._lifetime_s,
            )
            if verdict == "lifetime":
                logger.info("%s: rotating after %.0fs", label, now - conn.opened_at_s)
                return verdict
            if verdict == "silence":
                why = f"silence for {now - conn.last_message_s:.1f}s"
                logger.warning("%s: %s; replacing the connection", label, why)
                await self._stalled(conn, why)
                return "silence"
            late = overdue_keys(
                conn.keys,
                conn.last_final_open_ms,
                connected_at_ms=conn.opened_exchange_ms,
                now_ms=int(self._exchange_clock() * 1000),
                margin_ms=self._margin_ms,
            )
            if late:
                names = ", ".join(f"{k} ({k.stream_name})" for k in late[:5])
                logger.warning(
                    "%s: no closed candle within interval + %ds for %s; replacing",
                    label,
                    self._margin_ms // 1000,
                    names,
                )
                await self._stalled(conn, f"overdue final for {late[0]}")
                return "overdue final"

    async def _stalled(self, conn: _Conn, why: str) -> None:
        self._stalls += 1
        self._observer.ws_stall()
        conn.closing_reason = why
        await self._emit(Resync(conn.keys, why))

    async def _retire(self, conn: _Conn, reason: str) -> None:
        if conn.closing_reason is None:
            conn.closing_reason = reason
        await conn.ws.close()
        await conn.finished.wait()
        self._conns.discard(conn)
        self._observer.ws_connections(self.statistics().connections)

    async def _close_all(self, reason: str) -> None:
        for conn in list(self._conns):
            if conn.closing_reason is None:
                conn.closing_reason = reason
            await conn.ws.close()
            self._conns.discard(conn)
        self._observer.ws_connections(0)

    # -- reading --

    async def _read(self, conn: _Conn, label: str) -> None:
        """Read one connection until it closes; report a loss nobody asked for."""
        ws = conn.ws
        try:
            closed: ConnectionClosed | None = None
            try:
                async for raw in ws:
                    await self._handle(conn, label, raw)
            except ConnectionClosed as exc:  # an error close; a clean one just ends the loop
                closed = exc
            if conn.closing_reason is None:
                conn.closing_reason = _describe_close(closed, ws)
                logger.warning("%s: %s", label, conn.closing_reason)
                if conn.live.is_set():
                    await self._emit(Resync(conn.keys, conn.closing_reason))
        finally:
            conn.finished.set()
            conn.settled.set()
            await ws.close()

    async def _handle(self, conn: _Conn, label: str, raw: bytes | str) -> None:
        now = self._clock()
        conn.last_message_s = now
        self._messages += 1
        self._observer.ws_message()
        if not conn.live.is_set():
            conn.live.set()
            conn.settled.set()
            await self._emit(StreamsUp(conn.keys, conn.up_reason), conn)
        if self._closed_only and (
            _OPEN_UPDATE_B in raw if isinstance(raw, bytes) else _OPEN_UPDATE in raw
        ):
            # An update of a still-open candle (~95% of the traffic) only proves liveness: skip
            # building a Candle of eight Decimals that would be thrown away.
            return
        try:
            item = parse_stream_message(raw)
        except MalformedPayload as exc:
            self._malformed += 1
            self._observer.malformed(_key_of_raw(raw, conn.by_stream), "ws")
            logger.warning("%s: malformed frame skipped: %s; excerpt %r", label, exc, exc.excerpt)
            return
        if item is None:
            return
        if isinstance(item, ControlReply):
            # We send no requests (all streams are in the URL), so any reply is unexpected.
            logger.warning("%s: unexpected control reply %r", label, item)
            return
        key = conn.by_stream.get(item.stream)
        if key is None:
            logger.warning("%s: event for a stream we did not request: %s", label, item.stream)
            return
        self._last_event_ms[key] = max(item.event_time, self._last_event_ms.get(key, 0))
        if item.closed:
            prev = conn.last_final_open_ms.get(key)
            if prev is None or item.candle.open_time > prev:
                conn.last_final_open_ms[key] = item.candle.open_time
        elif self._closed_only:
            return
        await self._emit(item, conn)

    async def _emit(self, item: StreamItem, conn: _Conn | None = None) -> None:
        if conn is None or not self._queue.full():
            await self._queue.put(item)
            return
        conn.blocked = True
        try:
            await self._queue.put(item)
        finally:
            conn.blocked = False
            # Time spent waiting for our consumer is not the server's silence.
            conn.last_message_s = max(conn.last_message_s, self._clock())


def _leaves(eg: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_leaves(e))
        else:
            out.append(e)
    return out

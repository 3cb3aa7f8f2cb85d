"""Prometheus metrics and the HTTP endpoints that operators and orchestrators poll.

Owns: `PrometheusObserver`, the `Observer` (observe.py) that turns the core's reports into
prometheus_client metrics in a registry of its own (never the process-global one, so two
ingestors in one test process never share counters), and `MetricsServer`, an aiohttp app with

    GET /metrics   Prometheus text exposition of that registry
    GET /health    liveness: the process answers (`{"status": "ok", "uptime_s": …}`)
    GET /ready     readiness: the database answers and every live stream is within its lag
                   threshold; 200 when ready, 503 otherwise, the body names what fails

The server binds 127.0.0.1 unless the caller names another host: the endpoints are
unauthenticated, so exposing them beyond the machine must be a deliberate choice.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from qryptify_ingestor.domain import DAY_MS, Interval, StreamKey
from qryptify_ingestor.errors import DatabaseUnavailable
from qryptify_ingestor.observe import Observer

NAMESPACE = "qryptify"

# A closed candle should be committed within tens of milliseconds of its close; the fine buckets
# at the low end show whether we meet that, the coarse ones how bad a slow spell was.
CLOSE_TO_COMMIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0,
)  # fmt: skip
DB_WRITE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

DEFAULT_LAG_MARGIN_MS = 60_000


def lag_threshold_ms(interval: str, margin_ms: int = DEFAULT_LAG_MARGIN_MS) -> int:
    """The largest healthy lag for a stream: one interval (the candle being built) plus a margin.

    A month is up to 31 days long, so `1M` uses 31 days rather than the 30-day nominal length.
    """
    iv = Interval(interval)
    length = 31 * DAY_MS if iv.is_monthly else iv.nominal_ms
    return length + margin_ms


class PrometheusObserver(Observer):
    """Records every Observer report into a private `CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = NAMESPACE
        self.candles_written_total = Counter(
            "candles_written", "Candles committed to the database.",
            ["source", "symbol", "interval"], namespace=ns, registry=r,
        )  # fmt: skip
        self.rest_responses_total = Counter(
            "rest_responses", "REST responses by HTTP status.", ["status"], namespace=ns, registry=r
        )
        self.rest_weight_used = Gauge(
            "rest_weight_used",
            "Request weight used in the current window (X-MBX-USED-WEIGHT-1M).",
            namespace=ns,
            registry=r,
        )
        self.rest_weight_limit = Gauge(
            "rest_weight_limit",
            "Request weight limit of the window (REQUEST_WEIGHT from exchangeInfo).",
            namespace=ns,
            registry=r,
        )
        self.rest_errors_total = Counter(
            "rest_errors",
            "REST errors by kind (429, 418, 5xx, timeout, reset, malformed).",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        self.ws_connections_gauge = Gauge(
            "ws_connections", "Open WebSocket connections.", namespace=ns, registry=r
        )
        self.ws_reconnects_total = Counter(
            "ws_reconnects", "WebSocket reconnects by reason.", ["reason"], namespace=ns, registry=r
        )
        self.ws_stalls_total = Counter(
            "ws_stalls", "WebSocket connections replaced for silence.", namespace=ns, registry=r
        )
        self.ws_messages_total = Counter(
            "ws_messages", "WebSocket messages received.", namespace=ns, registry=r
        )
        self.stream_lag_seconds = Gauge(
            "stream_lag_seconds",
            "Now minus the close of the last committed closed candle.",
            ["symbol", "interval"],
            namespace=ns,
            registry=r,
        )
        self.close_to_commit_seconds = Histogram(
            "close_to_commit_seconds",
            "From a candle's close time to its commit.",
            namespace=ns,
            registry=r,
            buckets=CLOSE_TO_COMMIT_BUCKETS,
        )
        self.db_write_seconds = Histogram(
            "db_write_seconds",
            "Duration of one database write transaction.",
            namespace=ns,
            registry=r,
            buckets=DB_WRITE_BUCKETS,
        )
        self.db_rows_written_total = Counter(
            "db_rows_written", "Rows sent to the database in write transactions.",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.exchange_gaps_gauge = Gauge(
            "exchange_gaps",
            "Recorded ranges for which Binance has no candles.",
            ["symbol", "interval"],
            namespace=ns,
            registry=r,
        )
        self.malformed_total = Counter(
            "malformed",
            "Payloads rejected as malformed (never written).",
            ["source"],
            namespace=ns,
            registry=r,
        )
        self._lag_ms: dict[StreamKey, int] = {}

    # REST
    def rest_response(self, status: int, used_weight: int | None) -> None:
        self.rest_responses_total.labels(status=str(status)).inc()
        if used_weight is not None:
            self.rest_weight_used.set(used_weight)

    def rest_budget(self, limit: int, used: int) -> None:
        self.rest_weight_limit.set(limit)
        self.rest_weight_used.set(used)

    def rest_error(self, kind: str) -> None:
        self.rest_errors_total.labels(kind=kind).inc()

    # WebSocket
    def ws_connections(self, count: int) -> None:
        self.ws_connections_gauge.set(count)

    def ws_reconnect(self, reason: str) -> None:
        self.ws_reconnects_total.labels(reason=reason).inc()

    def ws_stall(self) -> None:
        self.ws_stalls_total.inc()

    def ws_message(self) -> None:
        self.ws_messages_total.inc()

    # Data
    def candles_written(self, key: StreamKey, source: str, count: int) -> None:
        self.candles_written_total.labels(
            source=source, symbol=key.symbol, interval=key.interval
        ).inc(count)

    def close_to_commit(self, seconds: float) -> None:
        self.close_to_commit_seconds.observe(seconds)

    def db_write(self, seconds: float, rows: int) -> None:
        self.db_write_seconds.observe(seconds)
        self.db_rows_written_total.inc(rows)

    def stream_lag(self, key: StreamKey, lag_ms: int) -> None:
        self._lag_ms[key] = lag_ms
        self.stream_lag_seconds.labels(symbol=key.symbol, interval=key.interval).set(lag_ms / 1000)

    def exchange_gaps(self, key: StreamKey, count: int) -> None:
        self.exchange_gaps_gauge.labels(symbol=key.symbol, interval=key.interval).set(count)

    def malformed(self, key: StreamKey, source: str) -> None:
        self.malformed_total.labels(source=source).inc()

    def lags_ms(self) -> dict[StreamKey, int]:
        """The last lag reported per stream (a copy), for building a readiness answer."""
        return dict(self._lag_ms)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return bytes(generate_latest(self.registry))


@dataclass(frozen=True, slots=True)
class StreamReadiness:
    """One live stream's lag against its threshold; `lag_ms` None means nothing seen yet."""

    key: StreamKey
    lag_ms: int | None
    threshold_ms: int

    @property
    def ok(self) -> bool:
        return self.lag_ms is not None and self.lag_ms <= self.threshold_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.key.symbol,
            "interval": self.key.interval,
            "lag_ms": self.lag_ms,
            "threshold_ms": self.threshold_ms,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class ReadyState:
    """What `/ready` answers: the database and every live stream."""

    database_ok: bool
    streams: Sequence[StreamReadiness] = field(default_factory=tuple)
    database_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.database_ok and all(s.ok for s in self.streams)

    @property
    def failing_streams(self) -> list[StreamReadiness]:
        return [s for s in self.streams if not s.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not ready",
            "database": {"ok": self.database_ok, "error": self.database_error},
            "streams": len(self.streams),
            "failing_streams": [s.to_json() for s in self.failing_streams],
        }


def stream_readiness(
    lags_ms: dict[StreamKey, int], keys: Sequence[StreamKey], margin_ms: int = DEFAULT_LAG_MARGIN_MS
) -> list[StreamReadiness]:
    """Judge each expected live stream from the last lag reported for it."""
    return [
        StreamReadiness(key, lags_ms.get(key), lag_threshold_ms(key.interval, margin_ms))
        for key in keys
    ]


Readiness = Callable[[], Awaitable[ReadyState]]


class MetricsServer:
    """The aiohttp server for `/metrics`, `/health` and `/ready`.

    `port=0` binds a free port; read it from `.port` after `start()`. Use as an async context
    manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        observer: PrometheusObserver,
        *,
        host: str = "127.0.0.1",
        port: int,
        readiness: Readiness,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.observer = observer
        self.host = host
        self._requested_port = port
        self._readiness = readiness
        self._clock = clock
        self._started_at = clock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port: int = port

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        return app

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._started_at = self._clock()
        # access_log=None: a scrape every few seconds would drown the application's own logs.
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner, self._site = runner, site
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.observer.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        uptime = round(self._clock() - self._started_at, 3)
        return _json({"status": "ok", "uptime_s": uptime}, 200)

    async def _ready(self, request: web.Request) -> web.Response:
        try:
            state = await self._readiness()
        except DatabaseUnavailable as exc:
            # The readiness probe's own database check failing is an answer, not a crash.
            state = ReadyState(database_ok=False, database_error=str(exc))
        return _json(state.to_json(), 200 if state.ready else 503)


def _json(payload: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")

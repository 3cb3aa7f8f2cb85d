"""The simulator server: Binance USDⓈ-M REST and WebSocket market streams on one aiohttp port.

REST (binance-futures.md §1-3): `/fapi/v1/ping`, `/fapi/v1/time`, `/fapi/v1/exchangeInfo`,
`/fapi/v1/klines`, with weights, the per-IP budget, 429/418 and Binance's JSON errors. WebSocket
under `/market` (and the silent unrouted `/ws`, `/stream`, `/public`), see `sim/ws.py`. Admin
endpoints under `/_sim/` (not weighted, never faulted) let another process drive the clock and
faults and read the stats and the truth.

    async with Simulator(clock=SimClock.controlled(start_ms)) as sim:
        sim.rest_url, sim.ws_url, sim.clock.advance(60_000), sim.faults.rest_errors(2)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from qryptify_ingestor.domain import INTERVALS
from qryptify_ingestor.sim.clock import SimClock
from qryptify_ingestor.sim.faults import Faults, corrupt_row
from qryptify_ingestor.sim.market import Market, SymbolSpec
from qryptify_ingestor.sim.ratelimit import Admission, Verdict, WeightLimiter, kline_weight
from qryptify_ingestor.sim.stats import SimStats
from qryptify_ingestor.sim.universe import default_symbols, generated_symbols
from qryptify_ingestor.sim.ws import FinalHook, WsHub, WsSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_KLINE_PARAMS = frozenset({"symbol", "interval", "startTime", "endTime", "limit"})


class BinanceError(Exception):
    """A Binance error answer: HTTP status plus `{"code": .., "msg": ..}`."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _mandatory(name: str) -> BinanceError:
    msg = f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    return BinanceError(400, -1102, msg)


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 20:
        if raw == "":
            raise _mandatory(name)
        msg = f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        raise BinanceError(400, -1100, msg)
    return int(raw)


def _limit_of(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    return int(raw) if raw.isdigit() and len(raw) <= 20 else 500


class Simulator:
    """A Binance USDⓈ-M Futures simulator serving on 127.0.0.1 (use as an async context)."""

    def __init__(
        self,
        symbols: Sequence[SymbolSpec] | None = None,
        clock: SimClock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        weight_limit: int = 2400,
        weight_window_ms: int = 60_000,
        ban_after_429s: int = 5,
        ban_base_ms: int = 120_000,
        ws_lifetime_s: float = 86_400.0,
        ws_ping_interval_s: float = 180.0,
        ws_pong_timeout_s: float = 600.0,
        ws_tick_ms: int = 250,
        ws_max_streams: int = 1024,
        ws_max_messages_per_s: int = 10,
        on_final: FinalHook | None = None,
    ) -> None:
        self.clock = clock or SimClock()
        self.market = Market(default_symbols() if symbols is None else symbols, self.clock)
        self.faults = Faults(self.market)
        self.stats = SimStats()
        self.limiter = WeightLimiter(
            weight_limit, weight_window_ms, ban_after_429s=ban_after_429s, ban_base_ms=ban_base_ms
        )
        self.final_sent_at: dict[tuple[str, str, int], float] = {}
        self.ws_settings = WsSettings(
            tick_ms=ws_tick_ms,
            ping_interval_s=ws_ping_interval_s,
            pong_timeout_s=ws_pong_timeout_s,
            lifetime_s=ws_lifetime_s,
            max_streams=ws_max_streams,
            max_messages_per_s=ws_max_messages_per_s,
        )
        self.hub = WsHub(
            self.market,
            self.clock,
            self.faults,
            self.stats,
            self.ws_settings,
            self.final_sent_at,
            on_final,
        )
        self.faults.attach(self.hub)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def with_generated_symbols(cls, n: int, *, onboard_ms: int, **kwargs: Any) -> Simulator:
        """A simulator whose universe is `n` synthetic perpetuals listed at `onboard_ms`."""
        return cls(generated_symbols(n, onboard_ms=onboard_ms), **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/fapi/v1/ping", self._ping)
        app.router.add_get("/fapi/v1/time", self._time)
        app.router.add_get("/fapi/v1/exchangeInfo", self._exchange_info)
        app.router.add_get("/fapi/v1/klines", self._klines)
        hub = self.hub
        app.router.add_get("/market/stream", hub.handle_market_stream)
        app.router.add_get("/market/ws", hub.handle_market_ws)
        app.router.add_get("/market/ws/{tail:.*}", hub.handle_market_ws)
        for route in ("/public", ""):  # kline streams are not carried there
            app.router.add_get(f"{route}/stream", hub.handle_unrouted_stream)
            app.router.add_get(f"{route}/ws", hub.handle_unrouted_ws)
            app.router.add_get(f"{route}/ws/{{tail:.*}}", hub.handle_unrouted_ws)
        app.router.add_get("/_sim/stats", self._admin_stats)
        app.router.add_get("/_sim/clock", self._admin_clock)
        app.router.add_post("/_sim/clock/advance", self._admin_advance)
        app.router.add_post("/_sim/clock/set", self._admin_set_time)
        app.router.add_post("/_sim/clock/speed", self._admin_speed)
        app.router.add_post("/_sim/faults", self._admin_fault)
        app.router.add_post("/_sim/faults/clear", self._admin_clear)
        app.router.add_post("/_sim/limits/reset", self._admin_reset_limits)
        app.router.add_get("/_sim/candles", self._admin_candles)
        app.router.add_get("/_sim/symbols", self._admin_symbols)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        self._tasks = [
            asyncio.create_task(self.hub.run_ticker(), name="sim-ticker"),
            asyncio.create_task(self.hub.run_housekeeping(), name="sim-housekeeping"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.hub.drop(None, abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.hub.close_listeners()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def ws_url(self) -> str:
        """The `/market` route base: append `/stream?streams=…` or `/ws/<stream>`."""
        return f"ws://{self._host}:{self._port}/market"

    def candles(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, *, include_open: bool = False
    ) -> list[list[Any]]:
        """The truth: closed candles opening in [start_ms, end_ms), as REST rows."""
        return self.market.candles(symbol, interval, start_ms, end_ms, include_open=include_open)

    # -- REST pipeline -----------------------------------------------------------------------
    def _weight(self, request: web.Request) -> int:
        if request.path == "/fapi/v1/klines":
            return kline_weight(_limit_of(request))
        return 1

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/") or not path.startswith("/fapi/"):
            return await handler(request)
        stats, faults = self.stats, self.faults
        stats.requests += 1
        delay = faults.take_latency_ms(path)
        if delay:
            await asyncio.sleep(delay / 1000)
        ip = request.remote or "?"
        forced = faults.take_ban()
        if forced is not False:
            admission = self.limiter.ban(ip, None if forced is None else int(forced))
        elif faults.take_storm(path):
            admission = self.limiter.limited(ip)
        else:
            weight = self._weight(request)
            admission = self.limiter.admit(ip, weight)
            if admission.verdict is not Verdict.BANNED:
                stats.weight_used += weight
        if admission.verdict is not Verdict.OK:
            return self._refusal(admission)
        headers = {"X-MBX-USED-WEIGHT-1M": str(admission.used)}
        error = faults.take_error(path)
        if error is not None:
            stats.errors_5xx += 1
            status, content_type, body = error
            return web.Response(
                status=status, text=body, content_type=content_type, headers=headers
            )
        try:
            response = await handler(request)
        except BinanceError as exc:
            response = _json({"code": exc.code, "msg": exc.msg}, exc.status)
        except web.HTTPException as exc:
            response = _json({"code": -1000, "msg": exc.reason}, exc.status)
        response.headers.update(headers)
        if faults.take_reset(path) and isinstance(response, web.Response):
            stats.resets += 1
            return await self._reset_mid_body(request, response)
        return response

    def _refusal(self, admission: Admission) -> web.Response:
        retry_s = max(1, -(-admission.retry_after_ms // 1000))
        headers = {"X-MBX-USED-WEIGHT-1M": str(admission.used), "Retry-After": str(retry_s)}
        if admission.verdict is Verdict.LIMITED:
            self.stats.rate_limited_429 += 1
            msg = (
                f"Too many requests; current limit is {self.limiter.limit} requests per minute. "
                "Please use the websocket for live updates to avoid polling the API."
            )
            return web.Response(
                status=429,
                body=orjson.dumps({"code": -1003, "msg": msg}),
                content_type="application/json",
                headers=headers,
            )
        self.stats.banned_418 += 1
        # The ban end in exchange time (this server's clock), as Binance states it.
        until = self.clock.now_ms() + admission.retry_after_ms
        msg = (
            f"Way too many requests; IP banned until {until}. "
            "Please use the websocket for live updates to avoid bans."
        )
        return web.Response(
            status=418,
            body=orjson.dumps({"code": -1003, "msg": msg}),
            content_type="application/json",
            headers=headers,
        )

    async def _reset_mid_body(
        self, request: web.Request, response: web.Response
    ) -> web.StreamResponse:
        """Send the headers and half the body, then drop the connection."""
        body = response.body if isinstance(response.body, bytes) else b""
        partial = web.StreamResponse(status=response.status, headers=response.headers)
        partial.content_type = response.content_type
        partial.content_length = len(body)
        await partial.prepare(request)
        await partial.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.abort()
        return partial

    # -- REST endpoints ----------------------------------------------------------------------
    async def _ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def _time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": self.clock.now_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return _json(self.exchange_info())

    def exchange_info(self) -> dict[str, Any]:
        window = self.limiter.window_ms
        if window % 60_000 == 0:
            unit, num = "MINUTE", window // 60_000
        else:
            unit, num = "SECOND", max(1, window // 1000)
        assets = sorted({s.margin_asset for s in self.market.specs.values()})
        return {
            "timezone": "UTC",
            "serverTime": self.clock.now_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": unit,
                    "intervalNum": num,
                    "limit": self.limiter.limit,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [
                {"asset": a, "marginAvailable": True, "autoAssetExchange": "-10000"} for a in assets
            ],
            "symbols": [_symbol_info(spec) for spec in self.market.specs.values()],
        }

    async def _klines(self, request: web.Request) -> web.Response:
        q = request.query
        symbol, interval = q.get("symbol"), q.get("interval")
        if not symbol:
            raise _mandatory("symbol")
        if not interval:
            raise _mandatory("interval")
        extra = sorted(set(q) - _KLINE_PARAMS)
        if extra:
            raise BinanceError(
                400,
                -1104,
                f"Not all sent parameters were read; read '{len(set(q) & _KLINE_PARAMS)}' "
                f"parameter(s) but was sent '{len(set(q))}'.",
            )
        limit = _int_param(request, "limit")
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        if limit is None:
            limit = 500
        elif not 1 <= limit <= 1500:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if symbol not in self.market.specs:
            raise BinanceError(400, -1121, "Invalid symbol.")
        if interval not in INTERVALS:
            raise BinanceError(400, -1120, "Invalid interval.")
        if start is not None and end is not None and start > end:
            raise BinanceError(400, -1023, "Start time is greater than end time.")
        now = self.clock.now_ms()
        rows = self.market.klines(
            symbol, interval, now_ms=now, start_ms=start, end_ms=end, limit=limit
        )
        if self.faults.has_malformed(symbol, interval):
            for i, row in enumerate(rows):
                kind = self.faults.take_malformed(symbol, interval, int(row[0]))
                if kind is not None:
                    rows[i] = corrupt_row(row, kind)
        self.stats.klines_rows_served += len(rows)
        return _json(rows)

    # -- admin -------------------------------------------------------------------------------
    async def _admin_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        body = orjson.loads(raw)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="expected a JSON object")
        return body

    async def _admin_stats(self, request: web.Request) -> web.Response:
        stats = self.stats.as_dict()
        stats["ws_streams"] = len(self.hub.stream_names())
        return _json(stats)

    def _clock_state(self) -> dict[str, Any]:
        return {
            "now_ms": self.clock.now_ms(),
            "speed": self.clock.speed,
            "controlled": self.clock.is_controlled,
        }

    async def _admin_clock(self, request: web.Request) -> web.Response:
        return _json(self._clock_state())

    async def _clock_arg(self, request: web.Request, key: str) -> tuple[Any, web.Response | None]:
        body = await self._admin_body(request)
        if not self.clock.is_controlled:
            return None, _json({"error": "the clock follows real time"}, 409)
        if key not in body:
            return None, _json({"error": f"missing {key!r}"}, 400)
        return body[key], None

    async def _admin_advance(self, request: web.Request) -> web.Response:
        ms, error = await self._clock_arg(request, "ms")
        if error is not None:
            return error
        self.clock.advance(int(ms))
        return _json(self._clock_state())

    async def _admin_set_time(self, request: web.Request) -> web.Response:
        ms, error = await self._clock_arg(request, "ms")
        if error is not None:
            return error
        self.clock.set_time(int(ms))
        return _json(self._clock_state())

    async def _admin_speed(self, request: web.Request) -> web.Response:
        speed, error = await self._clock_arg(request, "speed")
        if error is not None:
            return error
        self.clock.set_speed(float(speed))
        return _json(self._clock_state())

    async def _admin_fault(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        name = body.pop("fault", None)
        if not isinstance(name, str):
            return _json({"error": "missing 'fault'"}, 400)
        try:
            result = self.faults.apply(name, body)
        except (TypeError, ValueError, KeyError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"ok": True, "result": result})

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return _json({"ok": True})

    async def _admin_reset_limits(self, request: web.Request) -> web.Response:
        self.limiter.reset()
        return _json({"ok": True})

    async def _admin_candles(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            rows = self.candles(q["symbol"], q["interval"], int(q["start"]), int(q["end"]))
        except (KeyError, ValueError) as exc:
            return _json({"error": f"bad query: {exc}"}, 400)
        return _json(rows)

    async def _admin_symbols(self, request: web.Request) -> web.Response:
        return _json([_symbol_info(s) for s in self.market.specs.values()])


def _symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    """One `exchangeInfo.symbols[]` entry in Binance's shape (UM:md/Exchange-Information)."""
    qp = spec.quantity_precision
    step = "1" if qp == 0 else "0." + "0" * (qp - 1) + "1"
    return {
        "symbol": spec.name,
        "pair": spec.pair,
        "contractType": spec.contract_type,
        "deliveryDate": spec.delivery_ms,
        "onboardDate": spec.onboard_ms,
        "status": spec.status,
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "marginAsset": spec.margin_asset,
        "pricePrecision": spec.price_precision,
        "quantityPrecision": qp,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": spec.underlying_type,
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": spec.tick_size,
                "maxPrice": "1000000",
                "tickSize": spec.tick_size,
            },
            {"filterType": "LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": "1000000"},
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": step,
                "minQty": step,
                "maxQty": "100000",
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": [
            "LIMIT",
            "MARKET",
            "STOP",
            "STOP_MARKET",
            "TAKE_PROFIT",
            "TAKE_PROFIT_MARKET",
            "TRAILING_STOP_MARKET",
        ],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }

"""The httpx adapter for Binance USDⓈ-M REST, and the IP weight budget every request passes.

Owns: the one `httpx.AsyncClient` (keep-alive pool, TLS verification always on), translating
httpx exceptions into the error tree once, retrying what is retryable with full-jitter
backoff, and `WeightBudget`, which keeps the IP's request weight under a share of Binance's
limit and stops every caller while a 429/418 is in force. The rules themselves (weights,
status classes, backoff curve) live in `protocol.py`; parsing lives in `parse.py`.

Raw methods are named after endpoints (`get_klines`); they return domain values.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from qryptify_ingestor.binance.parse import (
    ExchangeInfo,
    parse_exchange_info,
    parse_kline_rows,
    parse_server_time,
)
from qryptify_ingestor.binance.protocol import (
    backoff_delay,
    check_rest_url,
    classify,
    kline_params,
    kline_weight,
    next_window,
    used_weight,
)
from qryptify_ingestor.domain import Candle
from qryptify_ingestor.errors import (
    ExchangeUnavailable,
    FatalError,
    IpBanned,
    MalformedPayload,
    RateLimited,
)
from qryptify_ingestor.observe import NULL_OBSERVER, Observer

__all__ = ["BinanceRest", "BudgetStatistics", "WeightBudget"]

T = TypeVar("T")

Clock = Callable[[], int]
Sleep = Callable[[float], Awaitable[None]]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    limit: int
    window_ms: int
    share: float
    cap: int  # floor(share * limit): the most weight admitted per window
    window_start_ms: int
    server_used: int  # the last X-MBX-USED-WEIGHT-1M seen in this window (0 at a new window)
    in_flight: int  # weight of requests admitted and not yet answered
    paused_until_ms: int  # 0 if not paused
    waiting: int  # callers blocked in acquire()
    admitted_total: int
    waits_total: int
    pauses_total: int


class WeightBudget:
    """Admission control for Binance's per-IP REQUEST_WEIGHT limit (binance-futures.md §3).

    A request of weight w is admitted when `server_used + in_flight + w <= share * limit` in
    the current window, where `server_used` is the latest `X-MBX-USED-WEIGHT-1M` (the server's
    count is the truth; it also covers other processes on this IP) and `in_flight` the weight of
    admitted requests not yet answered. Windows are fixed and aligned to the clock, because
    Binance's counter resets at minute boundaries (an NTP-synced host clock is close enough;
    inject `clock` to use another). `pause_until()` (after a 429 or 418) blocks every caller,
    so no request leaves before the retry time.

    Callers pair `acquire(w)` with `release(w)` once the request is answered or failed.
    """

    def __init__(
        self,
        limit: int,
        window_ms: int,
        share: float = 0.8,
        clock: Clock = _wall_clock_ms,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._share = share
        self._clock = clock
        self._sleep = sleep
        self._limit = 0
        self._window_ms = 0
        self._window_start = 0
        self._server_used = 0
        self._in_flight = 0
        self._paused_until = 0
        self._waiting = 0
        self._admitted = 0
        self._waits = 0
        self._pauses = 0
        self._changed = asyncio.Event()
        self.set_limit(limit, window_ms)

    # --- configuration ------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window_ms(self) -> int:
        return self._window_ms

    @property
    def cap(self) -> int:
        return math.floor(self._share * self._limit)

    def set_limit(self, limit: int, window_ms: int) -> None:
        """Adopt the limit Binance publishes in exchangeInfo (REQUEST_WEIGHT)."""
        if limit < 1 or window_ms < 1:
            raise ValueError(f"weight limit {limit}/{window_ms} ms must be positive")
        if math.floor(self._share * limit) < 1:
            raise ValueError(f"share {self._share} of limit {limit} admits nothing")
        changed_window = window_ms != self._window_ms
        self._limit, self._window_ms = limit, window_ms
        if changed_window:
            self._window_start = 0  # re-align at the next look at the clock
        self._notify()

    def now_ms(self) -> int:
        """The budget's clock, epoch ms."""
        return self._clock()

    # --- accounting -----------------------------------------------------------------------------

    def _roll(self, now_ms: int) -> None:
        start = now_ms // self._window_ms * self._window_ms
        if start > self._window_start:
            # A new window: the server's counter restarted. Requests still in flight stay
            # counted (they may land in this window).
            self._window_start = start
            self._server_used = 0

    def _fits(self, weight: int) -> bool:
        return self._server_used + self._in_flight + weight <= self.cap

    async def acquire(self, weight: int) -> None:
        """Wait until a request of `weight` may be sent now, then count it as in flight."""
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        if weight > self.cap:
            raise ValueError(
                f"request weight {weight} exceeds the budget cap {self.cap} "
                f"({self._share:.0%} of {self._limit})"
            )
        waited = False
        self._waiting += 1
        try:
            while True:
                now = self.now_ms()
                self._roll(now)
                if now < self._paused_until:
                    wait_ms = self._paused_until - now
                elif self._fits(weight):
                    self._in_flight += weight
                    self._admitted += 1
                    return
                else:
                    wait_ms = next_window(now, self._window_ms) - now
                if not waited:
                    waited = True
                    self._waits += 1
                await self._wait(wait_ms)
        finally:
            self._waiting -= 1

    async def _wait(self, wait_ms: int) -> None:
        # Until the deadline, or earlier if a release/update/pause changed the picture.
        changed = self._changed
        sleeper = asyncio.ensure_future(self._sleep(wait_ms / 1000))
        woken = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def release(self, weight: int) -> None:
        """The request admitted with `weight` was answered (call `update` first) or failed."""
        self._in_flight = max(0, self._in_flight - weight)
        self._notify()

    def update(self, used_weight: int, now_ms: int) -> None:
        """Record `X-MBX-USED-WEIGHT-1M` from a response received at `now_ms` (budget time)."""
        self._roll(now_ms)
        if now_ms // self._window_ms * self._window_ms < self._window_start:
            return  # a header from a window that has already ended
        self._server_used = used_weight

    def pause_until(self, until_ms: int) -> None:
        """No request is admitted before `until_ms` (429 retry time or 418 ban end)."""
        if until_ms > self._paused_until:
            self._paused_until = until_ms
            self._pauses += 1
        self._notify()

    @property
    def used(self) -> int:
        """Weight counted against the current window: server's count plus in flight."""
        return self._server_used + self._in_flight

    def statistics(self) -> BudgetStatistics:
        now = self.now_ms()
        self._roll(now)
        return BudgetStatistics(
            limit=self._limit,
            window_ms=self._window_ms,
            share=self._share,
            cap=self.cap,
            window_start_ms=self._window_start,
            server_used=self._server_used,
            in_flight=self._in_flight,
            paused_until_ms=self._paused_until if self._paused_until > now else 0,
            waiting=self._waiting,
            admitted_total=self._admitted,
            waits_total=self._waits,
            pauses_total=self._pauses,
        )


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: httpx.Headers
    sent_ms: int  # budget clock when the request was admitted
    received_ms: int


class BinanceRest:
    """Binance USDⓈ-M market-data REST client: one request per call, retried inside.

    Retryable failures (5xx, 408, timeouts, connection errors) are retried up to
    `max_attempts` times with full-jitter exponential backoff; 429/418 pause the shared budget
    until the retry time and then retry; a malformed body is retried `malformed_attempts`
    times then raised; fatal answers (4xx, 451, 403) raise at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        budget: WeightBudget,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 30.0,
        malformed_attempts: int = 3,
        max_connections: int = 64,
        observer: Observer = NULL_OBSERVER,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        allow_insecure: bool = False,
    ) -> None:
        if max_attempts < 1 or malformed_attempts < 1:
            raise ValueError("max_attempts and malformed_attempts must be >= 1")
        self._base_url = check_rest_url(base_url, allow_insecure=allow_insecure)
        self._host = urlsplit(self._base_url).netloc
        self._budget = budget
        self._max_attempts = max_attempts
        self._malformed_attempts = malformed_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._observer = observer
        self._sleep = sleep
        self._rand = rand
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=True,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "qryptify-ingestor"},
        )

    @property
    def budget(self) -> WeightBudget:
        return self._budget

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- endpoints ------------------------------------------------------------------------------

    async def get_server_time(self) -> int:
        """`GET /fapi/v1/time` (weight 1): the server's clock in epoch ms."""
        return await self._call("/fapi/v1/time", {}, 1, lambda reply: parse_server_time(reply.body))

    async def get_exchange_info(self) -> ExchangeInfo:
        """`GET /fapi/v1/exchangeInfo` (weight 1). Adopts its REQUEST_WEIGHT limit, if any."""
        info = await self._call(
            "/fapi/v1/exchangeInfo", {}, 1, lambda reply: parse_exchange_info(reply.body)
        )
        if any(rl.rate_limit_type == "REQUEST_WEIGHT" for rl in info.rate_limits):
            self._budget.set_limit(*info.request_weight_limit())
        return info

    async def get_klines(
        self,
        symbol: str,
        interval: str,
        *,
        start_ms: int | None,
        end_ms: int | None = None,
        limit: int,
    ) -> list[Candle]:
        """`GET /fapi/v1/klines`: up to `limit` candles from `start_ms`, ascending.

        The last row may be the candle still open; the caller decides closedness against
        server time (binance-futures.md §1.5).
        """
        params = kline_params(symbol, interval, start_ms, end_ms, limit)
        return await self._call(
            "/fapi/v1/klines",
            params,
            kline_weight(limit),
            lambda reply: parse_kline_rows(symbol, interval, reply.body),
        )

    # --- the request loop -------------------------------------------------------------------

    async def _call(
        self,
        path: str,
        params: Mapping[str, str | int],
        weight: int,
        parse: Callable[[_Reply], T],
    ) -> T:
        malformed = 0
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self._send(path, params, weight)
                error = classify(
                    reply.status,
                    reply.body,
                    reply.headers,
                    reply.received_ms,
                    params=params,
                    window_ms=self._budget.window_ms,
                )
                if error is None:
                    return parse(reply)
                if isinstance(error, ExchangeUnavailable):
                    self._observer.rest_error("5xx")
                raise error
            except (RateLimited, IpBanned) as exc:
                # Every caller waits: the budget admits nothing before the retry time, so no
                # request earns the 418 that continuing after a 429 brings (UM:general-info).
                retry_at = exc.retry_at_ms if isinstance(exc, RateLimited) else exc.until_ms
                self._budget.pause_until(retry_at)
                self._observer.rest_error("429" if isinstance(exc, RateLimited) else "418")
                if attempt >= self._max_attempts:
                    raise
            except ExchangeUnavailable:
                if attempt >= self._max_attempts:
                    raise
                await self._sleep(self._backoff(attempt))
            except MalformedPayload:
                self._observer.rest_error("malformed")
                malformed += 1
                if malformed >= self._malformed_attempts or attempt >= self._max_attempts:
                    raise
                await self._sleep(self._backoff(attempt))
            except FatalError:
                raise

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self._backoff_base_s, self._backoff_max_s, self._rand)

    async def _send(self, path: str, params: Mapping[str, str | int], weight: int) -> _Reply:
        """One GET through the budget; httpx errors become ExchangeUnavailable here, once."""
        await self._budget.acquire(weight)
        sent_ms = self._budget.now_ms()
        try:
            try:
                response = await self._client.get(path, params=dict(params))
            except httpx.TimeoutException as exc:
                self._observer.rest_error("timeout")
                raise ExchangeUnavailable(
                    f"GET {self._host}{path} failed: {type(exc).__name__} (timed out)"
                ) from exc
            except (httpx.TransportError, httpx.DecodingError) as exc:
                self._observer.rest_error("reset")
                detail = str(exc) or "connection failed"
                raise ExchangeUnavailable(
                    f"GET {self._host}{path} failed: {type(exc).__name__}: {detail}"
                ) from exc
            received_ms = self._budget.now_ms()
            used = used_weight(response.headers)
            if used is not None:
                self._budget.update(used, received_ms)
        finally:
            # After update(): the answered request's weight moves from in-flight to the
            # server's count without a moment where it is counted nowhere.
            self._budget.release(weight)
        self._observer.rest_response(response.status_code, used)
        if used is not None:
            self._observer.rest_budget(self._budget.limit, self._budget.used)
        return _Reply(
            response.status_code, response.content, response.headers, sent_ms, received_ms
        )

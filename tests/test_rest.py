"""Tests of the httpx REST adapter and the weight budget.

Most tests run against `FakeBinance`, a fake at the httpx transport seam that keeps Binance's
per-window weight count on a virtual clock, so waits of seconds or minutes take no real time.
Connection-level failures use a real loopback TCP server; the end of the file runs the client
against the simulator (`qryptify_ingestor.sim`) over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from qryptify_ingestor.binance.parse import parse_kline_rows
from qryptify_ingestor.binance.protocol import kline_weight
from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.domain import HOUR_MS
from qryptify_ingestor.errors import (
    ConfigError,
    ExchangeRejected,
    ExchangeUnavailable,
    MalformedPayload,
    RateLimited,
    RestrictedLocation,
    WafBlocked,
)
from qryptify_ingestor.observe import Observer
from qryptify_ingestor.sim import SimClock, Simulator
from tests.sim_plugin import SIM_START_MS, MakeSim

DATA = Path(__file__).parent / "data"
T0 = 1_700_000_040_000  # a minute boundary
MINUTE = 60_000


class VirtualTime:
    """A clock plus a sleep that advances it instead of waiting."""

    def __init__(self, now_ms: int = T0 + 1_000) -> None:
        self.now = now_ms
        self.sleeps: list[float] = []

    def clock(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + math.ceil(seconds * 1000)
        await asyncio.sleep(0)
        self.now = max(self.now, target)


@dataclass
class Scripted:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    at_ms: int
    path: str
    params: dict[str, str]
    weight: int


class FakeBinance:
    """Answers /fapi/v1/* like Binance: weight counted per fixed window, X-MBX-USED-WEIGHT-1M.

    `script` holds responses served first, in order, instead of the normal answer.
    """

    def __init__(self, time: VirtualTime, *, limit: int = 2400, window_ms: int = MINUTE) -> None:
        self.time = time
        self.limit = limit
        self.window_ms = window_ms
        self.script: list[Scripted | Exception] = []
        self.seen: list[Seen] = []
        self.used: dict[int, int] = {}
        self.external = 0  # weight another process on the same IP used in the current window
        self.in_handler = 0
        self.overs = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_handler += 1
        try:
            # Let other requests get in flight, as on a real network.
            for _ in range(3):
                await asyncio.sleep(0)
            return self._answer(request)
        finally:
            self.in_handler -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        path = request.url.path
        weight = kline_weight(int(params["limit"])) if path == "/fapi/v1/klines" else 1
        now = self.time.now
        window = now // self.window_ms
        used = self.used.get(window, 0) + self.external + weight
        self.external = 0
        self.used[window] = used
        if used > self.limit:
            self.overs += 1
        self.seen.append(Seen(now, path, params, weight))
        headers = {"x-mbx-used-weight-1m": str(used)}
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return httpx.Response(item.status, content=item.body, headers=headers | item.headers)
        if path == "/fapi/v1/time":
            return httpx.Response(200, json={"serverTime": now}, headers=headers)
        if path == "/fapi/v1/exchangeInfo":
            return httpx.Response(
                200, content=(DATA / "exchange_info.json").read_bytes(), headers=headers
            )
        if path == "/fapi/v1/klines":
            return httpx.Response(200, content=self._klines(params), headers=headers)
        return httpx.Response(404, content=b"<html>Not Found</html>", headers=headers)

    @staticmethod
    def _klines(params: dict[str, str]) -> bytes:
        start = int(params.get("startTime", T0))
        start -= start % MINUTE
        rows = [
            [
                t,
                "10.0",
                "11.0",
                "9.5",
                "10.5",
                "1.000",
                t + MINUTE - 1,
                "10.5",
                3,
                "0.5",
                "5.2",
                "0",
            ]
            for t in range(start, start + min(int(params["limit"]), 3) * MINUTE, MINUTE)
        ]
        return orjson.dumps(rows)


class Recorder(Observer):
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.responses: list[tuple[int, int | None]] = []
        self.budgets: list[tuple[int, int]] = []
        self.first_error = asyncio.Event()

    def rest_error(self, kind: str) -> None:
        self.errors.append(kind)
        self.first_error.set()

    def rest_response(self, status: int, used_weight: int | None) -> None:
        self.responses.append((status, used_weight))

    def rest_budget(self, limit: int, used: int) -> None:
        self.budgets.append((limit, used))


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def fake(vt: VirtualTime) -> FakeBinance:
    return FakeBinance(vt)


@pytest.fixture
def observer() -> Recorder:
    return Recorder()


@pytest.fixture
async def rest(
    vt: VirtualTime, fake: FakeBinance, observer: Recorder
) -> AsyncIterator[BinanceRest]:
    budget = WeightBudget(2400, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    client = BinanceRest(
        "https://fapi.binance.com",
        budget=budget,
        transport=fake.transport(),
        observer=observer,
        sleep=vt.sleep,
        rand=lambda: 1.0,
    )
    async with client:
        yield client


def _err(code: int, msg: str) -> bytes:
    return orjson.dumps({"code": code, "msg": msg})


# --- happy paths ------------------------------------------------------------------------------


async def test_get_klines_sends_params_and_parses(rest: BinanceRest, fake: FakeBinance) -> None:
    """get_klines sends Binance's parameter names and returns parsed candles."""
    candles = await rest.get_klines("BTCUSDT", "1m", start_ms=T0, end_ms=T0 + 5 * MINUTE, limit=499)
    assert [c.open_time for c in candles] == [T0, T0 + MINUTE, T0 + 2 * MINUTE]
    assert str(candles[0].close) == "10.5"
    [seen] = fake.seen
    assert seen.path == "/fapi/v1/klines"
    assert seen.params == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "limit": "499",
        "startTime": str(T0),
        "endTime": str(T0 + 5 * MINUTE),
    }


async def test_server_time_and_exchange_info(rest: BinanceRest, vt: VirtualTime) -> None:
    """get_server_time returns serverTime; get_exchange_info parses and adopts the weight limit."""
    assert await rest.get_server_time() == vt.now
    rest.budget.set_limit(100, MINUTE)
    info = await rest.get_exchange_info()
    assert "BTCUSDT" in info.symbols
    assert (rest.budget.limit, rest.budget.window_ms) == (2400, MINUTE)


async def test_used_weight_header_updates_budget(
    rest: BinanceRest, fake: FakeBinance, observer: Recorder
) -> None:
    """The X-MBX-USED-WEIGHT-1M header becomes the budget's count and is reported."""
    fake.external = 900  # another process on this IP already used 900
    await rest.get_server_time()
    stats = rest.budget.statistics()
    assert (stats.server_used, stats.in_flight) == (901, 0)
    assert observer.responses == [(200, 901)]
    assert observer.budgets == [(2400, 901)]


# --- rate limits ------------------------------------------------------------------------------


async def test_429_with_retry_after_pauses_everyone(
    rest: BinanceRest, fake: FakeBinance, vt: VirtualTime, observer: Recorder
) -> None:
    """After a 429 with Retry-After, no request at all is sent until the retry time."""
    fake.script = [Scripted(429, _err(-1003, "Too many requests"), {"Retry-After": "7"})]
    t_429 = vt.now
    first = asyncio.create_task(rest.get_klines("BTCUSDT", "1m", start_ms=T0, limit=10))
    await observer.first_error.wait()  # reported right after the budget was paused
    assert rest.budget.statistics().paused_until_ms == t_429 + 7000
    others = [rest.get_klines("BTCUSDT", "1m", start_ms=T0, limit=10) for _ in range(4)]
    results = await asyncio.gather(first, *others)
    assert all(len(r) == 3 for r in results)
    assert fake.seen[0].at_ms == t_429
    # The clock moves only when someone sleeps: a request sent during the pause would be
    # stamped before the retry time.
    after = [s.at_ms for s in fake.seen[1:]]
    assert len(after) == 5 and min(after) >= t_429 + 7000
    assert observer.errors == ["429"]
    assert rest.budget.statistics().pauses_total == 1


async def test_429_without_retry_after_waits_for_next_window(
    rest: BinanceRest, fake: FakeBinance, vt: VirtualTime
) -> None:
    """A 429 without Retry-After holds every request until the next window boundary."""
    vt.now = T0 + 12_345
    fake.script = [Scripted(429, _err(-1003, "Too many requests"))]
    await rest.get_server_time()
    assert fake.seen[0].at_ms == T0 + 12_345
    assert fake.seen[1].at_ms >= T0 + MINUTE


async def test_418_ban_time_is_honoured(
    rest: BinanceRest, fake: FakeBinance, vt: VirtualTime, observer: Recorder
) -> None:
    """A 418 'IP banned until <ms>' stops all requests until that time."""
    until = vt.now + 5 * MINUTE + 17
    fake.script = [Scripted(418, _err(-1003, f"Way too many requests; IP banned until {until}."))]
    await rest.get_server_time()
    assert fake.seen[1].at_ms >= until
    assert observer.errors == ["418"]


async def test_repeated_429_eventually_raises(rest: BinanceRest, fake: FakeBinance) -> None:
    """A server that keeps answering 429 makes the call fail with RateLimited after max_attempts."""
    fake.script = [Scripted(429, _err(-1003, "Too many requests"))] * 8
    with pytest.raises(RateLimited):
        await rest.get_server_time()
    assert len(fake.seen) == 8


# --- retryable and fatal errors ---------------------------------------------------------------


async def test_5xx_is_retried_with_backoff(
    rest: BinanceRest, fake: FakeBinance, vt: VirtualTime, observer: Recorder
) -> None:
    """5xx answers are retried with exponential backoff until one succeeds."""
    fake.script = [
        Scripted(503, b"Service Unavailable."),
        Scripted(502, b"<html>Bad Gateway</html>"),
        Scripted(500, _err(-1000, "An unknown error occured while processing the request.")),
    ]
    assert await rest.get_server_time() == vt.now
    assert len(fake.seen) == 4
    assert vt.sleeps == [0.2, 0.4, 0.8]
    assert observer.errors == ["5xx", "5xx", "5xx"]


async def test_retryable_errors_give_up_after_max_attempts(
    rest: BinanceRest, fake: FakeBinance
) -> None:
    """After max_attempts retryable failures the last ExchangeUnavailable is raised."""
    fake.script = [Scripted(504, b"Gateway Timeout")] * 8
    with pytest.raises(ExchangeUnavailable, match="HTTP 504"):
        await rest.get_server_time()
    assert len(fake.seen) == 8


async def test_timeout_is_translated_and_retried(
    rest: BinanceRest, fake: FakeBinance, observer: Recorder
) -> None:
    """An httpx timeout becomes ExchangeUnavailable (retried), naming host and error."""
    fake.script = [httpx.ReadTimeout("read timed out")] * 8
    with pytest.raises(ExchangeUnavailable, match=r"fapi\.binance\.com/fapi/v1/time.*ReadTimeout"):
        await rest.get_server_time()
    assert observer.errors == ["timeout"] * 8
    assert rest.budget.statistics().in_flight == 0


async def test_invalid_symbol_is_fatal_and_names_it(rest: BinanceRest, fake: FakeBinance) -> None:
    """-1121 raises ExchangeRejected naming the symbol, after exactly one request."""
    fake.script = [Scripted(400, _err(-1121, "Invalid symbol."))]
    with pytest.raises(ExchangeRejected, match="NOPEUSDT") as info:
        await rest.get_klines("NOPEUSDT", "1m", start_ms=T0, limit=10)
    assert info.value.code == -1121
    assert len(fake.seen) == 1


async def test_451_restricted_location(rest: BinanceRest, fake: FakeBinance) -> None:
    """HTTP 451 raises RestrictedLocation telling the operator to check the hosting region."""
    fake.script = [
        Scripted(451, _err(0, "Service unavailable from a restricted location according to ..."))
    ]
    with pytest.raises(RestrictedLocation, match="refuses service from this location"):
        await rest.get_exchange_info()
    assert len(fake.seen) == 1


async def test_403_waf_html(rest: BinanceRest, fake: FakeBinance) -> None:
    """HTTP 403 with an HTML body raises WafBlocked at once."""
    fake.script = [Scripted(403, b"<HTML><TITLE>ERROR: The request could not be satisfied")]
    with pytest.raises(WafBlocked, match="could not be satisfied"):
        await rest.get_server_time()
    assert len(fake.seen) == 1


async def test_malformed_body_retried_then_raised(
    rest: BinanceRest, fake: FakeBinance, observer: Recorder
) -> None:
    """A malformed 200 body is retried, then MalformedPayload is raised after 3 tries."""
    fake.script = [Scripted(200, b"<html>maintenance</html>")] * 3
    with pytest.raises(MalformedPayload, match="not JSON"):
        await rest.get_klines("BTCUSDT", "1m", start_ms=T0, limit=10)
    assert len(fake.seen) == 3
    assert observer.errors == ["malformed"] * 3


async def test_malformed_once_then_good(rest: BinanceRest, fake: FakeBinance) -> None:
    """One malformed page followed by a good one returns the good page."""
    fake.script = [Scripted(200, b'[[1,"NaN"]]')]
    candles = await rest.get_klines("BTCUSDT", "1m", start_ms=T0, limit=10)
    assert len(candles) == 3


# --- the budget -------------------------------------------------------------------------------


async def test_budget_holds_across_20_concurrent_callers(vt: VirtualTime) -> None:
    """20 concurrent callers never push a window's weight over share × limit (nor get a 429)."""
    fake = FakeBinance(vt, limit=100, window_ms=MINUTE)
    budget = WeightBudget(100, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    async with BinanceRest(
        "https://fapi.binance.com", budget=budget, transport=fake.transport(), sleep=vt.sleep
    ) as rest:
        max_in_handler = 0

        async def caller(i: int) -> int:
            nonlocal max_in_handler
            total = 0
            for _ in range(5):
                rows = await rest.get_klines("BTCUSDT", "1m", start_ms=T0, limit=100 + i)
                max_in_handler = max(max_in_handler, fake.in_handler)
                total += len(rows)
            return total

        totals = await asyncio.gather(*(caller(i) for i in range(20)))
    assert totals == [15] * 20
    assert len(fake.seen) == 100
    assert max(fake.used.values()) <= 80  # 0.8 × 100, weight 2 per request
    assert len(fake.used) >= 3  # 200 weight needed 3 windows at 80
    assert fake.overs == 0
    assert max_in_handler > 1  # requests really were concurrent
    assert budget.statistics().in_flight == 0


async def test_budget_respects_weight_used_elsewhere(vt: VirtualTime) -> None:
    """Weight reported by the header (other processes) shrinks what this process may send."""
    budget = WeightBudget(100, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    budget.update(75, vt.now)
    await budget.acquire(5)  # 75 + 5 = 80: fits
    start = vt.now
    await budget.acquire(1)  # 81 > 80: next window
    assert vt.now >= (start // MINUTE + 1) * MINUTE
    assert budget.statistics().in_flight == 6


async def test_budget_resets_at_window_boundary(vt: VirtualTime) -> None:
    """A new window forgets the previous header count; in-flight weight stays counted."""
    budget = WeightBudget(100, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    await budget.acquire(10)
    budget.update(70, vt.now)
    assert budget.used == 80
    vt.now = (vt.now // MINUTE + 1) * MINUTE
    stats = budget.statistics()
    assert (stats.server_used, stats.in_flight) == (0, 10)
    budget.update(3, vt.now)
    budget.release(10)
    assert budget.used == 3


async def test_stale_header_from_previous_window_is_ignored(vt: VirtualTime) -> None:
    """A header stamped in an already-ended window does not count against the new one."""
    budget = WeightBudget(100, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    old = vt.now
    vt.now += MINUTE
    budget.update(5, vt.now)
    budget.update(79, old)
    assert budget.used == 5


async def test_pause_blocks_acquire(vt: VirtualTime) -> None:
    """pause_until holds acquire until the pause ends, even with weight to spare."""
    budget = WeightBudget(100, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    budget.pause_until(vt.now + 4_000)
    until = vt.now + 4_000
    await budget.acquire(1)
    assert vt.now >= until
    assert budget.statistics().paused_until_ms == 0


async def test_release_wakes_waiters_early() -> None:
    """A failed request's released weight admits a waiter without waiting for the next window."""
    budget = WeightBudget(10, 3_600_000, 1.0)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0.01)
    assert not waiter.done() and budget.statistics().waiting == 1
    budget.release(10)  # answered without a header (e.g. connection reset)
    await asyncio.wait_for(waiter, 1.0)
    assert budget.used == 5


async def test_set_limit_and_bad_weights(vt: VirtualTime) -> None:
    """set_limit changes the cap; a weight above the cap is refused rather than waited on."""
    budget = WeightBudget(2400, MINUTE, 0.8, vt.clock, sleep=vt.sleep)
    assert budget.cap == 1920
    budget.set_limit(10, 1_000)
    assert (budget.cap, budget.window_ms) == (8, 1_000)
    with pytest.raises(ValueError, match="exceeds the budget cap 8"):
        await budget.acquire(10)
    with pytest.raises(ValueError):
        WeightBudget(10, MINUTE, 0.0)


# --- URL policy and real connections -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.3.4.5",
        "http://[::1]:9000",
        "http://localhost:1234/",
        "https://fapi.binance.com",
    ],
)
async def test_allowed_urls(url: str) -> None:
    """https anywhere and plain http on loopback hosts are accepted."""
    client = BinanceRest(url, budget=WeightBudget(2400, MINUTE))
    await client.aclose()


@pytest.mark.parametrize(
    "url", ["http://fapi.binance.com", "http://10.0.0.5:80", "ftp://x", "fapi.binance.com"]
)
async def test_refused_urls(url: str) -> None:
    """Plain http to a non-loopback host, or a non-http URL, is a ConfigError naming the URL."""
    with pytest.raises(ConfigError, match=re.escape(url)):
        BinanceRest(url, budget=WeightBudget(2400, MINUTE))


async def test_allow_insecure_overrides() -> None:
    """allow_insecure=True admits plain http to any host."""
    client = BinanceRest(
        "http://10.0.0.5:80", budget=WeightBudget(2400, MINUTE), allow_insecure=True
    )
    await client.aclose()


@contextlib.asynccontextmanager
async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A real TCP server on 127.0.0.1; every connection is closed and awaited on exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_connection_reset_is_retried_over_loopback(observer: Recorder) -> None:
    """A real server that drops the first connection mid-request is retried transparently."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        if connections == 1:
            writer.transport.abort()  # RST / EOF without a response
            return
        body = b'{"serverTime":1700000000123}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"X-MBX-USED-WEIGHT-1M: 3\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()

    sleeps: list[float] = []

    async def fast_sleep(s: float) -> None:
        sleeps.append(s)

    async with (
        _serve(handler) as url,
        BinanceRest(
            url, budget=WeightBudget(2400, MINUTE), observer=observer, sleep=fast_sleep
        ) as rest,
    ):
        assert await rest.get_server_time() == 1700000000123
    assert connections == 2
    assert observer.errors == ["reset"]
    assert len(sleeps) == 1


async def test_connection_refused_names_host(observer: Recorder) -> None:
    """With nothing listening, the error is ExchangeUnavailable naming host and ConnectError."""
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def fast_sleep(s: float) -> None:
        pass

    host = url.removeprefix("http://")
    async with BinanceRest(
        url, budget=WeightBudget(2400, MINUTE), max_attempts=2, sleep=fast_sleep, observer=observer
    ) as rest:
        with pytest.raises(ExchangeUnavailable, match=rf"{host}/fapi/v1/time.*ConnectError"):
            await rest.get_server_time()
    assert observer.errors == ["reset", "reset"]


async def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests reuse one HTTP keep-alive connection."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = b'{"serverTime":1}'
        try:
            while True:
                await _read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed the connection

    async with _serve(handler) as url, BinanceRest(url, budget=WeightBudget(2400, MINUTE)) as rest:
        for _ in range(5):
            assert await rest.get_server_time() == 1
    assert connections == 1


# --- against the simulator over loopback --------------------------------------------------------


def _sim_rest(sim: Simulator, **kwargs: Any) -> BinanceRest:
    kwargs.setdefault("budget", WeightBudget(sim.limiter.limit, sim.limiter.window_ms))
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_max_s", 0.05)
    return BinanceRest(sim.rest_url, **kwargs)


async def test_sim_klines_equal_the_truth(sim: Simulator) -> None:
    """Closed candles fetched from the simulator equal its ground truth, value for value."""
    start = SIM_START_MS - SIM_START_MS % HOUR_MS - 2 * HOUR_MS
    async with _sim_rest(sim) as rest:
        info = await rest.get_exchange_info()
        assert "BTCUSDT" in info.symbols
        candles = await rest.get_klines("BTCUSDT", "1m", start_ms=start, limit=99)
        server_ms = await rest.get_server_time()
    truth = parse_kline_rows(
        "BTCUSDT", "1m", orjson.dumps(sim.candles("BTCUSDT", "1m", start, start + 99 * MINUTE))
    )
    assert len(candles) == 99 and candles == truth
    assert abs(server_ms - sim.clock.now_ms()) < 1000


async def test_sim_budget_adopted_and_never_429(make_sim: MakeSim) -> None:
    """With a 100-weight/1 s limit, 20 concurrent callers adopt it and never earn a 429."""
    sim = await make_sim(weight_limit=100, weight_window_ms=1_000)
    start = SIM_START_MS - SIM_START_MS % HOUR_MS - 2 * HOUR_MS
    async with _sim_rest(sim, budget=WeightBudget(2400, MINUTE)) as rest:
        await rest.get_exchange_info()
        assert (rest.budget.limit, rest.budget.window_ms, rest.budget.cap) == (100, 1_000, 80)

        async def caller() -> None:
            for _ in range(3):
                await rest.get_klines("BTCUSDT", "1m", start_ms=start, limit=100)

        await asyncio.gather(*(caller() for _ in range(20)))
    assert sim.stats.requests == 61
    assert sim.stats.weight_used == 121
    assert sim.stats.rate_limited_429 == 0 and sim.stats.banned_418 == 0


async def test_sim_429_storm_pauses_then_recovers(make_sim: MakeSim) -> None:
    """A 429 (Retry-After 1 s) pauses every caller; nothing is sent until then; no 418 earned."""
    # A 1 s weight window keeps the simulator's Retry-After (the rest of its window) at 1 s.
    sim = await make_sim(clock=SimClock(), weight_window_ms=1_000)
    sim.faults.rate_limit_storm(count=1)
    loop = asyncio.get_running_loop()
    async with _sim_rest(sim) as rest:
        started = loop.time()
        first = asyncio.create_task(rest.get_server_time())
        while sim.stats.rate_limited_429 == 0:  # noqa: ASYNC110 - polling the sim's counter
            await asyncio.sleep(0.001)
        requests_at_429 = sim.stats.requests
        await asyncio.sleep(0.5)
        others = [asyncio.create_task(rest.get_server_time()) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert sim.stats.requests == requests_at_429  # nothing left during the pause
        await asyncio.gather(first, *others)
        assert loop.time() - started >= 0.9
    assert sim.stats.rate_limited_429 == 1 and sim.stats.banned_418 == 0
    assert sim.stats.requests == 7


async def test_sim_418_ban_is_waited_out(make_sim: MakeSim) -> None:
    """A forced 418 with a ban end in the message is waited out, then the call succeeds."""
    sim = await make_sim(clock=SimClock())
    sim.faults.ban(duration_ms=800)
    loop = asyncio.get_running_loop()
    async with _sim_rest(sim) as rest:
        started = loop.time()
        await rest.get_server_time()
        assert loop.time() - started >= 0.7
    assert sim.stats.banned_418 == 1 and sim.stats.requests == 2


async def test_sim_5xx_and_resets_are_retried(sim: Simulator) -> None:
    """Injected 503s and mid-body connection resets are retried until the call succeeds."""
    sim.faults.rest_errors(2, status=503)
    sim.faults.rest_reset(1)
    recorder = Recorder()
    async with _sim_rest(sim, observer=recorder) as rest:
        await rest.get_server_time()
        await rest.get_server_time()
    assert sim.stats.errors_5xx == 2 and sim.stats.resets == 1
    assert sorted(recorder.errors) == ["5xx", "5xx", "reset"]


async def test_sim_malformed_row_is_raised_after_retries(sim: Simulator) -> None:
    """A persistently corrupt row raises MalformedPayload after three fetches."""
    start = SIM_START_MS - SIM_START_MS % HOUR_MS - HOUR_MS
    sim.faults.malformed("BTCUSDT", "1m", start + 5 * MINUTE, "high_below_low")
    async with _sim_rest(sim) as rest:
        with pytest.raises(MalformedPayload, match="OHLC inconsistent"):
            await rest.get_klines("BTCUSDT", "1m", start_ms=start, limit=10)
    assert sim.stats.requests == 3


async def test_sim_unknown_symbol_is_fatal(sim: Simulator) -> None:
    """The simulator's -1121 for an unknown symbol raises ExchangeRejected naming it, once."""
    async with _sim_rest(sim) as rest:
        with pytest.raises(ExchangeRejected, match="NOSUCHUSDT"):
            await rest.get_klines("NOSUCHUSDT", "1m", start_ms=None, limit=10)
    assert sim.stats.requests == 1

"""Pure parsers: Binance bytes -> domain values, or `MalformedPayload`.

This is the only module that converts wire shapes (`wire.py`) into domain types. Everything is
checked, because a wrong candle written once is wrong forever: row shape, JSON types, decimal
syntax, OHLC consistency, close time and alignment against the interval, ordering. A body that
fails anywhere raises `MalformedPayload` naming the problem with a raw excerpt; nothing partial
is ever returned. No I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import orjson

from qryptify_ingestor.binance import wire
from qryptify_ingestor.domain import Candle, Interval
from qryptify_ingestor.errors import MalformedPayload

__all__ = [
    "ControlError",
    "ControlReply",
    "ExchangeInfo",
    "KlineEvent",
    "RateLimit",
    "SymbolInfo",
    "parse_error_body",
    "parse_exchange_info",
    "parse_kline_rows",
    "parse_server_time",
    "parse_stream_message",
]

# Binance sends prices and volumes as plain decimal strings ("0.01634790", "148976.11427815");
# anything else (exponents, NaN, inf, blanks, signs other than '-') is not what it documents.
_DECIMAL_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


# --- domain-side result types -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KlineEvent:
    """One kline push from a market stream; `closed` is Binance's `k.x`."""

    stream: str
    event_time: int
    candle: Candle
    closed: bool


@dataclass(frozen=True, slots=True)
class ControlError:
    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class ControlReply:
    """The answer to a SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS/… request."""

    id: int | None
    result: object
    error: ControlError | None


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_limit_type: str
    interval: str
    interval_num: int
    limit: int

    @property
    def window_ms(self) -> int | None:
        """The window length, or None for an interval unit Binance has not documented."""
        unit = wire.RATE_LIMIT_INTERVAL_MS.get(self.interval)
        return None if unit is None else unit * self.interval_num


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    symbol: str
    pair: str
    status: str
    contract_type: str
    onboard_date_ms: int
    delivery_date_ms: int
    base_asset: str
    quote_asset: str
    margin_asset: str


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    symbols: dict[str, SymbolInfo]
    rate_limits: list[RateLimit]
    server_time_ms: int

    def request_weight_limit(self) -> tuple[int, int]:
        """(limit, window_ms) of the REQUEST_WEIGHT limit with the shortest window.

        The shortest window is the one `X-MBX-USED-WEIGHT-1M` reports on and the one a burst
        breaks first; Binance's example has a single MINUTE/1/2400 entry.
        """
        best: tuple[int, int] | None = None
        for rl in self.rate_limits:
            if rl.rate_limit_type != "REQUEST_WEIGHT":
                continue
            window = rl.window_ms
            if window is None:
                raise MalformedPayload(
                    f"exchangeInfo: REQUEST_WEIGHT has unknown interval {rl.interval!r}",
                    excerpt=repr(rl),
                )
            if best is None or window < best[1]:
                best = (rl.limit, window)
        if best is None:
            raise MalformedPayload("exchangeInfo: no REQUEST_WEIGHT rate limit", excerpt="")
        return best


# --- helpers ----------------------------------------------------------------------------------


def _excerpt(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)[:200].decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:200]
    try:
        return orjson.dumps(value).decode()[:200]
    except TypeError:
        return repr(value)[:200]


def _bad(what: str, problem: str, raw: object) -> MalformedPayload:
    excerpt = _excerpt(raw)
    return MalformedPayload(f"{what}: {problem}; raw: {excerpt}", excerpt=excerpt)


def _decode(what: str, body: bytes | str) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(what, f"not JSON ({exc})", body) from exc


def _int(value: object, name: str) -> int:
    # bool is an int subclass in Python; JSON true is not a time or a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} is not an integer: {value!r}")
    return value


def _dec(value: object, name: str) -> Decimal:
    if not isinstance(value, str) or not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"{name} is not a plain decimal string: {value!r}")
    return Decimal(value)  # exactly as sent, trailing zeros kept


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string: {value!r}")
    return value


def _candle(
    symbol: str,
    iv: Interval,
    open_time: object,
    open_: object,
    high: object,
    low: object,
    close: object,
    volume: object,
    close_time: object,
    quote_volume: object,
    trades: object,
    taker_buy_base: object,
    taker_buy_quote: object,
) -> Candle:
    """The one place wire values become a `Candle`; raises ValueError naming the problem."""
    c = Candle(
        symbol=symbol,
        interval=iv.name,
        open_time=_int(open_time, "open time"),
        open=_dec(open_, "open"),
        high=_dec(high, "high"),
        low=_dec(low, "low"),
        close=_dec(close, "close"),
        volume=_dec(volume, "volume"),
        close_time=_int(close_time, "close time"),
        quote_volume=_dec(quote_volume, "quote volume"),
        trades=_int(trades, "trades"),
        taker_buy_base=_dec(taker_buy_base, "taker buy base volume"),
        taker_buy_quote=_dec(taker_buy_quote, "taker buy quote volume"),
    )
    if c.open_time < 0:
        raise ValueError(f"open time {c.open_time} is negative")
    if iv.floor(c.open_time) != c.open_time:
        raise ValueError(f"open time {c.open_time} is not aligned to {iv.name}")
    expected_close = iv.close_time(c.open_time)
    if c.close_time != expected_close:
        raise ValueError(
            f"close time {c.close_time} != {expected_close} (open time + {iv.name} - 1 ms)"
        )
    if c.trades < 0:
        raise ValueError(f"trades {c.trades} is negative")
    if c.low < 0:
        raise ValueError(f"low {c.low} is negative")
    if not (c.low <= c.open <= c.high and c.low <= c.close <= c.high):
        raise ValueError(f"OHLC inconsistent: o={c.open} h={c.high} l={c.low} c={c.close}")
    for name, v in (
        ("volume", c.volume),
        ("quote volume", c.quote_volume),
        ("taker buy base volume", c.taker_buy_base),
        ("taker buy quote volume", c.taker_buy_quote),
    ):
        if v < 0:
            raise ValueError(f"{name} {v} is negative")
    return c


# --- REST -------------------------------------------------------------------------------------


def parse_kline_rows(symbol: str, interval: str, body: bytes) -> list[Candle]:
    """All candles of a `/fapi/v1/klines` body, or `MalformedPayload`; never a partial list.

    `interval` is the one requested (a bad one is the caller's bug: ValueError).
    """
    iv = Interval(interval)
    what = f"klines {symbol} {interval}"
    rows = _decode(what, body)
    if not isinstance(rows, list):
        raise _bad(what, "body is not a JSON array", body)
    out: list[Candle] = []
    prev: int | None = None
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != wire.ROW_LENGTH:
            raise _bad(what, f"row {i} is not a {wire.ROW_LENGTH}-item array", row)
        try:
            c = _candle(
                symbol,
                iv,
                row[wire.ROW_OPEN_TIME],
                row[wire.ROW_OPEN],
                row[wire.ROW_HIGH],
                row[wire.ROW_LOW],
                row[wire.ROW_CLOSE],
                row[wire.ROW_VOLUME],
                row[wire.ROW_CLOSE_TIME],
                row[wire.ROW_QUOTE_VOLUME],
                row[wire.ROW_TRADES],
                row[wire.ROW_TAKER_BUY_BASE],
                row[wire.ROW_TAKER_BUY_QUOTE],
            )
        except ValueError as exc:
            raise _bad(what, f"row {i}: {exc}", row) from exc
        # Binance returns every endpoint's data oldest first (UM:general-info); a repeat or a
        # step back means the page cannot be trusted as a contiguous range.
        if prev is not None and c.open_time <= prev:
            raise _bad(what, f"row {i}: open time {c.open_time} not after {prev}", row)
        prev = c.open_time
        out.append(c)
    return out


def parse_server_time(body: bytes) -> int:
    """`{"serverTime": <ms>}` from `/fapi/v1/time`."""
    obj = _decode("time", body)
    if not isinstance(obj, dict):
        raise _bad("time", "body is not a JSON object", body)
    try:
        return _int(obj.get("serverTime"), "serverTime")
    except ValueError as exc:
        raise _bad("time", str(exc), body) from exc


def parse_error_body(body: bytes) -> tuple[int, str] | None:
    """(code, msg) of a Binance error body `{"code":…,"msg":…}`, or None if it is not one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    code, msg = obj.get("code"), obj.get("msg")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(msg, str):
        return None
    return code, msg


def parse_exchange_info(body: bytes) -> ExchangeInfo:
    """The parts of `/fapi/v1/exchangeInfo` we use, or `MalformedPayload`."""
    what = "exchangeInfo"
    obj = _decode(what, body)
    if not isinstance(obj, dict):
        raise _bad(what, "body is not a JSON object", body)
    raw_limits, raw_symbols = obj.get("rateLimits"), obj.get("symbols")
    if not isinstance(raw_limits, list):
        raise _bad(what, "rateLimits is not an array", raw_limits)
    if not isinstance(raw_symbols, list):
        raise _bad(what, "symbols is not an array", body)
    try:
        server_time = _int(obj.get("serverTime"), "serverTime")
    except ValueError as exc:
        raise _bad(what, str(exc), body) from exc

    limits: list[RateLimit] = []
    for rl in raw_limits:
        try:
            if not isinstance(rl, dict):
                raise ValueError("entry is not an object")
            limits.append(
                RateLimit(
                    rate_limit_type=_str(rl, "rateLimitType"),
                    interval=_str(rl, "interval"),
                    interval_num=_positive(rl.get("intervalNum"), "intervalNum"),
                    limit=_positive(rl.get("limit"), "limit"),
                )
            )
        except ValueError as exc:
            raise _bad(what, f"rateLimits: {exc}", rl) from exc

    symbols: dict[str, SymbolInfo] = {}
    for s in raw_symbols:
        try:
            if not isinstance(s, dict):
                raise ValueError("entry is not an object")
            info = SymbolInfo(
                symbol=_str(s, "symbol"),
                pair=_str(s, "pair"),
                status=_str(s, "status"),
                contract_type=_str(s, "contractType"),
                onboard_date_ms=_int(s.get("onboardDate"), "onboardDate"),
                delivery_date_ms=_int(s.get("deliveryDate"), "deliveryDate"),
                base_asset=_str(s, "baseAsset"),
                quote_asset=_str(s, "quoteAsset"),
                margin_asset=_str(s, "marginAsset"),
            )
        except ValueError as exc:
            raise _bad(what, f"symbols: {exc}", s) from exc
        if info.symbol in symbols:
            raise _bad(what, f"symbols: {info.symbol} listed twice", s)
        symbols[info.symbol] = info
    return ExchangeInfo(symbols=symbols, rate_limits=limits, server_time_ms=server_time)


def _positive(value: object, name: str) -> int:
    n = _int(value, name)
    if n <= 0:
        raise ValueError(f"{name} is not positive: {n}")
    return n


# --- WebSocket --------------------------------------------------------------------------------


def parse_stream_message(data: bytes | str) -> KlineEvent | ControlReply | None:
    """One WebSocket text frame: a kline event, a control reply, or None for other events.

    Accepts the combined-stream envelope `{"stream": …, "data": …}` and bare events (UM:ws).
    """
    what = "stream message"
    obj = _decode(what, data)
    if isinstance(obj, list):
        return None  # array streams such as `!ticker@arr`: not ours
    if not isinstance(obj, dict):
        raise _bad(what, "not a JSON object", data)

    if "stream" in obj and "data" in obj:
        stream = obj["stream"]
        if not isinstance(stream, str):
            raise _bad(what, "stream name is not a string", data)
        event = obj["data"]
        if isinstance(event, list):
            return None
        if not isinstance(event, dict):
            raise _bad(what, "data is not a JSON object", data)
        return _kline_event(event, stream, data)

    if "e" in obj:
        return _kline_event(obj, None, data)

    if "result" in obj or "error" in obj:
        return _control_reply(obj, data)

    raise _bad(what, "neither an event nor a reply", data)


def _control_reply(obj: Mapping[str, object], raw: bytes | str) -> ControlReply:
    what = "control reply"
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        raise _bad(what, f"id is not an integer: {rid!r}", raw)
    err = obj.get("error")
    error: ControlError | None = None
    if err is not None:
        if not isinstance(err, dict):
            raise _bad(what, "error is not an object", raw)
        code, msg = err.get("code"), err.get("msg")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(msg, str):
            raise _bad(what, "error lacks an integer code and a string msg", raw)
        error = ControlError(code=code, msg=msg)
    return ControlReply(id=rid, result=obj.get("result"), error=error)


def _kline_event(
    event: Mapping[str, object], stream: str | None, raw: bytes | str
) -> KlineEvent | None:
    etype = event.get("e")
    if not isinstance(etype, str):
        raise _bad("stream event", "event type e is not a string", raw)
    if etype != "kline":
        return None
    what = "kline event"
    k = event.get("k")
    if not isinstance(k, dict):
        raise _bad(what, "k is not an object", raw)
    try:
        symbol = _symbol_of(event, k)
        interval = _str(k, "i")
        try:
            iv = Interval(interval)
        except ValueError as exc:
            raise ValueError(f"interval {interval!r} is not a USDⓈ-M kline interval") from exc
        event_time = _int(event.get("E"), "E")
        closed = k.get("x")
        if not isinstance(closed, bool):
            raise ValueError(f"x is not a boolean: {closed!r}")
        candle = _candle(
            symbol,
            iv,
            k.get("t"),
            k.get("o"),
            k.get("h"),
            k.get("l"),
            k.get("c"),
            k.get("v"),
            k.get("T"),
            k.get("q"),
            k.get("n"),
            k.get("V"),
            k.get("Q"),
        )
    except ValueError as exc:
        raise _bad(what, str(exc), raw) from exc
    # Stream names carry the symbol lowercased (UM:ws/Kline-Candlestick-Streams); an envelope
    # naming another stream than its payload would file the candle under the wrong key.
    expected = f"{symbol.lower()}@kline_{interval}"
    if stream is None:
        stream = expected
    elif stream != expected:
        raise _bad(what, f"stream {stream!r} does not match payload ({expected!r})", raw)
    return KlineEvent(stream=stream, event_time=event_time, candle=candle, closed=closed)


def _symbol_of(event: Mapping[str, object], k: Mapping[str, object]) -> str:
    ks, es = k.get("s"), event.get("s")
    if ks is None and es is None:
        raise ValueError("no symbol (k.s or s)")
    for v in (ks, es):
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"symbol is not a non-empty string: {v!r}")
    if ks is not None and es is not None and ks != es:
        raise ValueError(f"k.s {ks!r} differs from s {es!r}")
    symbol = ks if ks is not None else es
    if not isinstance(symbol, str):  # unreachable after the checks above; keeps mypy exact
        raise ValueError(f"symbol is not a string: {symbol!r}")
    return symbol

"""Binance's USDⓈ-M shapes in Binance's spelling: what arrives on the wire, before parsing.

Nothing here is trusted: these types document what Binance promises (binance-futures.md §1.4,
§2.1, §3, §4.2-4.5). `parse.py` checks every value against them and is the only module that
turns them into domain types. Field names and units stay Binance's (`t`, `T`, ms, decimal
strings) so a reader can hold this file next to the docs.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

# --- REST `GET /fapi/v1/klines` --------------------------------------------------------------
# A body is a JSON array of rows; a row is a 12-item array (UM:md/Kline-Candlestick-Data):
#   [open time, "open", "high", "low", "close", "volume", close time, "quote volume",
#    trades, "taker buy base volume", "taker buy quote volume", "ignore"]
# Times and the trade count are JSON integers; prices and volumes are decimal strings.
KlineRow = list[int | str]

ROW_LENGTH: Final = 12
ROW_OPEN_TIME: Final = 0
ROW_OPEN: Final = 1
ROW_HIGH: Final = 2
ROW_LOW: Final = 3
ROW_CLOSE: Final = 4
ROW_VOLUME: Final = 5
ROW_CLOSE_TIME: Final = 6
ROW_QUOTE_VOLUME: Final = 7
ROW_TRADES: Final = 8
ROW_TAKER_BUY_BASE: Final = 9
ROW_TAKER_BUY_QUOTE: Final = 10
ROW_IGNORE: Final = 11


# --- REST errors (UM:general-info "error codes") ---------------------------------------------
class ErrorBody(TypedDict):
    """`{"code": -1121, "msg": "Invalid symbol."}`: negative codes are stable, messages vary."""

    code: int
    msg: str


# --- REST `GET /fapi/v1/time` ----------------------------------------------------------------
class ServerTime(TypedDict):
    serverTime: int


# --- REST `GET /fapi/v1/exchangeInfo` (UM:md/Exchange-Information) ---------------------------
class RateLimit(TypedDict):
    """e.g. `{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
    "limit": 2400}`."""

    rateLimitType: str  # REQUEST_WEIGHT | ORDERS (UM:common-definition)
    interval: str  # SECOND | MINUTE | HOUR | DAY
    intervalNum: int
    limit: int


class SymbolEntry(TypedDict):
    """The fields of `symbols[]` we read; Binance sends many more (filters, margins, …)."""

    symbol: str
    pair: str
    contractType: str  # PERPETUAL, CURRENT_QUARTER, …, TRADIFI_PERPETUAL
    deliveryDate: int  # ms; perpetuals carry 4133404800000 until a delisting is announced
    onboardDate: int  # ms; a hint only (binance/binance-public-data#427)
    status: str  # TRADING, SETTLING, CLOSE, …
    baseAsset: str
    quoteAsset: str
    marginAsset: str


class ExchangeInfo(TypedDict):
    serverTime: int
    rateLimits: list[RateLimit]
    symbols: list[SymbolEntry]


RATE_LIMIT_INTERVAL_MS: Final[dict[str, int]] = {
    "SECOND": 1_000,
    "MINUTE": 60_000,
    "HOUR": 3_600_000,
    "DAY": 86_400_000,
}


# --- WebSocket market streams (UM:ws/Kline-Candlestick-Streams) -----------------------------
class WsKline(TypedDict):
    """The `k` object of a kline event."""

    t: int  # kline open time, ms (= REST row field 0)
    T: int  # kline close time, ms (= REST row field 6)
    s: str  # symbol, uppercase
    i: str  # interval
    f: int  # first trade id
    L: int  # last trade id
    o: str  # open
    c: str  # close (the latest price while the kline is open)
    h: str  # high
    l: str  # low  # noqa: E741 - Binance's name
    v: str  # base asset volume
    n: int  # number of trades
    x: bool  # is this kline closed?
    q: str  # quote asset volume
    V: str  # taker buy base asset volume
    Q: str  # taker buy quote asset volume
    B: str  # ignore


class WsKlineEvent(TypedDict):
    e: Literal["kline"]
    E: int  # event time, ms
    s: str  # symbol
    k: WsKline


class WsCombined(TypedDict):
    """`/stream?streams=…` wraps every event: `{"stream": "btcusdt@kline_1m", "data": {…}}`."""

    stream: str
    data: WsKlineEvent


class WsReplyError(TypedDict):
    code: int
    msg: str


class WsReply(TypedDict, total=False):
    """Reply to SUBSCRIBE & co: `{"result": null, "id": 1}` or
    `{"error": {"code": 2, "msg": "…"}, "id": 1}` (UM:ws/Live-Subscribing-Unsubscribing)."""

    result: object
    error: WsReplyError
    id: int | None

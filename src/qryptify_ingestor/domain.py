"""Domain types: intervals, candles, time ranges. Standard library only.

Times inside the core are integer milliseconds since the Unix epoch (UTC), the unit Binance
uses everywhere (UM:general-info); conversion to `datetime` happens only at the storage and
display edges. Prices and volumes are `Decimal`, parsed from the exact strings Binance sent,
so a value reads back equal to what the exchange published.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday; Binance weeks open on Monday 00:00 UTC (the docs' 1w example row
# opens 2017-07-03, a Monday), i.e. four days after the epoch.
_WEEK_OFFSET_MS = 4 * DAY_MS

_FIXED_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": WEEK_MS,
}
# The USDⓈ-M kline intervals, REST and WebSocket alike (binance-futures.md §1.3). No `1s`.
INTERVALS: tuple[str, ...] = (*_FIXED_MS, "1M")

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")


def validate_symbol(symbol: str) -> str:
    """Return `symbol` if it is safe to put in a URL, a stream name or SQL; else ValueError.

    Binance has listed non-ASCII symbols since 2025-10-09 (DCL); we accept the ASCII alphabet
    the USDⓈ-M perpetuals use and refuse anything else rather than guess at escaping.
    """
    if not _SYMBOL_RE.fullmatch(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected 2-30 characters A-Z or 0-9")
    return symbol


@dataclass(frozen=True, slots=True)
class Interval:
    """A kline interval such as `1m` or `1M` (case matters: `1M` is a month)."""

    name: str
    ALL: ClassVar[tuple[str, ...]] = INTERVALS

    def __post_init__(self) -> None:
        if self.name not in INTERVALS:
            raise ValueError(
                f"invalid interval {self.name!r}: expected one of {' '.join(INTERVALS)}"
            )

    def __str__(self) -> str:
        return self.name

    @property
    def is_monthly(self) -> bool:
        return self.name == "1M"

    @property
    def nominal_ms(self) -> int:
        """Length in ms; for `1M` a 30-day approximation, good for estimates only."""
        return _FIXED_MS.get(self.name, 30 * DAY_MS)

    def floor(self, ms: int) -> int:
        """Open time of the candle that contains instant `ms`."""
        if self.is_monthly:
            d = datetime.fromtimestamp(ms / 1000, UTC)
            return _ms(datetime(d.year, d.month, 1, tzinfo=UTC))
        step = _FIXED_MS[self.name]
        offset = _WEEK_OFFSET_MS if self.name == "1w" else 0
        return (ms - offset) // step * step + offset

    def ceil(self, ms: int) -> int:
        """Open time of the first candle that opens at or after `ms`."""
        start = self.floor(ms)
        return start if start == ms else self.next_open(start)

    def next_open(self, open_ms: int) -> int:
        """Open time of the candle after the one opening at `open_ms`."""
        if self.is_monthly:
            d = datetime.fromtimestamp(open_ms / 1000, UTC)
            year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return _ms(datetime(year, month, 1, tzinfo=UTC))
        return open_ms + _FIXED_MS[self.name]

    def close_time(self, open_ms: int) -> int:
        """Binance's close time for a candle: the next open minus 1 ms (…059999 for 1m)."""
        return self.next_open(open_ms) - 1

    def count(self, start_ms: int, end_ms: int) -> int:
        """Number of candles opening in [start_ms, end_ms)."""
        if end_ms <= start_ms:
            return 0
        if self.is_monthly:
            a = datetime.fromtimestamp(self.ceil(start_ms) / 1000, UTC)
            b = datetime.fromtimestamp(self.ceil(end_ms) / 1000, UTC)
            return (b.year - a.year) * 12 + (b.month - a.month)
        step = _FIXED_MS[self.name]
        return (self.ceil(end_ms) - self.ceil(start_ms)) // step

    def opens(self, start_ms: int, end_ms: int) -> list[int]:
        """Open times of the candles opening in [start_ms, end_ms)."""
        out: list[int] = []
        t = self.ceil(start_ms)
        while t < end_ms:
            out.append(t)
            t = self.next_open(t)
        return out


def _ms(dt: datetime) -> int:
    return calendar.timegm(dt.utctimetuple()) * 1000 + dt.microsecond // 1000


def ms_to_datetime(ms: int) -> datetime:
    """Aware UTC datetime for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def datetime_to_ms(dt: datetime) -> int:
    """Epoch milliseconds for an aware datetime (naive is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _ms(dt.astimezone(UTC))


def format_ms(ms: int | None) -> str:
    """ISO-8601 UTC text for display, or '-' for None."""
    if ms is None:
        return "-"
    return ms_to_datetime(ms).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Candle:
    """One closed kline, values exactly as Binance sent them.

    Field names follow the `candlesticks` table; `open_time`/`close_time` are epoch ms.
    """

    symbol: str
    interval: str
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    close_time: int
    quote_volume: Decimal
    trades: int
    taker_buy_base: Decimal
    taker_buy_quote: Decimal


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open range [start, end) of epoch milliseconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"range end {self.end} before start {self.start}")

    @property
    def empty(self) -> bool:
        return self.end <= self.start


@dataclass(frozen=True, slots=True)
class StreamKey:
    """A (symbol, interval) pair: one backfill plan, one live stream, one sync_state row."""

    symbol: str
    interval: str

    def __str__(self) -> str:
        return f"{self.symbol} {self.interval}"

    @property
    def stream_name(self) -> str:
        """Binance's WebSocket stream name: lowercase symbol (UM:ws/Kline-Candlestick-Streams)."""
        return f"{self.symbol.lower()}@kline_{self.interval}"

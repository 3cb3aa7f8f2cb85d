"""Interval arithmetic: alignment, close times, months and weeks as Binance defines them."""

from datetime import UTC, datetime

import pytest

from qryptify_ingestor.domain import (
    Interval,
    StreamKey,
    datetime_to_ms,
    ms_to_datetime,
    validate_symbol,
)


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))


def test_minute_close_time_ends_in_59999() -> None:
    """A 1m candle closes at open + 60 s - 1 ms, as Binance's field 6 does."""
    i = Interval("1m")
    assert i.close_time(ms(2024, 1, 1, 0, 0)) == ms(2024, 1, 1, 0, 1) - 1


def test_week_opens_on_monday() -> None:
    """1w candles open Monday 00:00 UTC (the docs' example row opens 2017-07-03)."""
    i = Interval("1w")
    assert i.floor(1499040000000 + 3 * 86_400_000) == 1499040000000
    assert i.close_time(1499040000000) == 1499644799999
    assert ms_to_datetime(i.floor(ms(2026, 11, 26, 13))).weekday() == 0


def test_month_follows_the_calendar() -> None:
    """1M candles open on the first of each month and have calendar lengths."""
    i = Interval("1M")
    assert i.floor(ms(2024, 2, 15, 12)) == ms(2024, 2, 1)
    assert i.next_open(ms(2024, 2, 1)) == ms(2024, 3, 1)
    assert i.next_open(ms(2024, 12, 1)) == ms(2025, 1, 1)
    assert i.count(ms(2024, 1, 1), ms(2025, 1, 1)) == 12


def test_ceil_and_count_for_fixed_intervals() -> None:
    """ceil aligns up to the next open; count counts opens in a half-open range."""
    i = Interval("5m")
    assert i.ceil(ms(2024, 1, 1, 0, 1)) == ms(2024, 1, 1, 0, 5)
    assert i.ceil(ms(2024, 1, 1, 0, 5)) == ms(2024, 1, 1, 0, 5)
    assert i.count(ms(2024, 1, 1), ms(2024, 1, 1, 1)) == 12
    assert i.opens(ms(2024, 1, 1), ms(2024, 1, 1, 0, 15)) == [
        ms(2024, 1, 1),
        ms(2024, 1, 1, 0, 5),
        ms(2024, 1, 1, 0, 10),
    ]


@pytest.mark.parametrize("bad", ["1s", "2m", "1H", "", "1d "])
def test_unknown_interval_is_refused(bad: str) -> None:
    """Only Binance's fifteen USDⓈ-M intervals are accepted (no 1s, case matters)."""
    with pytest.raises(ValueError, match="invalid interval"):
        Interval(bad)


@pytest.mark.parametrize(
    "bad", ["btcusdt", "BTC-USDT", "BTC/USDT", "A", "BTC USDT", "X" * 31, "'; drop"]
)
def test_symbol_validation_refuses_unsafe_text(bad: str) -> None:
    """A symbol must be safe in URLs, stream names and SQL before it is used anywhere."""
    with pytest.raises(ValueError):
        validate_symbol(bad)


def test_stream_name_is_lowercase() -> None:
    """Kline stream names use the lowercase symbol (UM:ws/Kline-Candlestick-Streams)."""
    assert StreamKey("BTCUSDT", "1m").stream_name == "btcusdt@kline_1m"

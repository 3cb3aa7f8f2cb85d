"""Tests of the pure REST protocol rules: weights, page sizes, params, response classes."""

from __future__ import annotations

import orjson
import pytest

from qryptify_ingestor.binance.protocol import (
    backoff_delay,
    best_page_limit,
    classify,
    combined_stream_url,
    kline_params,
    kline_weight,
    next_window,
    shard_streams,
    used_weight,
)
from qryptify_ingestor.errors import (
    ExchangeRejected,
    ExchangeUnavailable,
    IpBanned,
    RateLimited,
    RestrictedLocation,
    WafBlocked,
)

NOW = 1_700_000_012_345  # 12.345 s into a minute


@pytest.mark.parametrize(
    ("limit", "weight"),
    [(1, 1), (99, 1), (100, 2), (499, 2), (500, 5), (1000, 5), (1001, 10), (1500, 10)],
)
def test_kline_weight_tiers(limit: int, weight: int) -> None:
    """Weights follow the documented tiers [1,100)→1, [100,500)→2, [500,1000]→5, >1000→10."""
    assert kline_weight(limit) == weight


@pytest.mark.parametrize("limit", [0, -1, 1501])
def test_kline_weight_rejects_out_of_range(limit: int) -> None:
    """A limit outside 1..1500 is refused rather than priced (Binance caps at 1500)."""
    with pytest.raises(ValueError, match=r"outside 1\.\.1500"):
        kline_weight(limit)


@pytest.mark.parametrize(
    ("needed", "limit"),
    [
        (1, 99),
        (50, 99),
        (99, 99),
        (100, 499),
        (300, 499),
        (498, 499),
        (499, 499),
        (500, 499),
        (1000, 499),
        (10**9, 499),
    ],
)
def test_best_page_limit(needed: int, limit: int) -> None:
    """Long ranges page by 499 (249.5 candles/weight); short ones take the cheapest tier."""
    assert best_page_limit(needed) == limit


def test_best_page_limit_never_costs_more_than_needed() -> None:
    """For every remainder, paging with best_page_limit costs no more weight than one big page."""
    for needed in range(1, 3001):
        left, cost = needed, 0
        while left > 0:
            limit = best_page_limit(left)
            cost += kline_weight(limit)
            left -= limit
        single = kline_weight(min(needed, 1500)) if needed <= 1500 else None
        if single is not None:
            assert cost <= single, needed
        assert cost <= 2 * -(-needed // 499), needed


def test_best_page_limit_rejects_nothing_needed() -> None:
    """Zero candles needed is a caller bug, not a request."""
    with pytest.raises(ValueError):
        best_page_limit(0)


def test_kline_params() -> None:
    """Params use Binance's names and omit absent time bounds."""
    assert kline_params("BTCUSDT", "1m", 1, 2, 499) == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "limit": 499,
        "startTime": 1,
        "endTime": 2,
    }
    assert kline_params("BTCUSDT", "1M", None, None, 1) == {
        "symbol": "BTCUSDT",
        "interval": "1M",
        "limit": 1,
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("btcusdt", "1m", None, None, 10), "invalid symbol"),
        (("BTCUSDT", "1s", None, None, 10), "invalid interval"),
        (("BTCUSDT", "1m", None, None, 1501), "outside"),
        (("BTCUSDT", "1m", 5, 4, 10), "after endTime"),
    ],
)
def test_kline_params_refuses_what_binance_rejects(args: tuple[object, ...], needle: str) -> None:
    """Requests Binance would answer with -1121/-1120/-1130/-1023 are never built."""
    with pytest.raises(ValueError, match=needle):
        kline_params(*args)  # type: ignore[arg-type]


def test_used_weight_header_case_insensitive() -> None:
    """X-MBX-USED-WEIGHT-1M is read whatever its case; absent or junk gives None."""
    assert used_weight({"X-MBX-USED-WEIGHT-1M": "42"}) == 42
    assert used_weight({"x-mbx-used-weight-1m": " 7 "}) == 7
    assert used_weight({}) is None
    assert used_weight({"x-mbx-used-weight-1m": "lots"}) is None


def test_200_is_not_an_error_even_if_body_is_junk() -> None:
    """A 2xx classifies as None; a non-JSON 200 body is the parser's to report."""
    assert classify(200, b"<html>", {}, NOW) is None


def test_429_with_retry_after() -> None:
    """429 with Retry-After: retry at now + that many seconds."""
    body = b'{"code":-1003,"msg":"Too many requests; current limit is 2400 requests per minute."}'
    err = classify(429, body, {"Retry-After": "7"}, NOW)
    assert isinstance(err, RateLimited)
    assert err.retry_at_ms == NOW + 7000
    assert "-1003" in str(err)


def test_429_without_retry_after_waits_for_next_minute() -> None:
    """429 without Retry-After: retry at the next 1-minute boundary, when the counter resets."""
    err = classify(429, b'{"code":-1003,"msg":"Too many requests"}', {}, NOW)
    assert isinstance(err, RateLimited)
    assert err.retry_at_ms == 1_700_000_040_000
    assert err.retry_at_ms == next_window(NOW)
    short = classify(429, b"", {"retry-after": "soon"}, NOW, window_ms=1000)
    assert isinstance(short, RateLimited) and short.retry_at_ms == 1_700_000_013_000


def test_418_banned_until_from_message() -> None:
    """418 takes the ban end from Retry-After (relative, immune to clock skew) when present,
    else from 'IP banned until <ms>' in the message."""
    body = b'{"code":-1003,"msg":"Way too many requests; IP banned until 1700000999000. Use ws."}'
    err = classify(418, body, {"Retry-After": "5"}, NOW)
    assert isinstance(err, IpBanned) and err.until_ms == NOW + 5_000
    err = classify(418, body, {}, NOW)
    assert isinstance(err, IpBanned) and err.until_ms == 1_700_000_999_000


def test_418_fallbacks() -> None:
    """418 without a time in the message uses Retry-After, else the 2-minute minimum ban."""
    err = classify(418, b'{"code":-1003,"msg":"banned"}', {"Retry-After": "30"}, NOW)
    assert isinstance(err, IpBanned) and err.until_ms == NOW + 30_000
    err = classify(418, b"", {}, NOW)
    assert isinstance(err, IpBanned) and err.until_ms == NOW + 120_000


def test_451_restricted_location() -> None:
    """451 is fatal and tells the operator to check the hosting region."""
    body = (
        b'{"code":0,"msg":"Service unavailable from a restricted location according to '
        b"'b. Eligibility' in https://www.binance.com/en/terms.\"}"
    )
    err = classify(451, body, {}, NOW)
    assert isinstance(err, RestrictedLocation)
    assert "refuses service from this location" in str(err)
    assert "hosting region" in str(err)


def test_403_waf_with_html_body() -> None:
    """403 with a CloudFront HTML body is WafBlocked, the HTML excerpted in one line."""
    body = b"<HTML><HEAD>\n<TITLE>ERROR: The request could not be satisfied</TITLE>\n</HEAD>"
    err = classify(403, body, {}, NOW)
    assert isinstance(err, WafBlocked)
    assert "firewall" in str(err) and "could not be satisfied" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_and_408_are_retryable(status: int) -> None:
    """5xx and 408 mean Binance is unavailable: retry with backoff."""
    err = classify(status, b'{"code":-1001,"msg":"Internal error"}', {}, NOW)
    assert isinstance(err, ExchangeUnavailable)
    assert f"HTTP {status}" in str(err)


def test_transient_code_on_4xx_is_retryable() -> None:
    """Codes documented as transient (-1000, -1001, -1006, -1007, -1008) retry on any status."""
    err = classify(400, b'{"code":-1007,"msg":"Timeout waiting for response"}', {}, NOW)
    assert isinstance(err, ExchangeUnavailable)


def test_invalid_symbol_names_the_symbol() -> None:
    """-1121 is fatal ExchangeRejected naming the symbol from the request."""
    err = classify(
        400, b'{"code":-1121,"msg":"Invalid symbol."}', {}, NOW, params={"symbol": "NOPEUSDT"}
    )
    assert isinstance(err, ExchangeRejected)
    assert (err.status, err.code) == (400, -1121)
    assert "NOPEUSDT" in str(err) and "Invalid symbol." in str(err)


def test_invalid_interval_names_the_interval() -> None:
    """-1120 is fatal ExchangeRejected naming the interval."""
    err = classify(
        400, b'{"code":-1120,"msg":"Invalid interval."}', {}, NOW, params={"interval": "7m"}
    )
    assert isinstance(err, ExchangeRejected) and "7m" in str(err) and err.code == -1120


@pytest.mark.parametrize(
    ("status", "code", "msg"),
    [
        (400, -1130, "Data sent for parameter 'limit' is not valid."),
        (400, -1023, "Start time is greater than end time."),
        (400, -1102, "Mandatory parameter 'symbol' was not sent."),
        (400, -1104, "Not all sent parameters were read."),
        (404, None, "<html>Not Found</html>"),
        (401, -2015, "Invalid API-key."),
    ],
)
def test_other_4xx_are_rejected_with_code_and_msg(status: int, code: int | None, msg: str) -> None:
    """Other 4xx responses are fatal ExchangeRejected carrying status, code and message."""
    body = msg.encode() if code is None else orjson.dumps({"code": code, "msg": msg})
    err = classify(status, body, {}, NOW)
    assert isinstance(err, ExchangeRejected)
    assert err.status == status and err.code == code
    assert msg in str(err)
    if code is not None:
        assert str(code) in str(err)


def test_backoff_delay_full_jitter() -> None:
    """Backoff is rand × min(cap, base·2^(attempt-1)): doubling, capped, jittered down to 0."""
    one = lambda: 1.0  # noqa: E731
    assert [backoff_delay(a, 0.2, 30.0, one) for a in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    assert backoff_delay(20, 0.2, 30.0, one) == 30.0
    assert backoff_delay(10_000, 0.2, 30.0, one) == 30.0
    assert backoff_delay(3, 0.2, 30.0, lambda: 0.5) == pytest.approx(0.4)
    assert backoff_delay(3, 0.2, 30.0, lambda: 0.0) == 0.0
    with pytest.raises(ValueError):
        backoff_delay(0, 0.2, 30.0)


def test_shard_streams() -> None:
    """Streams split into groups of at most max_per_conn, in order, without duplicates."""
    names = [f"s{i}usdt@kline_1m" for i in range(2050)]
    shards = shard_streams([*names, names[0]])
    assert [len(s) for s in shards] == [1024, 1024, 2]
    assert [n for s in shards for n in s] == names


def test_combined_stream_url() -> None:
    """The combined URL joins stream names with '/' under the routed base, no double slash."""
    url = combined_stream_url(
        "wss://fstream.binance.com/market/", ["btcusdt@kline_1m", "ethusdt@kline_1m"]
    )
    assert (
        url == "wss://fstream.binance.com/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    )

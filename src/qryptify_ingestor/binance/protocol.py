"""Pure REST protocol rules: request weight, page sizing, request params, response classes.

Everything here is a function of its arguments (no I/O, no clock, no randomness unless
injected), so the adapter (`rest.py`) only waits and sends, and these rules are tested by
feeding values. Rules cite binance-futures.md (§n) and the Binance pages behind it.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from qryptify_ingestor.binance.parse import parse_error_body
from qryptify_ingestor.domain import Interval, validate_symbol
from qryptify_ingestor.errors import (
    ConfigError,
    ExchangeRejected,
    ExchangeUnavailable,
    IngestorError,
    IpBanned,
    RateLimited,
    RestrictedLocation,
    WafBlocked,
)

__all__ = [
    "MAX_KLINE_LIMIT",
    "MAX_STREAMS_PER_CONNECTION",
    "USED_WEIGHT_HEADER",
    "backoff_delay",
    "best_page_limit",
    "classify",
    "classify_response",
    "combined_stream_url",
    "header",
    "kline_params",
    "kline_weight",
    "next_window",
    "shard_streams",
    "used_weight",
]

# `limit` default 500, max 1500 on /fapi/v1/klines (UM:md/Kline-Candlestick-Data, §1.1).
MAX_KLINE_LIMIT = 1500

# (largest limit in the tier, weight), UM:md/Kline-Candlestick-Data (§1.2):
# [1,100) -> 1, [100,500) -> 2, [500,1000] -> 5, (1000,1500] -> 10.
_KLINE_TIERS: tuple[tuple[int, int], ...] = ((99, 1), (499, 2), (1000, 5), (1500, 10))

# The tier top with the most candles per weight point: 499 / 2 = 249.5 (§1.2 derived).
_BEST_LONG_LIMIT = max(_KLINE_TIERS, key=lambda tier: tier[0] / tier[1])[0]

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"  # UM:general-info (§3)

# Streams per connection since 2025-07-02 (UM:ws, DCL; §4.4).
MAX_STREAMS_PER_CONNECTION = 1024

_MINUTE_MS = 60_000
# A first 418 ban lasts 2 minutes; bans escalate up to 3 days (UM:general-info, §3).
_DEFAULT_BAN_MS = 2 * _MINUTE_MS
_BANNED_UNTIL_RE = re.compile(r"banned until (\d{10,16})")

# Codes Binance documents as transient whatever the HTTP status (UM:error-code, §3):
# -1000 UNKNOWN, -1001 DISCONNECTED, -1006 UNEXPECTED_RESP, -1007 TIMEOUT, -1008 throttled.
_TRANSIENT_CODES = frozenset({-1000, -1001, -1006, -1007, -1008})


def kline_weight(limit: int) -> int:
    """Request weight of a kline request with this `limit` (charged on the limit sent)."""
    if not 1 <= limit <= MAX_KLINE_LIMIT:
        raise ValueError(f"kline limit {limit} outside 1..{MAX_KLINE_LIMIT}")
    for top, weight in _KLINE_TIERS:
        if limit <= top:
            return weight
    raise AssertionError("unreachable: tiers cover 1..1500")  # pragma: no cover


def best_page_limit(candles_needed: int) -> int:
    """The `limit` to send when `candles_needed` more candles are wanted.

    Long ranges: 499, the most candles per weight point (249.5). A remainder that fits in one
    request: the top of the cheapest tier that covers it (50 -> 99 at weight 1, 300 -> 499 at
    weight 2), never a dearer tier; the extra rows cost nothing.
    """
    if candles_needed < 1:
        raise ValueError(f"candles_needed must be >= 1, got {candles_needed}")
    if candles_needed >= _BEST_LONG_LIMIT:
        return _BEST_LONG_LIMIT
    for top, _weight in _KLINE_TIERS:
        if candles_needed <= top:
            return top
    raise AssertionError("unreachable: needed < best long limit")  # pragma: no cover


def kline_params(
    symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
) -> dict[str, str | int]:
    """Query parameters for `GET /fapi/v1/klines` (names per UM:md/Kline-Candlestick-Data).

    Refuses what Binance would reject, so such a request is never sent: a bad limit (-1130),
    startTime after endTime (-1023).
    """
    validate_symbol(symbol)
    Interval(interval)
    kline_weight(limit)  # validates 1..1500
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise ValueError(f"startTime {start_ms} after endTime {end_ms}")
    params: dict[str, str | int] = {"symbol": symbol, "interval": interval, "limit": limit}
    if start_ms is not None:
        params["startTime"] = start_ms
    if end_ms is not None:
        params["endTime"] = end_ms
    return params


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value looked up case-insensitively (HTTP header names are)."""
    want = name.lower()
    for key, value in headers.items():
        if key.lower() == want:
            return value
    return None


def used_weight(headers: Mapping[str, str]) -> int | None:
    """The IP's used weight in the current minute from `X-MBX-USED-WEIGHT-1M`, if sent."""
    value = header(headers, USED_WEIGHT_HEADER)
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def _retry_after_ms(headers: Mapping[str, str]) -> int | None:
    # Binance sends delta-seconds (SPOT-REST LIMITS); an HTTP-date or junk is ignored.
    value = header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    return int(value) * 1000 if value.isdigit() else None


def next_window(now_ms: int, window_ms: int = _MINUTE_MS) -> int:
    """Start of the next fixed window; Binance's weight counter resets on minute boundaries."""
    return (now_ms // window_ms + 1) * window_ms


def _excerpt(body: bytes) -> str:
    return " ".join(body[:160].decode("utf-8", "replace").split())


def classify(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    now_ms: int,
    *,
    params: Mapping[str, str | int] | None = None,
    window_ms: int = _MINUTE_MS,
) -> IngestorError | None:
    """The error a REST response means, or None for a 2xx (whose body the parser judges).

    `params` (the request's query) lets a -1121/-1120 name the symbol/interval it refused.
    `window_ms` is the weight window a 429 without Retry-After waits out (1 minute on Binance).
    Rules from UM:general-info and UM:error-code (binance-futures.md §3).
    """
    if 200 <= status < 300:
        return None
    err = parse_error_body(body)
    code = err[0] if err else None
    msg = err[1] if err else _excerpt(body)
    detail = f"HTTP {status}" + (f" code {code}" if code is not None else "") + f": {msg}"

    if status == 429:
        # Breaking the limit: back off before it becomes a ban. Retry-After if Binance sends
        # it (documented for spot, UNCERTAIN for fapi), else the 1-minute counter's reset.
        after = _retry_after_ms(headers)
        retry_at = now_ms + after if after is not None else next_window(now_ms, window_ms)
        return RateLimited(
            f"rate limited, no requests until {retry_at} ({detail})", retry_at_ms=retry_at
        )
    if status == 418:
        # Retry-After (relative, so immune to clock skew between us and Binance) first; else
        # "Way too many requests; IP banned until <ms>" (-1003, exchange time: taken relative
        # to the server's own Date when present); else the shortest documented ban.
        m = _BANNED_UNTIL_RE.search(msg)
        after = _retry_after_ms(headers)
        if after is not None:
            until = now_ms + after
        elif m:
            until = int(m.group(1))
        else:
            until = now_ms + _DEFAULT_BAN_MS
        return IpBanned(f"IP banned by Binance until {until} ({detail})", until_ms=until)
    if status == 451:
        return RestrictedLocation(
            "Binance refuses service from this location (HTTP 451); check the hosting region "
            f"of this machine or its egress IP, retrying cannot help ({detail})"
        )
    if status == 403:
        # A WAF block; the body is often CloudFront HTML, not JSON (JKorf/Binance.Net#115).
        return WafBlocked(
            "blocked by Binance's web application firewall (HTTP 403); stop and check the "
            f"request pattern and egress IP ({detail})"
        )
    if status == 408 or status >= 500 or code in _TRANSIENT_CODES:
        return ExchangeUnavailable(f"Binance unavailable ({detail})")

    p = params or {}
    if code == -1121:
        what = f"Binance rejected symbol {p.get('symbol', '?')!s}: unknown or delisted"
    elif code == -1120:
        what = f"Binance rejected interval {p.get('interval', '?')!s}"
    elif code == -1130:
        what = "Binance rejected a parameter value"
    elif code == -1023:
        what = "Binance rejected the time window: startTime after endTime"
    elif code in (-1101, -1102, -1103, -1104):
        what = "Binance rejected the request parameters (a client bug)"
    else:
        what = "Binance rejected the request"
    return ExchangeRejected(f"{what} ({detail})", status=status, code=code)


# The name docs/ARCHITECTURE.md uses.
classify_response = classify


def backoff_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))).

    `attempt` counts retries from 1. Full jitter spreads many clients that failed together
    (AWS Architecture Blog, "Exponential Backoff And Jitter"); Binance's 503 advice is
    exponential backoff from 200 ms (UM:general-info).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return rand() * ceiling


def shard_streams(
    streams: Iterable[str], max_per_conn: int = MAX_STREAMS_PER_CONNECTION
) -> list[list[str]]:
    """Split stream names into groups of at most `max_per_conn`, order kept, duplicates dropped."""
    if max_per_conn < 1:
        raise ValueError(f"max_per_conn must be >= 1, got {max_per_conn}")
    unique = list(dict.fromkeys(streams))
    return [unique[i : i + max_per_conn] for i in range(0, len(unique), max_per_conn)]


def combined_stream_url(ws_base: str, streams: Sequence[str]) -> str:
    """`{ws_base}/stream?streams=a/b/…`; ws_base is the routed base, e.g.
    `wss://fstream.binance.com/market` (kline streams live on `/market` since 2026-04-23, §4.1).
    No trailing slash before `stream` (DCL 2023-08-19)."""
    if not streams:
        raise ValueError("no streams")
    return f"{ws_base.rstrip('/')}/stream?streams={'/'.join(streams)}"


# --- endpoint policy ---------------------------------------------------------------------------

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_rest_url(base_url: str, *, allow_insecure: bool = False) -> str:
    """The REST base without a trailing slash, or ConfigError.

    TLS is always on for real endpoints: `http://` only to a loopback host (the simulator)
    unless `allow_insecure`.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return base_url.rstrip("/")
    if parts.scheme == "http" and host:
        if allow_insecure or is_loopback(host):
            return base_url.rstrip("/")
        raise ConfigError(
            f"binance.rest_url: refusing plain http:// URL {base_url!r}: only loopback hosts may "
            "skip TLS (set binance.allow_insecure to override)"
        )
    raise ConfigError(f"binance.rest_url: invalid URL {base_url!r}: expected https://host[:port]")

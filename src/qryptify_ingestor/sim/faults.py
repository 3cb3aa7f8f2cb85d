"""Fault injection for the simulator: what can go wrong on REST and WebSocket, on demand.

Each REST fault is a *budget*: it applies to the next `count` matching requests, or for
`duration_s` seconds of wall time, or both (whichever runs out first); with neither it lasts until
`clear()`. `path` narrows a REST fault to one endpoint (e.g. "/fapi/v1/klines").
WebSocket faults act on the live hub (drop, stall) or change how finals go out (duplicate, late).
Exchange gaps are market facts, not transport faults: they change the truth (`sim.candles`) too.

The same operations are reachable over HTTP (`POST /_sim/faults {"fault": name, ...kwargs}`) so a
test can drive a `qryptify sim` subprocess; `FAULTS` lists the names accepted there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from qryptify_ingestor.sim.market import Market


def _binance_error(code: int, msg: str) -> str:
    return orjson.dumps({"code": code, "msg": msg}).decode()


# 5xx answers Binance gives (binance-futures.md §3): status, content type, body.
ERROR_VARIANTS: dict[str, tuple[int, str, str]] = {
    "500": (
        500,
        "application/json",
        _binance_error(-1000, "An unknown error occured while processing the request."),
    ),
    "502": (502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "503": (
        503,
        "application/json",
        _binance_error(-1001, "Internal error; unable to process your request. Please try again."),
    ),
    "503-unknown": (
        503,
        "application/json",
        _binance_error(-1000, "Unknown error, please check your request or try again later."),
    ),
    "503-unavailable": (503, "text/plain", "Service Unavailable."),
    "504": (
        504,
        "application/json",
        _binance_error(
            -1007,
            "Timeout waiting for response from backend server. "
            "Send status unknown; execution status unknown.",
        ),
    ),
}
MALFORMED_KINDS = ("non_numeric", "missing_field", "high_below_low")
FAULTS = (
    "rest_errors",
    "rest_reset",
    "rest_latency",
    "rate_limit_storm",
    "ban",
    "malformed",
    "exchange_gap",
    "ws_drop",
    "ws_stall",
    "ws_duplicate_finals",
    "ws_late_finals",
    "ws_silent",
    "ws_refuse",
    "clear",
)


class WsControl(Protocol):
    """What the faults need from the WebSocket hub."""

    def drop(self, stream: str | None, abrupt: bool) -> int: ...


@dataclass(slots=True)
class Budget:
    """How long a fault lasts: `count` uses and/or until a monotonic deadline."""

    count: int | None = None
    until: float | None = None
    path: str | None = None

    @classmethod
    def of(cls, count: int | None, duration_s: float | None, path: str | None = None) -> Budget:
        until = None if duration_s is None else time.monotonic() + duration_s
        return cls(count, until, path)

    def live(self) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        return self.until is None or time.monotonic() < self.until

    def matches(self, path: str) -> bool:
        return self.live() and (self.path is None or self.path == path)

    def take(self) -> None:
        if self.count is not None:
            self.count -= 1


@dataclass(slots=True)
class _Error:
    budget: Budget
    variant: str


@dataclass(slots=True)
class _Latency:
    budget: Budget
    ms: int


@dataclass(slots=True)
class _Malformed:
    budget: Budget
    kind: str


class Faults:
    """The fault switchboard (`sim.faults`)."""

    def __init__(self, market: Market) -> None:
        self._market = market
        self._ws: WsControl | None = None
        self.clear()

    def attach(self, ws: WsControl) -> None:
        self._ws = ws

    def clear(self) -> None:
        """Remove every transport fault (exchange gaps stay: they are market history)."""
        self._errors: list[_Error] = []
        self._resets: list[Budget] = []
        self._latency: list[_Latency] = []
        self._storms: list[Budget] = []
        self._bans: list[int] = []
        self._malformed: dict[tuple[str, str, int], _Malformed] = {}
        self._stalls: list[tuple[Budget, str | None]] = []
        self._duplicates: list[Budget] = []
        self._late: list[Budget] = []
        self._refusals: list[Budget] = []
        self.silent_symbols: set[str] = set()

    # -- REST --------------------------------------------------------------------------------
    def rest_errors(
        self,
        count: int | None = 1,
        *,
        status: int = 503,
        variant: str | None = None,
        duration_s: float | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next `count` requests with a 5xx (`variant` one of ERROR_VARIANTS)."""
        variant = variant or str(status)
        if variant not in ERROR_VARIANTS:
            raise ValueError(f"unknown error variant {variant!r}; one of {sorted(ERROR_VARIANTS)}")
        self._errors.append(_Error(Budget.of(count, duration_s, path), variant))

    def rest_reset(
        self, count: int | None = 1, *, duration_s: float | None = None, path: str | None = None
    ) -> None:
        """Send headers and part of the body, then close the connection."""
        self._resets.append(Budget.of(count, duration_s, path))

    def rest_latency(
        self,
        ms: int,
        count: int | None = None,
        *,
        duration_s: float | None = None,
        path: str | None = None,
    ) -> None:
        """Delay responses by `ms` (for `count` requests and/or `duration_s`)."""
        self._latency.append(_Latency(Budget.of(count, duration_s, path), ms))

    def rate_limit_storm(
        self, count: int | None = None, *, duration_s: float | None = None, path: str | None = None
    ) -> None:
        """Answer 429 regardless of the weight used (repeat offenders still earn a 418)."""
        self._storms.append(Budget.of(count, duration_s, path))

    def ban(self, duration_ms: int | None = None) -> None:
        """Ban the next client that asks (418); None escalates like an earned ban."""
        self._bans.append(-1 if duration_ms is None else duration_ms)

    def malformed(
        self,
        symbol: str,
        interval: str,
        open_ms: int,
        kind: str = "non_numeric",
        count: int | None = None,
    ) -> None:
        """Corrupt the REST row for one candle (for `count` responses, or for good)."""
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformation {kind!r}; one of {MALFORMED_KINDS}")
        self._malformed[(symbol, interval, open_ms)] = _Malformed(Budget.of(count, None), kind)

    def exchange_gap(self, start_ms: int, end_ms: int, symbol: str | None = None) -> None:
        """Binance has no rows in [start_ms, end_ms) for `symbol` (None: all symbols)."""
        self._market.add_gap(start_ms, end_ms, symbol)

    # -- WebSocket ---------------------------------------------------------------------------
    def ws_drop(self, stream: str | None = None, *, abrupt: bool = False) -> int:
        """Close every connection (or those carrying `stream`) now; returns how many."""
        if self._ws is None:
            return 0
        return self._ws.drop(stream, abrupt)

    def ws_stall(self, duration_s: float, stream: str | None = None) -> None:
        """Stop sending data (all, or one stream) for `duration_s`; pings are still answered."""
        self._stalls.append((Budget.of(None, duration_s), stream))

    def ws_duplicate_finals(
        self, count: int | None = 1, *, duration_s: float | None = None
    ) -> None:
        """Send the next `count` final (x=true) events twice."""
        self._duplicates.append(Budget.of(count, duration_s))

    def ws_late_finals(self, count: int | None = 1, *, duration_s: float | None = None) -> None:
        """Send the next `count` finals after the first update of the following candle."""
        self._late.append(Budget.of(count, duration_s))

    def ws_silent(self, symbol: str) -> None:
        """This symbol never trades on the WebSocket: subscriptions are acknowledged, no data."""
        self.silent_symbols.add(symbol.upper())

    def ws_refuse(self, count: int | None = 1, *, duration_s: float | None = None) -> None:
        """Refuse the next `count` WebSocket handshakes with HTTP 503."""
        self._refusals.append(Budget.of(count, duration_s))

    # -- queries the server makes (each consumes a use where it applies) ----------------------
    def take_error(self, path: str) -> tuple[int, str, str] | None:
        for fault in self._errors:
            if fault.budget.matches(path):
                fault.budget.take()
                return ERROR_VARIANTS[fault.variant]
        return None

    def take_reset(self, path: str) -> bool:
        return _take(self._resets, path)

    def take_latency_ms(self, path: str) -> int:
        total = 0
        for fault in self._latency:
            if fault.budget.matches(path):
                fault.budget.take()
                total += fault.ms
        return total

    def take_storm(self, path: str) -> bool:
        return _take(self._storms, path)

    def take_ban(self) -> int | bool | None:
        """False if no forced ban is pending, else its duration (None = escalate)."""
        if not self._bans:
            return False
        duration = self._bans.pop(0)
        return None if duration < 0 else duration

    def take_malformed(self, symbol: str, interval: str, open_ms: int) -> str | None:
        fault = self._malformed.get((symbol, interval, open_ms))
        if fault is None or not fault.budget.live():
            return None
        fault.budget.take()
        return fault.kind

    def has_malformed(self, symbol: str, interval: str) -> bool:
        return any(k[0] == symbol and k[1] == interval for k in self._malformed)

    def stalled(self, stream: str) -> bool:
        return any(b.live() and s in (None, stream) for b, s in self._stalls)

    def take_duplicate(self) -> bool:
        return _take(self._duplicates, None)

    def take_late(self) -> bool:
        return _take(self._late, None)

    def take_refusal(self) -> bool:
        return _take(self._refusals, None)

    def apply(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Run fault `name` with `kwargs` (the admin endpoint's entry point)."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; one of {', '.join(FAULTS)}")
        return getattr(self, name)(**kwargs)


def _take(budgets: list[Budget], path: str | None) -> bool:
    for budget in budgets:
        if budget.matches(path) if path is not None else budget.live():
            budget.take()
            return True
    return False


def corrupt_row(row: list[Any], kind: str) -> list[Any]:
    """A REST row broken the way `kind` says."""
    bad = list(row)
    if kind == "non_numeric":
        bad[1] = "NaN?"
    elif kind == "missing_field":
        bad = bad[:-2]
    elif kind == "high_below_low":
        bad[2], bad[3] = row[3], row[2]
        if bad[2] == bad[3]:
            bad[3] = bad[2] + "1"
    return bad

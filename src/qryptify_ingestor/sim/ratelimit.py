"""REST request weights and the per-IP weight budget, with 429 limits and escalating 418 bans.

Binance USDⓈ-M (binance-futures.md §1.2, §3): kline weight by `limit` tier 1/2/5/10, other
market endpoints 1; a REQUEST_WEIGHT budget per IP per fixed window (2400 per minute), reported in
`X-MBX-USED-WEIGHT-1M` on every response; over budget → 429 (-1003); continuing while limited →
418 with an "IP banned until" time, bans escalating from 2 minutes to 3 days for repeat offenders.

Windows and bans run on wall time (the budget is about real request rates, even when a test
clock jumps the exchange time), aligned like Binance's to multiples of the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

MAX_BAN_MS = 3 * 24 * 3600 * 1000


def kline_weight(limit: int) -> int:
    """Weight of a kline request for `limit` (binance-futures.md §1.2)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


class Verdict(Enum):
    OK = "ok"
    LIMITED = "429"
    BANNED = "418"


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    used: int  # the weight used in the current window, for X-MBX-USED-WEIGHT-1M
    retry_after_ms: int = 0
    banned_until_ms: int = 0  # wall ms


@dataclass(slots=True)
class _IpState:
    window_start: int = -1
    used: int = 0
    rejected: int = 0  # 429s answered in this window
    banned_until: int = 0
    bans: int = 0


class WeightLimiter:
    """Fixed-window weight accounting per client IP."""

    def __init__(
        self,
        limit: int = 2400,
        window_ms: int = 60_000,
        *,
        ban_after_429s: int = 5,
        ban_base_ms: int = 120_000,
        ban_max_ms: int = MAX_BAN_MS,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        if limit < 1 or window_ms < 1:
            raise ValueError("weight limit and window must be positive")
        self.limit = limit
        self.window_ms = window_ms
        self.ban_after_429s = ban_after_429s
        self.ban_base_ms = ban_base_ms
        self.ban_max_ms = ban_max_ms
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._ips: dict[str, _IpState] = {}

    def _state(self, ip: str, now: int) -> _IpState:
        state = self._ips.setdefault(ip, _IpState())
        start = now - now % self.window_ms
        if state.window_start != start:
            state.window_start, state.used, state.rejected = start, 0, 0
        return state

    def used(self, ip: str) -> int:
        return self._state(ip, self._wall_ms()).used

    def admit(self, ip: str, weight: int) -> Admission:
        """Count a request of `weight` from `ip` and decide whether it is served."""
        now = self._wall_ms()
        state = self._state(ip, now)
        if state.banned_until > now:
            return Admission(
                Verdict.BANNED, state.used, state.banned_until - now, state.banned_until
            )
        state.used += weight
        if state.used <= self.limit:
            return Admission(Verdict.OK, state.used)
        state.rejected += 1
        if state.rejected > self.ban_after_429s:
            return self._ban(state, now)
        return Admission(Verdict.LIMITED, state.used, state.window_start + self.window_ms - now)

    def limited(self, ip: str) -> Admission:
        """Answer 429 without spending weight (a forced storm), escalating like a real one."""
        now = self._wall_ms()
        state = self._state(ip, now)
        if state.banned_until > now:
            return Admission(
                Verdict.BANNED, state.used, state.banned_until - now, state.banned_until
            )
        state.rejected += 1
        if state.rejected > self.ban_after_429s:
            return self._ban(state, now)
        return Admission(Verdict.LIMITED, state.used, state.window_start + self.window_ms - now)

    def ban(self, ip: str, duration_ms: int | None = None) -> Admission:
        """Ban `ip` now (forced 418); escalates like an earned ban unless a duration is given."""
        now = self._wall_ms()
        state = self._state(ip, now)
        return self._ban(state, now, duration_ms)

    def _ban(self, state: _IpState, now: int, duration_ms: int | None = None) -> Admission:
        if duration_ms is None:
            duration_ms = min(self.ban_max_ms, self.ban_base_ms * 2**state.bans)
            state.bans += 1
        state.banned_until = now + duration_ms
        state.rejected = 0  # after the ban, the next over-budget request is a 429 again
        return Admission(Verdict.BANNED, state.used, duration_ms, state.banned_until)

    def reset(self) -> None:
        """Forget all windows and bans."""
        self._ips.clear()

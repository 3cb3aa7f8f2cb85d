"""The simulator's exchange clock: real time by default, or controlled by a test.

Everything the simulated exchange says about time (serverTime, which candle is open, event times
`E`) reads this clock. A controlled clock runs at `speed` times real time from `start_ms` and can be
jumped forward with `advance()`; listeners (the WebSocket ticker) are woken on every jump so the
finals of every candle the jump closed go out at once, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """Exchange time in epoch ms; `SimClock()` is the wall clock, `controlled()` a test clock."""

    def __init__(self) -> None:
        self._controlled = False
        self._base_ms = 0.0
        self._base_mono = 0.0
        self._speed = 1.0
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def controlled(cls, start_ms: int, speed: float = 1.0) -> SimClock:
        """A clock that starts at `start_ms` and runs at `speed` x real time (0 freezes it)."""
        if speed < 0:
            raise ValueError("speed must be >= 0")
        clock = cls()
        clock._controlled = True
        clock._base_ms = float(start_ms)
        clock._base_mono = time.monotonic()
        clock._speed = float(speed)
        return clock

    @property
    def is_controlled(self) -> bool:
        return self._controlled

    @property
    def speed(self) -> float:
        return self._speed if self._controlled else 1.0

    def now_ms(self) -> int:
        """Current exchange time in epoch milliseconds."""
        if not self._controlled:
            return time.time_ns() // 1_000_000
        elapsed = time.monotonic() - self._base_mono
        return int(self._base_ms + elapsed * 1000.0 * self._speed)

    def _rebase(self) -> None:
        now = time.monotonic()
        self._base_ms += (now - self._base_mono) * 1000.0 * self._speed
        self._base_mono = now

    def advance(self, ms: int) -> None:
        """Jump forward by `ms` (controlled clocks only); listeners run synchronously."""
        self._require_controlled()
        if ms < 0:
            raise ValueError("the exchange clock never goes backwards")
        self._rebase()
        self._base_ms += ms
        self._notify()

    def set_time(self, ms: int) -> None:
        """Jump forward to `ms` (must not be in the past)."""
        self._require_controlled()
        self.advance(max(0, ms - self.now_ms()))

    def set_speed(self, speed: float) -> None:
        """Change the rate (x real time) from now on; 0 freezes the clock."""
        self._require_controlled()
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self._rebase()
        self._speed = float(speed)
        self._notify()

    def wall_seconds_until(self, target_ms: int) -> float | None:
        """Real seconds until the clock reads `target_ms`; None if it never will (frozen)."""
        remaining = target_ms - self.now_ms()
        if remaining <= 0:
            return 0.0
        speed = self.speed
        if speed == 0:
            return None
        return remaining / 1000.0 / speed

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every jump or speed change."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()

    def _require_controlled(self) -> None:
        if not self._controlled:
            raise RuntimeError("this SimClock follows real time; use SimClock.controlled(...)")

    def __repr__(self) -> str:
        if not self._controlled:
            return "SimClock(real)"
        return f"SimClock(controlled, now_ms={self.now_ms()}, speed={self._speed})"

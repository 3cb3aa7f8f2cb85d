"""Pure backfill planning: which candles are closed, page windows, exchange-gap detection.

No I/O and no clock: every function takes the times it needs. Tested without an event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qryptify_ingestor.domain import Interval

# Page sizes by weight tier (binance-futures.md §1.2): 499 is the largest limit that still
# costs 2, so it gives the most candles per unit of weight (249.5); 99 is the largest at 1.
LONG_PAGE_LIMIT = 499
SHORT_PAGE_LIMIT = 99


@dataclass(frozen=True, slots=True)
class Window:
    """One REST page: candles opening in [start, last] (both inclusive), at most `limit` rows."""

    start: int
    last: int
    limit: int


def last_closed_open(interval: Interval, now_ms: int) -> int:
    """Open time of the newest candle that is closed at exchange time `now_ms`.

    A candle is closed once its close time (next open - 1 ms) is before now; the candle that
    contains `now_ms` is still open and never stored from REST (binance-futures.md §1.5).
    """
    current = interval.floor(now_ms)
    return interval.floor(current - 1)


def page_limit(candles_needed: int) -> int:
    """The `limit` that fetches `candles_needed` candles at the least weight per candle."""
    if candles_needed <= SHORT_PAGE_LIMIT:
        return max(candles_needed, 1)
    return LONG_PAGE_LIMIT


def plan_windows(interval: Interval, first_open: int, last_open: int) -> list[Window]:
    """Cover every candle opening in [first_open, last_open] with aligned pages.

    Each page asks for `startTime=start, endTime=last, limit=limit` with exactly `limit` candle
    slots, so pages are independent (they can be fetched concurrently) and an exchange gap only
    makes a page shorter. The tail page takes the cheapest tier that covers it.
    """
    windows: list[Window] = []
    start = interval.ceil(first_open)
    while start <= last_open:
        remaining = interval.count(start, interval.next_open(last_open))
        limit = page_limit(remaining) if remaining < LONG_PAGE_LIMIT else LONG_PAGE_LIMIT
        last = start
        for _ in range(limit - 1):
            nxt = interval.next_open(last)
            if nxt > last_open:
                break
            last = nxt
        windows.append(Window(start, last, limit))
        start = interval.next_open(last)
    return windows


def find_gaps(
    interval: Interval, prev_open: int | None, opens: Iterable[int]
) -> list[tuple[int, int]]:
    """Holes in ascending open times, as [first missing open, next present open) ranges.

    `prev_open` is the last candle known before `opens` (None: nothing before, so no hole can
    start before the first open).
    """
    gaps: list[tuple[int, int]] = []
    last = prev_open
    for t in opens:
        if last is not None:
            expected = interval.next_open(last)
            if t > expected:
                gaps.append((expected, t))
        last = t
    return gaps

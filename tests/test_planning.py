"""Pure backfill planning: closed candles, page windows by weight, gap detection."""

from datetime import UTC, datetime

from qryptify_ingestor.binance.protocol import kline_weight
from qryptify_ingestor.domain import Interval, datetime_to_ms
from qryptify_ingestor.planning import find_gaps, last_closed_open, page_limit, plan_windows

M = 60_000


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))


def test_last_closed_is_the_candle_before_the_open_one() -> None:
    """The candle containing now is open; the one before it is the newest closed."""
    i = Interval("1m")
    now = ms(2024, 1, 1, 12, 0) + 30_000
    assert last_closed_open(i, now) == ms(2024, 1, 1, 11, 59)
    # Exactly at a boundary the previous candle has just closed (close time = now - 1 ms).
    assert last_closed_open(i, ms(2024, 1, 1, 12, 0)) == ms(2024, 1, 1, 11, 59)


def test_windows_cover_the_range_exactly_once() -> None:
    """Pages are aligned, contiguous, non-overlapping and cover every candle once."""
    i = Interval("1m")
    first, last = ms(2024, 1, 1), ms(2024, 1, 3, 7, 13)
    windows = plan_windows(i, first, last)
    covered = [t for w in windows for t in i.opens(w.start, i.next_open(w.last))]
    assert covered == i.opens(first, i.next_open(last))
    assert all(i.count(w.start, i.next_open(w.last)) <= w.limit for w in windows)


def test_long_pages_use_the_best_weight_tier() -> None:
    """Full pages ask for 499 rows (weight 2), the most candles per unit of weight."""
    i = Interval("1m")
    windows = plan_windows(i, 0, 10_000 * M)
    assert {w.limit for w in windows[:-1]} == {499}
    per_weight = {lim: lim / kline_weight(lim) for lim in (99, 499, 1000, 1500)}
    assert max(per_weight, key=per_weight.__getitem__) == 499


def test_short_tail_uses_the_cheapest_tier() -> None:
    """A remainder under 100 candles costs weight 1; one or two candles ask for just those."""
    assert page_limit(1) == 1
    assert page_limit(60) == 60
    assert kline_weight(page_limit(99)) == 1
    assert page_limit(150) == 499
    i = Interval("1m")
    windows = plan_windows(i, 0, 520 * M)
    assert [w.limit for w in windows] == [499, 22]


def test_gaps_are_reported_as_missing_ranges() -> None:
    """Holes between open times become [first missing, next present) ranges."""
    i = Interval("1m")
    assert find_gaps(i, 0, [M, 2 * M, 5 * M, 6 * M, 9 * M]) == [(3 * M, 5 * M), (7 * M, 9 * M)]
    assert find_gaps(i, None, [5 * M, 6 * M]) == []
    assert find_gaps(i, 0, [4 * M]) == [(M, 4 * M)]


def test_monthly_windows() -> None:
    """Monthly candles plan over calendar months."""
    i = Interval("1M")
    windows = plan_windows(i, ms(2020, 1, 1), ms(2024, 6, 1))
    assert len(windows) == 1
    assert i.count(windows[0].start, i.next_open(windows[0].last)) == 54

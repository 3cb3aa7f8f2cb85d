"""The simulator's market model: deterministic, internally consistent, exact, gap-aware."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS, Interval
from qryptify_ingestor.sim import Market, SimClock, SymbolSpec, default_symbols, generated_symbols
from qryptify_ingestor.sim.market import fmt_units

NOW = 1_790_812_800_000 + 30_000  # 2026-10-01 00:00:30 UTC


def market() -> Market:
    return Market(default_symbols(), SimClock.controlled(NOW, speed=0))


def _check_aggregate(parent: list[object], children: list[list[object]]) -> None:
    assert children, "no children"
    assert children[0][1] == parent[1]
    assert children[-1][4] == parent[4]
    assert max(Decimal(str(c[2])) for c in children) == Decimal(str(parent[2]))
    assert min(Decimal(str(c[3])) for c in children) == Decimal(str(parent[3]))
    for i in (5, 7, 9, 10):
        assert sum(Decimal(str(c[i])) for c in children) == Decimal(str(parent[i]))
    assert sum(int(str(c[8])) for c in children) == parent[8]


def test_fmt_units_is_fixed_point() -> None:
    """Units format with fixed decimals, like Binance's strings."""
    assert fmt_units(4312340, 2) == "43123.40"
    assert fmt_units(5, 3) == "0.005"
    assert fmt_units(17, 0) == "17"


def test_candles_are_deterministic_across_instances() -> None:
    """Two markets built independently serve identical rows."""
    a = market().candles("ETHUSDT", "5m", NOW - DAY_MS, NOW)
    b = market().candles("ETHUSDT", "5m", NOW - DAY_MS, NOW)
    assert a == b and len(a) == 287  # unaligned start: 288 five-minute opens minus the open one


@pytest.mark.parametrize("interval", ["3m", "15m", "1h", "4h", "1d"])
def test_intervals_aggregate_their_1m_candles(interval: str) -> None:
    """Every higher-interval candle is exactly the aggregate of its 1m candles."""
    m = market()
    iv = Interval(interval)
    start = iv.floor(NOW - 2 * DAY_MS)
    for row in m.candles("BTCUSDT", interval, start, start + 2 * iv.nominal_ms):
        minutes = m.candles("BTCUSDT", "1m", int(str(row[0])), int(str(row[6])) + 1)
        assert len(minutes) == iv.nominal_ms // MINUTE_MS
        _check_aggregate(row, minutes)


def test_month_and_week_aggregate_days() -> None:
    """1M opens on the 1st, 1w on Monday, and both aggregate their 1d candles."""
    m = market()
    for row in m.candles("SOLUSDT", "1M", NOW - 400 * DAY_MS, NOW)[-3:]:
        opened = datetime.fromtimestamp(int(str(row[0])) / 1000, UTC)
        assert (opened.day, opened.hour, opened.minute) == (1, 0, 0)
        _check_aggregate(row, m.candles("SOLUSDT", "1d", int(str(row[0])), int(str(row[6])) + 1))
    for row in m.candles("SOLUSDT", "1w", NOW - 30 * DAY_MS, NOW):
        opened = datetime.fromtimestamp(int(str(row[0])) / 1000, UTC)
        assert opened.weekday() == 0 and opened.hour == 0
        days = m.candles("SOLUSDT", "1d", int(str(row[0])), int(str(row[6])) + 1)
        assert len(days) == 7
        _check_aggregate(row, days)


def test_rows_are_well_formed_and_quantised() -> None:
    """Prices sit on the tick with the symbol's decimals; high/low bound open and close."""
    m = market()
    for spec in m.specs.values():
        if spec.end_ms is not None and spec.end_ms < NOW:
            continue
        rows = m.candles(spec.name, "1m", NOW - 3 * HOUR_MS, NOW)
        assert rows, spec.name
        tick = Decimal(spec.tick_size)
        for row in rows:
            o, h, low, c, v = (Decimal(str(x)) for x in row[1:6])
            assert h >= max(o, c) >= min(o, c) >= low > 0
            assert Decimal(str(row[9])) <= v
            for price in row[1:5]:
                text = str(price)
                decimals = len(text.split(".")[1]) if "." in text else 0
                assert decimals == spec.price_precision
                assert Decimal(text) % tick == 0
            assert row[6] == Interval("1m").close_time(int(str(row[0])))
            assert row[11] == "0"


def test_volumes_do_not_survive_a_float_round_trip() -> None:
    """Volume strings carry more digits than float64 keeps, so a float column would lose them."""
    m = market()
    rows = m.candles("BTCUSDT", "1d", NOW - 30 * DAY_MS, NOW)
    lossy = [
        row[i]
        for row in rows
        for i in (5, 7, 9, 10)
        if Decimal(float(str(row[i]))) != Decimal(str(row[i]))
    ]
    assert len(lossy) > len(rows)  # most quote volumes are lossy
    assert max(len(str(row[7]).replace(".", "")) for row in rows) >= 18


def test_nothing_before_listing_or_after_delivery() -> None:
    """A symbol has no candles before its listing minute nor after its delivery."""
    m = market()
    nova = m.specs["NOVAUSDT"]
    first = m.candles("NOVAUSDT", "1d", 0, NOW)[0]
    assert first[0] == Interval("1d").floor(nova.onboard_ms)
    minutes = m.candles("NOVAUSDT", "1m", 0, nova.onboard_ms + 2 * MINUTE_MS)
    assert [r[0] for r in minutes] == [nova.onboard_ms, nova.onboard_ms + MINUTE_MS]
    tomo = m.specs["TOMOUSDT"]
    assert tomo.end_ms is not None
    last = m.candles("TOMOUSDT", "1h", tomo.end_ms - 3 * HOUR_MS, NOW)
    assert [r[0] for r in last] == [tomo.end_ms - 3 * HOUR_MS + i * HOUR_MS for i in range(3)]


def test_gaps_remove_rows_and_shrink_aggregates() -> None:
    """An exchange gap has no 1m rows; the hour around it aggregates what is left."""
    m = market()
    hour = Interval("1h").floor(NOW - 5 * HOUR_MS)
    before = m.candles("BTCUSDT", "1h", hour, hour + HOUR_MS)[0]
    m.add_gap(hour + 10 * MINUTE_MS, hour + 20 * MINUTE_MS, "BTCUSDT")
    minutes = m.candles("BTCUSDT", "1m", hour, hour + HOUR_MS)
    assert len(minutes) == 50
    after = m.candles("BTCUSDT", "1h", hour, hour + HOUR_MS)[0]
    assert after != before
    _check_aggregate(after, minutes)
    assert len(m.candles("ETHUSDT", "1m", hour, hour + HOUR_MS)) == 60  # other symbols untouched
    m.add_gap(hour, hour + HOUR_MS)  # all symbols
    assert m.candles("ETHUSDT", "1h", hour, hour + HOUR_MS) == []


def test_open_candle_is_partial_and_a_function_of_now() -> None:
    """The open candle's values depend on (open time, now) only and converge to the final."""
    m = market()
    open_ms = Interval("1h").floor(NOW)
    a = m.klines("BTCUSDT", "1h", now_ms=NOW, limit=1)
    b = market().klines("BTCUSDT", "1h", now_ms=NOW, limit=1)
    assert a == b and a[0][0] == open_ms and int(str(a[0][6])) > NOW
    later = m.klines("BTCUSDT", "1h", now_ms=NOW + 20 * MINUTE_MS, limit=1)[0]
    assert Decimal(str(later[5])) > Decimal(str(a[0][5]))
    final = m.candles("BTCUSDT", "1h", open_ms, open_ms + 1, now_ms=open_ms + HOUR_MS)[0]
    assert Decimal(str(final[5])) >= Decimal(str(later[5]))


def test_generated_symbols_are_valid_and_distinct() -> None:
    """Generated universes are easy to make and every symbol has data."""
    specs = generated_symbols(50, onboard_ms=NOW - 10 * DAY_MS)
    assert len({s.name for s in specs}) == 50
    m = Market(specs, SimClock.controlled(NOW, speed=0))
    closes = {m.candles(s.name, "1h", NOW - HOUR_MS * 2, NOW)[0][4] for s in specs}
    assert len(closes) > 40


def test_symbol_spec_derives_assets() -> None:
    """Base/pair/margin assets default from the name."""
    spec = SymbolSpec("BTCUSDT_261225", 0, quote_asset="USDT")
    assert (spec.base_asset, spec.pair, spec.margin_asset) == ("BTC", "BTCUSDT", "USDT")

"""`verify` and `holes` against real PostgreSQL, plain and TimescaleDB (pg_plugin fixtures).

Test data is written with plain SQL (generate_series) so these tests depend only on the schema
contract in sql/001_init.sql, not on the Storage class.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from rich.console import Console

from qryptify_ingestor.domain import MINUTE_MS, Interval, StreamKey, TimeRange
from qryptify_ingestor.errors import DatabaseUnavailable
from qryptify_ingestor.storage.verify import PG_INTERVALS, holes, verify

REPO = Path(__file__).resolve().parents[1]
T0 = 1_704_067_200_000  # 2024-01-01 00:00:00 UTC, a Monday
BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1h")
CHECKS = [
    "schema",
    "timescaledb",
    "hypertables",
    "coverage",
    "resume",
    "duplicates",
    "lag",
    "continuity",
    "exchange_gaps",
    "values",
    "failed_ranges",
]


@pytest.fixture
def dsn(database_url: str, db_mode: str) -> Iterator[str]:
    """A fresh database with the schema (and a hypertable in TimescaleDB mode)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((REPO / "sql" / "001_init.sql").read_text())
        if db_mode == "timescaledb":
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(
                "SELECT create_hypertable('candlesticks', by_range('ts', INTERVAL '7 days'),"
                " migrate_data => true)"
            )
    yield database_url


def sql_exec(dsn: str, query: str, params: dict[str, object] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(query, params)  # type: ignore[arg-type]


def fill(dsn: str, key: StreamKey, start_ms: int, n: int) -> int:
    """Insert n contiguous valid candles from start_ms; return the open time of the last."""
    step = PG_INTERVALS[key.interval]
    sql_exec(
        dsn,
        """
        INSERT INTO candlesticks
        SELECT %(symbol)s, %(interval)s, t, 100, 110, 90, 105, 10,
               t + %(step)s::interval - interval '1 millisecond', 1000, 7, 4, 400
        FROM generate_series(to_timestamp(%(start)s / 1000.0),
                             to_timestamp(%(start)s / 1000.0) + (%(n)s - 1) * %(step)s::interval,
                             %(step)s::interval) AS t
        """,
        {"symbol": key.symbol, "interval": key.interval, "start": start_ms, "n": n, "step": step},
    )
    iv = Interval(key.interval)
    last = start_ms
    for _ in range(n - 1):
        last = iv.next_open(last)
    return last


def set_state(dsn: str, key: StreamKey, first_ms: int | None, last_ms: int | None) -> None:
    sql_exec(
        dsn,
        "INSERT INTO sync_state (symbol, interval, first_ts, last_ts)"
        " VALUES (%(s)s, %(i)s, to_timestamp(%(f)s / 1000.0), to_timestamp(%(l)s / 1000.0))"
        " ON CONFLICT (symbol, interval) DO UPDATE"
        " SET first_ts = excluded.first_ts, last_ts = excluded.last_ts",
        {"s": key.symbol, "i": key.interval, "f": first_ms, "l": last_ms},
    )


def delete(dsn: str, key: StreamKey, start_ms: int, end_ms: int) -> None:
    sql_exec(
        dsn,
        "DELETE FROM candlesticks WHERE symbol = %(s)s AND interval = %(i)s"
        " AND ts >= to_timestamp(%(a)s / 1000.0) AND ts < to_timestamp(%(b)s / 1000.0)",
        {"s": key.symbol, "i": key.interval, "a": start_ms, "b": end_ms},
    )


def record_gap(dsn: str, key: StreamKey, start_ms: int, end_ms: int) -> None:
    sql_exec(
        dsn,
        "INSERT INTO exchange_gaps (symbol, interval, gap_start, gap_end)"
        " VALUES (%(s)s, %(i)s, to_timestamp(%(a)s / 1000.0), to_timestamp(%(b)s / 1000.0))",
        {"s": key.symbol, "i": key.interval, "a": start_ms, "b": end_ms},
    )


def just_after(key: StreamKey, last_open_ms: int) -> int:
    """A `now` shortly after the candle opening at last_open_ms closed."""
    return Interval(key.interval).close_time(last_open_ms) + 1_000


async def clean(dsn: str, n: int = 120) -> tuple[int, int]:
    """BTC 1m and ETH 1h, contiguous, with agreeing sync_state; returns the last opens."""
    btc_last = fill(dsn, BTC, T0, n)
    eth_last = fill(dsn, ETH, T0, n // 60 + 1)
    set_state(dsn, BTC, T0, btc_last)
    set_state(dsn, ETH, T0, eth_last)
    return btc_last, eth_last


async def test_clean_data_is_ok(dsn: str, db_mode: str) -> None:
    """Contiguous, valid data with agreeing resume points passes every check."""
    btc_last, _ = await clean(dsn)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    assert report.ok, report.to_json()
    assert [c.name for c in report.checks] == CHECKS
    assert {c.status for c in report.checks} <= {"ok", "info"}
    cov = report.check("coverage").rows
    assert cov == [
        {
            "symbol": "BTCUSDT",
            "interval": "1m",
            "first_ms": T0,
            "last_ms": btc_last,
            "count": 120,
            "expected": 120,
            "missing": 0,
            "in_exchange_gaps": 0,
        }
    ]
    if db_mode == "timescaledb":
        assert report.check("timescaledb").status == "ok"
        assert report.check("hypertables").status == "ok"
    else:
        assert report.check("timescaledb").status == "info"
        assert "plain PostgreSQL" in report.check("timescaledb").summary
        assert report.check("hypertables").status == "info"


async def test_json_shape_is_stable(dsn: str) -> None:
    """to_json has the documented top-level and per-check keys, with ms integers in items."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 10 * MINUTE_MS, T0 + 11 * MINUTE_MS)
    doc = orjson.loads((await verify(dsn, now_ms=just_after(BTC, btc_last))).to_json())
    assert set(doc) == {"ok", "now_ms", "failed", "checks"}
    assert doc["ok"] is False
    assert list(doc["checks"]) == CHECKS
    for check in doc["checks"].values():
        assert set(check) == {"title", "status", "ok", "summary", "items", "truncated"}
        assert check["status"] in {"ok", "info", "warn", "fail"}
    assert "continuity" in doc["failed"]
    hole = doc["checks"]["continuity"]["items"][0]
    assert hole == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "start_ms": T0 + 10 * MINUTE_MS,
        "end_ms": T0 + 11 * MINUTE_MS,
        "candles": 1,
    }


async def test_deleted_row_is_a_one_candle_hole(dsn: str) -> None:
    """One deleted candle shows as a [ts, ts + 1m) hole and breaks the resume invariant."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 30 * MINUTE_MS, T0 + 31 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    assert not report.ok
    cont = report.check("continuity")
    assert cont.status == "fail"
    assert [(r["start_ms"], r["end_ms"], r["candles"]) for r in cont.rows] == [
        (T0 + 30 * MINUTE_MS, T0 + 31 * MINUTE_MS, 1)
    ]
    assert report.check("coverage").rows[0]["missing"] == 1
    resume = report.check("resume")
    assert resume.status == "fail"
    assert "hole(s) inside the contiguous coverage" in resume.rows[0]["problems"][0]


async def test_multi_candle_hole_is_one_range(dsn: str) -> None:
    """Several consecutive missing candles are reported as one range with its candle count."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 50 * MINUTE_MS, T0 + 57 * MINUTE_MS)
    delete(dsn, ETH, T0 + 3_600_000, T0 + 2 * 3_600_000)
    report = await verify(dsn, keys=[BTC, ETH], check_lag=False, now_ms=btc_last)
    rows = report.check("continuity").rows
    assert [(r["symbol"], r["start_ms"], r["end_ms"], r["candles"]) for r in rows] == [
        ("BTCUSDT", T0 + 50 * MINUTE_MS, T0 + 57 * MINUTE_MS, 7),
        ("ETHUSDT", T0 + 3_600_000, T0 + 2 * 3_600_000, 1),
    ]
    assert "2 holes, 8 candles missing" in report.check("continuity").summary
    assert report.check("lag").status == "info"


async def test_corrupted_values_are_named(dsn: str) -> None:
    """high < low and a wrong close_time are each reported with the candle and the reason."""
    btc_last, _ = await clean(dsn)
    sql_exec(
        dsn,
        "UPDATE candlesticks SET high = 80 WHERE symbol = 'BTCUSDT' AND ts = to_timestamp(%(t)s)",
        {"t": (T0 + 5 * MINUTE_MS) / 1000},
    )
    sql_exec(
        dsn,
        "UPDATE candlesticks SET close_time = close_time + interval '1 second', trades = -1"
        " WHERE symbol = 'BTCUSDT' AND ts = to_timestamp(%(t)s)",
        {"t": (T0 + 6 * MINUTE_MS) / 1000},
    )
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    values = report.check("values")
    assert values.status == "fail"
    assert values.summary.startswith("2 candles")
    by_ts = {r["ts_ms"]: r["problems"] for r in values.rows}
    assert "high < low" in by_ts[T0 + 5 * MINUTE_MS]
    assert "open outside [low, high]" in by_ts[T0 + 5 * MINUTE_MS]
    assert by_ts[T0 + 6 * MINUTE_MS] == ["negative trades", "close_time != ts + interval - 1 ms"]
    assert report.check("continuity").status == "ok"
    assert orjson.loads(report.to_json())["failed"] == ["values"]


async def test_misaligned_open_time_is_a_value_problem(dsn: str) -> None:
    """A candle whose ts is not on an interval boundary is flagged, not turned into a hole."""
    fill(dsn, BTC, T0, 10)
    fill(dsn, StreamKey("BTCUSDT", "1m"), T0 + 20 * MINUTE_MS + 30_000, 1)
    report = await verify(dsn, keys=[BTC], check_lag=False, now_ms=T0)
    assert report.check("values").rows[0]["problems"] == ["ts not aligned to interval"]


async def test_resume_point_beyond_data(dsn: str) -> None:
    """A sync_state.last_ts later than the newest candle fails the resume check."""
    btc_last, _ = await clean(dsn)
    set_state(dsn, BTC, T0, btc_last + 10 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    resume = report.check("resume")
    assert resume.status == "fail"
    assert resume.rows[0]["problems"] == ["resume point beyond the data"]
    assert resume.rows[0]["last_ts_ms"] == btc_last + 10 * MINUTE_MS
    assert not report.ok


async def test_resume_point_stale_behind_contiguous_data(dsn: str) -> None:
    """A last_ts behind data that continues without a hole is flagged as stale."""
    btc_last, _ = await clean(dsn)
    set_state(dsn, BTC, T0, btc_last - 20 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    resume = report.check("resume")
    assert resume.status == "fail"
    assert resume.rows[0]["problems"] == ["stale: candles continue right after the resume point"]


async def test_resume_point_before_a_hole_is_consistent(dsn: str) -> None:
    """A last_ts that stops right before a hole agrees with the data; only the hole fails."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 100 * MINUTE_MS, T0 + 102 * MINUTE_MS)
    set_state(dsn, BTC, T0, T0 + 99 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    assert report.check("resume").status == "ok"
    assert report.check("continuity").status == "fail"


async def test_missing_sync_state_is_a_warning(dsn: str) -> None:
    """Candles without a sync_state row are reported as suspicious, not failed."""
    btc_last = fill(dsn, BTC, T0, 30)
    report = await verify(dsn, now_ms=just_after(BTC, btc_last))
    assert report.check("resume").status == "warn"
    assert report.ok


async def test_exchange_gap_is_not_a_hole(dsn: str) -> None:
    """A range recorded in exchange_gaps is reported as an exchange gap, not as a hole."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 40 * MINUTE_MS, T0 + 45 * MINUTE_MS)
    record_gap(dsn, BTC, T0 + 40 * MINUTE_MS, T0 + 45 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    assert report.ok, report.to_json()
    assert report.check("continuity").rows == []
    gaps = report.check("exchange_gaps")
    assert gaps.status == "info"
    assert [(r["start_ms"], r["end_ms"], r["candles"]) for r in gaps.rows] == [
        (T0 + 40 * MINUTE_MS, T0 + 45 * MINUTE_MS, 5)
    ]
    assert report.check("coverage").rows[0]["in_exchange_gaps"] == 5
    assert report.check("coverage").rows[0]["missing"] == 0


async def test_hole_partly_inside_exchange_gap_keeps_the_rest(dsn: str) -> None:
    """Only the part of a hole outside the recorded exchange gap is listed as missing."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 40 * MINUTE_MS, T0 + 50 * MINUTE_MS)
    record_gap(dsn, BTC, T0 + 40 * MINUTE_MS, T0 + 45 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    rows = report.check("continuity").rows
    assert [(r["start_ms"], r["end_ms"], r["candles"]) for r in rows] == [
        (T0 + 45 * MINUTE_MS, T0 + 50 * MINUTE_MS, 5)
    ]


async def test_lag_beyond_threshold_fails(dsn: str) -> None:
    """A stream whose last close is older than interval + margin fails the lag check."""
    btc_last, _ = await clean(dsn)
    now = just_after(BTC, btc_last) + 10 * MINUTE_MS
    report = await verify(dsn, keys=[BTC], now_ms=now, lag_margin_ms=60_000)
    lag = report.check("lag")
    assert lag.status == "fail"
    assert lag.rows[0]["status"] == "lagging"
    ok = await verify(dsn, keys=[BTC], now_ms=now, lag_threshold_ms={BTC: 20 * MINUTE_MS})
    assert ok.check("lag").status == "ok"


async def test_failed_ranges_are_listed(dsn: str) -> None:
    """Rows in failed_ranges are listed and make the report fail."""
    btc_last, _ = await clean(dsn)
    sql_exec(
        dsn,
        "INSERT INTO failed_ranges (symbol, interval, range_start, range_end, reason, attempts)"
        " VALUES ('BTCUSDT', '1m', to_timestamp(%(a)s), to_timestamp(%(b)s), 'high < low', 3)",
        {"a": T0 / 1000, "b": (T0 + MINUTE_MS) / 1000},
    )
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    failed = report.check("failed_ranges")
    assert failed.status == "fail"
    assert failed.rows[0]["reason"] == "high < low"
    assert failed.rows[0]["attempts"] == 3


async def test_requested_key_without_data_fails(dsn: str) -> None:
    """A requested stream with no candles at all fails coverage."""
    btc_last, _ = await clean(dsn)
    sol = StreamKey("SOLUSDT", "1m")
    report = await verify(dsn, keys=[BTC, sol], now_ms=just_after(BTC, btc_last))
    assert report.check("coverage").status == "fail"
    assert "SOLUSDT 1m" in report.check("coverage").summary


async def test_monthly_and_weekly_interval_arithmetic(dsn: str) -> None:
    """1M and 1w continuity uses calendar months and Monday weeks in SQL."""
    month, week = StreamKey("BTCUSDT", "1M"), StreamKey("BTCUSDT", "1w")
    m_last = fill(dsn, month, T0, 12)  # Jan..Dec 2024
    fill(dsn, week, T0, 20)
    mar = Interval("1M").next_open(Interval("1M").next_open(T0))
    apr = Interval("1M").next_open(mar)
    delete(dsn, month, mar, apr)
    report = await verify(dsn, keys=[month, week], check_lag=False, now_ms=m_last)
    assert report.check("values").status == "ok"
    rows = report.check("continuity").rows
    assert [(r["interval"], r["start_ms"], r["end_ms"], r["candles"]) for r in rows] == [
        ("1M", mar, apr, 1)
    ]
    cov = {r["interval"]: r for r in report.check("coverage").rows}
    assert cov["1M"]["expected"] == 12 and cov["1M"]["count"] == 11
    assert cov["1w"]["expected"] == 20 and cov["1w"]["count"] == 20


async def test_holes_for_repair_include_edges(dsn: str) -> None:
    """holes() lists missing ranges inside the window, including at its start and end."""
    fill(dsn, BTC, T0 + 5 * MINUTE_MS, 20)  # 00:05 .. 00:24
    delete(dsn, BTC, T0 + 10 * MINUTE_MS, T0 + 12 * MINUTE_MS)
    got = await holes(dsn, BTC, T0, T0 + 30 * MINUTE_MS)
    assert got == [
        TimeRange(T0, T0 + 5 * MINUTE_MS),
        TimeRange(T0 + 10 * MINUTE_MS, T0 + 12 * MINUTE_MS),
        TimeRange(T0 + 25 * MINUTE_MS, T0 + 30 * MINUTE_MS),
    ]
    assert await holes(dsn, BTC, T0 + 5 * MINUTE_MS, T0 + 10 * MINUTE_MS) == []


async def test_holes_skip_exchange_gaps_unless_asked(dsn: str) -> None:
    """holes() leaves out recorded exchange gaps, and includes them on request."""
    fill(dsn, BTC, T0, 30)
    delete(dsn, BTC, T0 + 10 * MINUTE_MS, T0 + 15 * MINUTE_MS)
    record_gap(dsn, BTC, T0 + 10 * MINUTE_MS, T0 + 13 * MINUTE_MS)
    assert await holes(dsn, BTC, T0, T0 + 30 * MINUTE_MS) == [
        TimeRange(T0 + 13 * MINUTE_MS, T0 + 15 * MINUTE_MS)
    ]
    assert await holes(dsn, BTC, T0, T0 + 30 * MINUTE_MS, include_exchange_gaps=True) == [
        TimeRange(T0 + 10 * MINUTE_MS, T0 + 15 * MINUTE_MS)
    ]


async def test_missing_schema_fails_fast(database_url: str) -> None:
    """On a database without the tables, verify reports the schema failure and stops."""
    report = await verify(database_url, now_ms=T0)
    assert not report.ok
    assert [c.name for c in report.checks] == ["schema"]
    assert "candlesticks" in report.check("schema").summary


async def test_unreachable_database_raises_retryable(pg_plain_cluster: object) -> None:
    """A refused connection becomes DatabaseUnavailable, the retryable error."""
    with pytest.raises(DatabaseUnavailable):
        await verify("postgresql://postgres@127.0.0.1:1/nope?connect_timeout=2", now_ms=T0)


async def test_render_shows_marks_and_tables(dsn: str) -> None:
    """render prints a ✔ or ✘ line per check and a table of the holes."""
    btc_last, _ = await clean(dsn)
    delete(dsn, BTC, T0 + 30 * MINUTE_MS, T0 + 31 * MINUTE_MS)
    report = await verify(dsn, keys=[BTC], now_ms=just_after(BTC, btc_last))
    console = Console(record=True, width=140, force_terminal=False)
    report.render(console)
    text = console.export_text()
    assert "✘ Continuity — 1 holes, 1 candles missing" in text
    assert "✔ Duplicate keys — none" in text
    assert "2024-01-01 00:30:00" in text
    assert "PROBLEMS FOUND" in text


@pytest.mark.slow
async def test_one_million_rows_verify_quickly(dsn: str) -> None:
    """verify over 1M candles with a hole finishes in seconds (set-based SQL, no row loops)."""
    n = 1_000_000
    last = fill(dsn, BTC, T0, n)
    delete(dsn, BTC, T0 + 500_000 * MINUTE_MS, T0 + 500_003 * MINUTE_MS)
    sql_exec(dsn, "ANALYZE candlesticks")
    started = time.perf_counter()
    report = await verify(dsn, now_ms=just_after(BTC, last))
    elapsed = time.perf_counter() - started
    assert report.check("coverage").rows[0]["count"] == n - 3
    assert [(r["start_ms"], r["candles"]) for r in report.check("continuity").rows] == [
        (T0 + 500_000 * MINUTE_MS, 3)
    ]
    # About 3 s here for 1M rows in either mode; 20 s leaves room for a slow CI machine.
    assert elapsed < 20, f"verify took {elapsed:.1f} s for {n} rows"


async def test_compressed_chunks_are_checked(dsn: str, db_mode: str) -> None:
    """Holes and bad values are found inside TimescaleDB columnstore (compressed) chunks too."""
    if db_mode != "timescaledb":
        pytest.skip("compression exists only in TimescaleDB mode")
    last = fill(dsn, BTC, T0, 3 * 24 * 60)
    delete(dsn, BTC, T0 + 60 * MINUTE_MS, T0 + 62 * MINUTE_MS)
    sql_exec(
        dsn,
        "UPDATE candlesticks SET low = 200 WHERE ts = to_timestamp(%(t)s)",
        {"t": (T0 + 70 * MINUTE_MS) / 1000},
    )
    sql_exec(
        dsn,
        "ALTER TABLE candlesticks SET (timescaledb.enable_columnstore = true,"
        " timescaledb.segmentby = 'symbol, interval', timescaledb.orderby = 'ts')",
    )
    sql_exec(
        dsn,
        "SET timescaledb.enable_compression_ratio_warnings = off;"
        " SELECT compress_chunk(c) FROM show_chunks('candlesticks') c",
    )
    report = await verify(dsn, keys=[BTC], check_lag=False, now_ms=last)
    assert report.check("hypertables").rows[0]["compressed_chunks"] >= 1
    assert [(r["start_ms"], r["candles"]) for r in report.check("continuity").rows] == [
        (T0 + 60 * MINUTE_MS, 2)
    ]
    assert report.check("values").rows[0]["ts_ms"] == T0 + 70 * MINUTE_MS

"""`qryptify verify`: is the stored data exact, complete and current? Also `holes()` for repair.

Owns the read-only checks over the schema in sql/001_init.sql. Every check is one set-based SQL
statement (aggregates, window functions, range arithmetic), so the work happens inside
PostgreSQL and only summaries and the few offending rows or ranges come back; nothing walks the
candles row by row in Python, which matters for a table of a billion rows.

Checks, in report order (each has a stable `name`, used as the key in `to_json()`):

    schema          the four tables exist (else nothing else can run: fail)
    timescaledb     the extension is installed (absent: "plain PostgreSQL", info, not a failure)
    hypertables     candlesticks is a hypertable, chunks and compressed chunks (same)
    coverage        per (symbol, interval): first, last, count, expected count, missing
    resume          sync_state agrees with the data: rows at first_ts/last_ts exist, no holes
                    inside [first_ts, last_ts], last_ts neither beyond the data nor stale
    duplicates      GROUP BY key HAVING count(*) > 1 (the primary key makes it 0; still checked)
    lag             now - close of the last stored candle, against interval + margin
    continuity      holes as [start, end) ranges; ranges inside recorded exchange_gaps excluded
    exchange_gaps   recorded exchange gaps, reported as such (not as holes)
    values          low <= open,close <= high, volumes >= 0, trades >= 0, taker <= total,
                    close_time = ts + interval - 1 ms, ts aligned to the interval
    failed_ranges   ranges whose payloads stayed malformed (data known missing)

Status per check: ok, info, warn (suspicious, not wrong), fail. `VerifyReport.ok` is false when
any check fails; the CLI exits non-zero then.

Interval arithmetic happens in SQL with PostgreSQL intervals ('1m' -> '1 minute', '1M' ->
'1 month'); the session runs with TimeZone=UTC so that adding '1 day' or '1 month' and
date_trunc('month') follow Binance's UTC candle boundaries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qryptify_ingestor.domain import (
    DAY_MS,
    INTERVALS,
    Interval,
    StreamKey,
    TimeRange,
    datetime_to_ms,
    format_ms,
    ms_to_datetime,
)
from qryptify_ingestor.errors import DatabaseUnavailable

Status = Literal["ok", "info", "warn", "fail"]

DEFAULT_LAG_MARGIN_MS = 60_000
# A stored candle whose close lies this far in the future was not closed when written.
_FUTURE_TOLERANCE_MS = 5_000
# Holes are ranges, so even a badly damaged table has few; the cap only bounds memory.
MAX_HOLES = 100_000
MAX_EXAMPLES = 100

# Binance interval name -> PostgreSQL interval. Binance weeks open on Monday 00:00 UTC, so 1w
# candles are aligned to 1970-01-05 (the first Monday after the epoch); everything else shorter
# than a month is aligned to the epoch (domain.Interval.floor does the same).
PG_INTERVALS: dict[str, str] = {
    "1m": "1 minute",
    "3m": "3 minutes",
    "5m": "5 minutes",
    "15m": "15 minutes",
    "30m": "30 minutes",
    "1h": "1 hour",
    "2h": "2 hours",
    "4h": "4 hours",
    "6h": "6 hours",
    "8h": "8 hours",
    "12h": "12 hours",
    "1d": "1 day",
    "3d": "3 days",
    "1w": "7 days",
    "1M": "1 month",
}
assert set(PG_INTERVALS) == set(INTERVALS)

_STEPS = sql.SQL("steps(interval, step, origin) AS (VALUES {})").format(
    sql.SQL(", ").join(
        sql.SQL("({}::text, {}::interval, {}::timestamptz)").format(
            sql.Literal(name),
            sql.Literal(pg),
            sql.Literal("1970-01-05 00:00:00+00" if name == "1w" else "1970-01-01 00:00:00+00"),
        )
        for name, pg in PG_INTERVALS.items()
    )
)

# (label, condition over candlesticks c LEFT JOIN steps st): one label per kind of bad value.
_VALUE_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("unknown interval", "st.step IS NULL"),
    ("high < low", "c.high < c.low"),
    ("open outside [low, high]", "c.open < c.low OR c.open > c.high"),
    ("close outside [low, high]", "c.close < c.low OR c.close > c.high"),
    (
        "negative volume",
        "c.volume < 0 OR c.quote_volume < 0 OR c.taker_buy_base < 0 OR c.taker_buy_quote < 0",
    ),
    ("negative trades", "c.trades < 0"),
    ("taker buy > volume", "c.taker_buy_base > c.volume OR c.taker_buy_quote > c.quote_volume"),
    (
        "close_time != ts + interval - 1 ms",
        "c.close_time <> c.ts + st.step - interval '1 millisecond'",
    ),
    (
        "ts not aligned to interval",
        "c.ts <> CASE WHEN st.interval = '1M' THEN date_trunc('month', c.ts)"
        " ELSE date_bin(st.step, c.ts, st.origin) END",
    ),
)
_ANY_PROBLEM = sql.SQL(" OR ").join(
    sql.SQL("coalesce({}, false)").format(sql.SQL(f"({cond})")) for _, cond in _VALUE_PROBLEMS
)
_PROBLEM_ARRAY = sql.SQL("array_remove(ARRAY[{}], NULL)").format(
    sql.SQL(", ").join(
        sql.SQL("CASE WHEN coalesce({}, false) THEN {} END").format(
            sql.SQL(f"({cond})"), sql.Literal(label)
        )
        for label, cond in _VALUE_PROBLEMS
    )
)


# --- report ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Check:
    """One section of the report: a verdict, a one-line summary and the rows behind it.

    Row values that are epoch milliseconds have keys ending in `_ms`; `render` shows them as
    UTC times, `to_json` keeps the integers.
    """

    name: str
    title: str
    status: Status
    summary: str
    columns: tuple[str, ...] = ()
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": self.status,
            "ok": self.status != "fail",
            "summary": self.summary,
            "items": self.rows,
            "truncated": self.truncated,
        }


_MARKS: dict[Status, tuple[str, str]] = {
    "ok": ("✔", "green"),
    "info": ("ℹ", "cyan"),
    "warn": ("!", "yellow"),
    "fail": ("✘", "bold red"),
}


@dataclass(slots=True)
class VerifyReport:
    """The outcome of `verify`: checks in a fixed order; `ok` decides the exit code."""

    now_ms: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def sections(self) -> dict[str, Check]:
        return {c.name: c for c in self.checks}

    def check(self, name: str) -> Check:
        """The check called `name` (KeyError if it did not run)."""
        return self.sections[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "now_ms": self.now_ms,
            "failed": [c.name for c in self.checks if c.status == "fail"],
            "checks": {c.name: c.to_json() for c in self.checks},
        }

    def to_json(self) -> str:
        """JSON with stable keys: ok, now_ms, failed, checks.<name>.<field>.

        Fields of a check: title, status, ok, summary, items (rows), truncated.
        """
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()

    def render(self, console: Console, *, max_rows: int = 20) -> None:
        """Print the report: one ✔/✘ line per check, with a table of its rows when it has any."""
        console.rule(f"qryptify verify — {format_ms(self.now_ms)} UTC")
        for c in self.checks:
            mark, style = _MARKS[c.status]
            line = Text()
            line.append(f"{mark} ", style=style)
            line.append(c.title, style="bold")
            line.append(f" — {c.summary}")
            console.print(line)
            if c.rows and c.columns:
                table = Table(show_edge=False, pad_edge=False, header_style="dim")
                for col in c.columns:
                    table.add_column(col, overflow="fold")
                for row in c.rows[:max_rows]:
                    table.add_row(*(_cell(col, row.get(col)) for col in c.columns))
                console.print(table)
                more = len(c.rows) - max_rows
                if more > 0 or c.truncated:
                    console.print(f"  … {max(more, 0)} more rows not shown", style="dim")
        verdict = "OK" if self.ok else "PROBLEMS FOUND"
        console.rule(verdict, style="green" if self.ok else "red")


def _cell(col: str, value: Any) -> str:
    if col.endswith("_ms") and (value is None or isinstance(value, int)):
        return format_ms(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "-" if value is None else str(value)


# --- helpers --------------------------------------------------------------------------------


def lag_threshold_ms(interval: str, margin_ms: int = DEFAULT_LAG_MARGIN_MS) -> int:
    """One interval (the candle being built) plus a margin; a month counts as 31 days."""
    iv = Interval(interval)
    return (31 * DAY_MS if iv.is_monthly else iv.nominal_ms) + margin_ms


def _candles(interval: str, start_ms: int, end_ms: int) -> int | None:
    """Number of candles opening in [start, end), or None for an interval we do not know."""
    if interval not in INTERVALS:
        return None
    return Interval(interval).count(start_ms, end_ms)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else datetime_to_ms(value)


def _key_filter(keys: Sequence[StreamKey] | None, alias: str) -> tuple[sql.Composable, list[Any]]:
    """WHERE fragment restricting `alias` to `keys` (TRUE when keys is None) and its params."""
    if keys is None:
        return sql.SQL("TRUE"), []
    frag = sql.SQL("({}.symbol, {}.interval) IN (SELECT * FROM unnest(%s::text[], %s::text[]))")
    a = sql.Identifier(alias)
    return frag.format(a, a), [[k.symbol for k in keys], [k.interval for k in keys]]


async def _connect(dsn: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    # UTC: interval arithmetic and date_trunc follow the session time zone. Read-only: verify
    # must never change what it checks.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute("SET default_transaction_read_only = on")
    return conn


async def _fetch(
    conn: psycopg.AsyncConnection[dict[str, Any]],
    query: sql.Composed | sql.SQL,
    params: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    cur = await conn.execute(query, params)
    rows: list[dict[str, Any]] = await cur.fetchall()
    return rows


# --- holes (also used by repair) ------------------------------------------------------------


async def holes(
    dsn: str,
    key: StreamKey,
    start_ms: int,
    end_ms: int,
    *,
    include_exchange_gaps: bool = False,
) -> list[TimeRange]:
    """Missing candle ranges of `key` in [start_ms, end_ms): what a repair should re-fetch.

    Each range is [first missing open, open of the next stored candle or the end). Ranges
    covered by recorded exchange gaps are left out unless `include_exchange_gaps`.
    """
    iv = Interval(key.interval)
    start, end = iv.ceil(start_ms), iv.ceil(end_ms)
    if end <= start:
        return []
    # Two sentinels make the window see the edges: a virtual candle one step before `start`
    # (so a hole at the start shows) and one at `end` (so a hole at the end shows).
    query = sql.SQL(
        """
        WITH {steps},
        st AS (SELECT step FROM steps WHERE interval = %(interval)s),
        pts AS (
            SELECT c.ts FROM candlesticks c
            WHERE c.symbol = %(symbol)s AND c.interval = %(interval)s
              AND c.ts >= %(start)s AND c.ts < %(end)s
            UNION ALL SELECT %(start)s::timestamptz - (SELECT step FROM st)
            UNION ALL SELECT %(end)s::timestamptz
        ),
        w AS (SELECT ts, lead(ts) OVER (ORDER BY ts) AS next_ts FROM pts),
        h AS (
            SELECT tstzrange(w.ts + st.step, w.next_ts) AS hole
            FROM w CROSS JOIN st WHERE w.next_ts > w.ts + st.step
        ),
        g AS (
            SELECT range_agg(tstzrange(gap_start, gap_end)) AS covered FROM exchange_gaps
            WHERE symbol = %(symbol)s AND interval = %(interval)s AND NOT %(include_gaps)s
        )
        SELECT lower(r) AS lo, upper(r) AS hi
        FROM h CROSS JOIN g,
             unnest(tstzmultirange(h.hole) - coalesce(g.covered, '{{}}'::tstzmultirange)) AS r
        ORDER BY 1
        """
    ).format(steps=_STEPS)
    params = {
        "symbol": key.symbol,
        "interval": key.interval,
        "start": ms_to_datetime(start),
        "end": ms_to_datetime(end),
        "include_gaps": include_exchange_gaps,
    }
    conn = await _connect(dsn)
    try:
        cur = await conn.execute(query, params)
        rows = await cur.fetchall()
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database error during holes(): {exc}") from exc
    finally:
        await conn.close()
    return [TimeRange(datetime_to_ms(r["lo"]), datetime_to_ms(r["hi"])) for r in rows]


# --- verify ---------------------------------------------------------------------------------


async def verify(
    dsn: str,
    *,
    keys: Sequence[StreamKey] | None = None,
    now_ms: int,
    lag_threshold_ms: Mapping[StreamKey, int] | int | None = None,
    lag_margin_ms: int = DEFAULT_LAG_MARGIN_MS,
    check_lag: bool = True,
) -> VerifyReport:
    """Run every check against the database at `dsn` and return the report.

    keys: restrict to these streams (default: every key found in candlesticks or sync_state);
      a requested key with no candles fails coverage.
    lag_threshold_ms: per-key thresholds, or one for all; a key without one gets
      interval + `lag_margin_ms`.
    check_lag: False for a database that is not being followed live (the lag check is
      reported as info instead).
    """
    conn = await _connect(dsn)
    try:
        return await _Verifier(conn, keys, now_ms).run(
            lag_threshold_ms, lag_margin_ms, check_lag=check_lag
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database error during verify: {exc}") from exc
    finally:
        await conn.close()


@dataclass(slots=True)
class _KeyFacts:
    first_ms: int | None = None
    last_ms: int | None = None
    count: int = 0
    bad_values: int = 0
    holes: list[TimeRange] = field(default_factory=list)
    gaps: list[TimeRange] = field(default_factory=list)


class _Verifier:
    def __init__(
        self,
        conn: psycopg.AsyncConnection[dict[str, Any]],
        keys: Sequence[StreamKey] | None,
        now_ms: int,
    ) -> None:
        self.conn = conn
        self.keys = None if keys is None else list(dict.fromkeys(keys))
        self.report = VerifyReport(now_ms=now_ms)
        self.facts: dict[StreamKey, _KeyFacts] = defaultdict(_KeyFacts)
        self.holes_truncated = False
        self.gap_rows: list[dict[str, Any]] = []

    def add(self, check: Check) -> None:
        self.report.checks.append(check)

    async def run(
        self,
        thresholds: Mapping[StreamKey, int] | int | None,
        margin_ms: int,
        *,
        check_lag: bool,
    ) -> VerifyReport:
        if not await self._schema():
            return self.report
        await self._timescaledb()
        await self._coverage_scan()
        await self._continuity_scan()
        await self._gaps_scan()
        self._coverage()
        await self._resume()
        await self._duplicates()
        self._lag(thresholds, margin_ms, check_lag)
        self._continuity()
        self._exchange_gaps()
        await self._values()
        await self._failed_ranges()
        return self.report

    # 0 -----------------------------------------------------------------------------------
    async def _schema(self) -> bool:
        rows = await _fetch(
            self.conn,
            sql.SQL(
                "SELECT t AS table, to_regclass(t) IS NOT NULL AS present"
                " FROM unnest(ARRAY['candlesticks', 'sync_state', 'exchange_gaps',"
                " 'failed_ranges']) AS t"
            ),
        )
        missing = [r["table"] for r in rows if not r["present"]]
        if missing:
            self.add(
                Check(
                    "schema",
                    "Schema",
                    "fail",
                    f"missing tables: {', '.join(missing)} (run `qryptify migrate`)",
                )
            )
            return False
        self.add(Check("schema", "Schema", "ok", "candlesticks, sync_state, exchange_gaps, …"))
        return True

    # 1, 2 --------------------------------------------------------------------------------
    async def _timescaledb(self) -> None:
        rows = await _fetch(
            self.conn,
            sql.SQL("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"),
        )
        if not rows:
            self.add(Check("timescaledb", "TimescaleDB", "info", "not installed: plain PostgreSQL"))
            self.add(
                Check(
                    "hypertables",
                    "Hypertables",
                    "info",
                    "none (plain PostgreSQL: candlesticks is an ordinary table)",
                )
            )
            return
        version = rows[0]["extversion"]
        self.add(Check("timescaledb", "TimescaleDB", "ok", f"extension {version} installed"))
        hyper = await _fetch(
            self.conn,
            sql.SQL(
                "SELECT h.hypertable_name AS name,"
                " (SELECT count(*) FROM timescaledb_information.chunks ch"
                "   WHERE ch.hypertable_schema = h.hypertable_schema"
                "   AND ch.hypertable_name = h.hypertable_name) AS chunks,"
                " (SELECT count(*) FROM timescaledb_information.chunks ch"
                "   WHERE ch.hypertable_schema = h.hypertable_schema"
                "   AND ch.hypertable_name = h.hypertable_name AND ch.is_compressed) AS compressed"
                " FROM timescaledb_information.hypertables h"
                " WHERE h.hypertable_schema = current_schema()"
                " ORDER BY 1"
            ),
        )
        names = [h["name"] for h in hyper]
        rows_out = [
            {"hypertable": h["name"], "chunks": h["chunks"], "compressed_chunks": h["compressed"]}
            for h in hyper
        ]
        if "candlesticks" in names:
            self.add(
                Check(
                    "hypertables",
                    "Hypertables",
                    "ok",
                    f"{', '.join(names)}",
                    ("hypertable", "chunks", "compressed_chunks"),
                    rows_out,
                )
            )
        else:
            self.add(
                Check(
                    "hypertables",
                    "Hypertables",
                    "warn",
                    "TimescaleDB is installed but candlesticks is not a hypertable"
                    " (run `qryptify migrate`)",
                    ("hypertable", "chunks", "compressed_chunks"),
                    rows_out,
                )
            )

    # scans ---------------------------------------------------------------------------------
    async def _coverage_scan(self) -> None:
        where, params = _key_filter(self.keys, "c")
        query = sql.SQL(
            """
            WITH {steps}
            SELECT c.symbol, c.interval, min(c.ts) AS first_ts, max(c.ts) AS last_ts,
                   count(*) AS n, count(*) FILTER (WHERE {bad}) AS bad
            FROM candlesticks c LEFT JOIN steps st ON st.interval = c.interval
            WHERE {where}
            GROUP BY c.symbol, c.interval
            """
        ).format(steps=_STEPS, bad=_ANY_PROBLEM, where=where)
        for r in await _fetch(self.conn, query, params):
            f = self.facts[StreamKey(r["symbol"], r["interval"])]
            f.first_ms, f.last_ms = _ms(r["first_ts"]), _ms(r["last_ts"])
            f.count, f.bad_values = r["n"], r["bad"]
        for key in self.keys or ():
            self.facts.setdefault(key, _KeyFacts())  # a requested key is reported with no rows

    async def _continuity_scan(self) -> None:
        where, params = _key_filter(self.keys, "c")
        # lead(ts) over the key's candles in time order: wherever the next candle is not one
        # interval later, [ts + interval, next_ts) is missing. Recorded exchange gaps are then
        # subtracted with multirange arithmetic; what remains is a real hole.
        query = sql.SQL(
            """
            WITH {steps},
            cand AS (
                SELECT c.symbol, c.interval, c.ts,
                       lead(c.ts) OVER (PARTITION BY c.symbol, c.interval ORDER BY c.ts) AS next_ts
                FROM candlesticks c WHERE {where}
            ),
            h AS (
                SELECT cand.symbol, cand.interval,
                       tstzrange(cand.ts + st.step, cand.next_ts) AS hole
                FROM cand JOIN steps st ON st.interval = cand.interval
                WHERE cand.next_ts > cand.ts + st.step
            ),
            g AS (
                SELECT symbol, interval, range_agg(tstzrange(gap_start, gap_end)) AS covered
                FROM exchange_gaps GROUP BY symbol, interval
            )
            SELECT h.symbol, h.interval, lower(r) AS lo, upper(r) AS hi
            FROM h LEFT JOIN g ON g.symbol = h.symbol AND g.interval = h.interval,
                 unnest(tstzmultirange(h.hole) - coalesce(g.covered, '{{}}'::tstzmultirange)) AS r
            ORDER BY 1, 2, 3
            LIMIT {limit}
            """
        ).format(steps=_STEPS, where=where, limit=sql.Literal(MAX_HOLES + 1))
        rows = await _fetch(self.conn, query, params)
        self.holes_truncated = len(rows) > MAX_HOLES
        for r in rows[:MAX_HOLES]:
            key = StreamKey(r["symbol"], r["interval"])
            self.facts[key].holes.append(TimeRange(_ms(r["lo"]) or 0, _ms(r["hi"]) or 0))

    async def _gaps_scan(self) -> None:
        where, params = _key_filter(self.keys, "g")
        query = sql.SQL(
            "SELECT g.symbol, g.interval, g.gap_start, g.gap_end, g.checked_at"
            " FROM exchange_gaps g WHERE {} ORDER BY 1, 2, 3"
        ).format(where)
        self.gap_rows = await _fetch(self.conn, query, params)
        for r in self.gap_rows:
            key = StreamKey(r["symbol"], r["interval"])
            self.facts[key].gaps.append(TimeRange(_ms(r["gap_start"]) or 0, _ms(r["gap_end"]) or 0))

    # 3 -----------------------------------------------------------------------------------
    def _coverage(self) -> None:
        rows: list[dict[str, Any]] = []
        empty: list[str] = []
        for key in sorted(self.facts, key=lambda k: (k.symbol, k.interval)):
            f = self.facts[key]
            if f.first_ms is None or f.last_ms is None:
                if self.keys is not None and key in self.keys:
                    empty.append(str(key))
                    rows.append(
                        {
                            "symbol": key.symbol,
                            "interval": key.interval,
                            "count": 0,
                            "missing": None,
                        }
                    )
                continue
            expected = _candles(key.interval, f.first_ms, f.last_ms + 1)
            in_gaps = sum(
                _candles(key.interval, max(g.start, f.first_ms), min(g.end, f.last_ms + 1)) or 0
                for g in f.gaps
            )
            missing = sum(_candles(key.interval, h.start, h.end) or 0 for h in f.holes)
            rows.append(
                {
                    "symbol": key.symbol,
                    "interval": key.interval,
                    "first_ms": f.first_ms,
                    "last_ms": f.last_ms,
                    "count": f.count,
                    "expected": expected,
                    "missing": missing,
                    "in_exchange_gaps": in_gaps,
                }
            )
        cols = (
            "symbol",
            "interval",
            "first_ms",
            "last_ms",
            "count",
            "expected",
            "missing",
            "in_exchange_gaps",
        )
        total = sum(r["count"] for r in rows)
        if empty:
            self.add(
                Check(
                    "coverage",
                    "Coverage",
                    "fail",
                    f"no candles for {', '.join(empty)}",
                    cols,
                    rows,
                )
            )
        elif not rows:
            self.add(Check("coverage", "Coverage", "info", "no candles stored yet", cols, rows))
        else:
            self.add(
                Check(
                    "coverage",
                    "Coverage",
                    "ok",
                    f"{len(rows)} streams, {total} candles",
                    cols,
                    rows,
                )
            )

    # 4 -----------------------------------------------------------------------------------
    async def _resume(self) -> None:
        where, params = _key_filter(self.keys, "s")
        # Point lookups by primary key per sync_state row: is there a candle at first_ts and at
        # last_ts, and does the data continue right after last_ts (directly, or after an
        # exchange gap that starts there)? If it does, last_ts is stale.
        query = sql.SQL(
            """
            WITH {steps}
            SELECT s.symbol, s.interval, s.first_ts, s.last_ts,
                EXISTS (SELECT 1 FROM candlesticks c WHERE c.symbol = s.symbol
                        AND c.interval = s.interval AND c.ts = s.first_ts) AS first_present,
                EXISTS (SELECT 1 FROM candlesticks c WHERE c.symbol = s.symbol
                        AND c.interval = s.interval AND c.ts = s.last_ts) AS last_present,
                EXISTS (SELECT 1 FROM candlesticks c WHERE c.symbol = s.symbol
                        AND c.interval = s.interval AND c.ts = s.last_ts + st.step)
                OR EXISTS (SELECT 1 FROM exchange_gaps g JOIN candlesticks c
                        ON c.symbol = g.symbol AND c.interval = g.interval AND c.ts = g.gap_end
                        WHERE g.symbol = s.symbol AND g.interval = s.interval
                        AND g.gap_start = s.last_ts + st.step) AS continues
            FROM sync_state s LEFT JOIN steps st ON st.interval = s.interval
            WHERE {where}
            ORDER BY 1, 2
            """
        ).format(steps=_STEPS, where=where)
        states = await _fetch(self.conn, query, params)
        seen: set[StreamKey] = set()
        rows: list[dict[str, Any]] = []
        failed = warned = 0
        for s in states:
            key = StreamKey(s["symbol"], s["interval"])
            seen.add(key)
            f = self.facts.get(key, _KeyFacts())
            first, last = _ms(s["first_ts"]), _ms(s["last_ts"])
            problems: list[str] = []
            status: Status = "ok"
            if last is None:
                if f.count:
                    problems.append("no resume point although candles are stored")
                    status = "warn"
            else:
                if f.last_ms is None or last > f.last_ms:
                    problems.append("resume point beyond the data")
                    status = "fail"
                elif not s["last_present"]:
                    problems.append("no candle at the resume point")
                    status = "fail"
                elif s["continues"]:
                    problems.append("stale: candles continue right after the resume point")
                    status = "fail"
                if first is not None and not s["first_present"]:
                    problems.append("no candle at first_ts")
                    status = "fail"
                lo = first if first is not None else f.first_ms
                inside = [h for h in f.holes if lo is not None and h.start < last and h.end > lo]
                if inside:
                    problems.append(
                        f"{len(inside)} hole(s) inside the contiguous coverage, first at "
                        f"{format_ms(inside[0].start)}"
                    )
                    status = "fail"
                if (
                    status == "ok"
                    and first is not None
                    and f.first_ms is not None
                    and f.first_ms < first
                ):
                    problems.append("candles stored before first_ts")
                    status = "warn"
            failed += status == "fail"
            warned += status == "warn"
            rows.append(
                {
                    "symbol": key.symbol,
                    "interval": key.interval,
                    "first_ts_ms": first,
                    "last_ts_ms": last,
                    "data_last_ms": f.last_ms,
                    "status": status,
                    "problems": problems,
                }
            )
        for key in sorted(set(self.facts) - seen, key=lambda k: (k.symbol, k.interval)):
            f = self.facts[key]
            if f.count:
                warned += 1
                rows.append(
                    {
                        "symbol": key.symbol,
                        "interval": key.interval,
                        "first_ts_ms": None,
                        "last_ts_ms": None,
                        "data_last_ms": f.last_ms,
                        "status": "warn",
                        "problems": ["no sync_state row although candles are stored"],
                    }
                )
        cols = ("symbol", "interval", "first_ts_ms", "last_ts_ms", "data_last_ms", "problems")
        shown = [r for r in rows if r["status"] != "ok"]
        if failed:
            self.add(
                Check(
                    "resume",
                    "Resume points",
                    "fail",
                    f"{failed} of {len(rows)} disagree with the data",
                    cols,
                    shown,
                )
            )
        elif warned:
            self.add(
                Check(
                    "resume",
                    "Resume points",
                    "warn",
                    f"{warned} of {len(rows)} suspicious",
                    cols,
                    shown,
                )
            )
        else:
            self.add(
                Check(
                    "resume",
                    "Resume points",
                    "ok",
                    f"{len(rows)} agree with the data",
                    cols,
                    rows,
                )
            )

    # 5 -----------------------------------------------------------------------------------
    async def _duplicates(self) -> None:
        where, params = _key_filter(self.keys, "c")
        query = sql.SQL(
            "SELECT c.symbol, c.interval, c.ts, count(*) AS n FROM candlesticks c WHERE {}"
            " GROUP BY c.symbol, c.interval, c.ts HAVING count(*) > 1 ORDER BY 1, 2, 3 LIMIT {}"
        ).format(where, sql.Literal(MAX_EXAMPLES + 1))
        dups = await _fetch(self.conn, query, params)
        rows = [
            {
                "symbol": d["symbol"],
                "interval": d["interval"],
                "ts_ms": _ms(d["ts"]),
                "rows": d["n"],
            }
            for d in dups[:MAX_EXAMPLES]
        ]
        cols = ("symbol", "interval", "ts_ms", "rows")
        if rows:
            self.add(
                Check(
                    "duplicates",
                    "Duplicate keys",
                    "fail",
                    f"{len(rows)}{'+' if len(dups) > MAX_EXAMPLES else ''} duplicated keys",
                    cols,
                    rows,
                    truncated=len(dups) > MAX_EXAMPLES,
                )
            )
        else:
            self.add(Check("duplicates", "Duplicate keys", "ok", "none", cols, rows))

    # 6 -----------------------------------------------------------------------------------
    def _lag(
        self, thresholds: Mapping[StreamKey, int] | int | None, margin_ms: int, check_lag: bool
    ) -> None:
        now = self.report.now_ms
        rows: list[dict[str, Any]] = []
        bad = 0
        for key in sorted(self.facts, key=lambda k: (k.symbol, k.interval)):
            f = self.facts[key]
            if f.last_ms is None or key.interval not in INTERVALS:
                continue
            close = Interval(key.interval).close_time(f.last_ms)
            lag = now - close
            if isinstance(thresholds, int):
                limit = thresholds
            elif thresholds is not None and key in thresholds:
                limit = thresholds[key]
            else:
                limit = lag_threshold_ms(key.interval, margin_ms)
            if lag < -_FUTURE_TOLERANCE_MS:
                verdict = "candle not closed yet"
            elif lag > limit:
                verdict = "lagging"
            else:
                verdict = "ok"
            bad += verdict != "ok"
            rows.append(
                {
                    "symbol": key.symbol,
                    "interval": key.interval,
                    "last_close_ms": close,
                    "lag_s": round(lag / 1000, 3),
                    "threshold_s": round(limit / 1000, 3),
                    "status": verdict,
                }
            )
        cols = ("symbol", "interval", "last_close_ms", "lag_s", "threshold_s", "status")
        if not check_lag:
            self.add(Check("lag", "Live lag", "info", "not checked (--no-lag)", cols, rows))
        elif bad:
            self.add(
                Check(
                    "lag",
                    "Live lag",
                    "fail",
                    f"{bad} of {len(rows)} streams behind",
                    cols,
                    [r for r in rows if r["status"] != "ok"],
                )
            )
        else:
            self.add(Check("lag", "Live lag", "ok", f"{len(rows)} streams current", cols, rows))

    # 7 -----------------------------------------------------------------------------------
    def _continuity(self) -> None:
        rows: list[dict[str, Any]] = []
        for key in sorted(self.facts, key=lambda k: (k.symbol, k.interval)):
            for h in self.facts[key].holes:
                rows.append(
                    {
                        "symbol": key.symbol,
                        "interval": key.interval,
                        "start_ms": h.start,
                        "end_ms": h.end,
                        "candles": _candles(key.interval, h.start, h.end),
                    }
                )
        cols = ("symbol", "interval", "start_ms", "end_ms", "candles")
        if rows:
            missing = sum(r["candles"] or 0 for r in rows)
            self.add(
                Check(
                    "continuity",
                    "Continuity",
                    "fail",
                    f"{len(rows)}{'+' if self.holes_truncated else ''} holes,"
                    f" {missing} candles missing",
                    cols,
                    rows,
                    truncated=self.holes_truncated,
                )
            )
        else:
            self.add(
                Check(
                    "continuity",
                    "Continuity",
                    "ok",
                    "no holes outside recorded exchange gaps",
                    cols,
                    rows,
                )
            )

    def _exchange_gaps(self) -> None:
        rows = [
            {
                "symbol": r["symbol"],
                "interval": r["interval"],
                "start_ms": _ms(r["gap_start"]),
                "end_ms": _ms(r["gap_end"]),
                "candles": _candles(
                    r["interval"], _ms(r["gap_start"]) or 0, _ms(r["gap_end"]) or 0
                ),
                "checked_at_ms": _ms(r["checked_at"]),
            }
            for r in self.gap_rows
        ]
        cols = ("symbol", "interval", "start_ms", "end_ms", "candles", "checked_at_ms")
        summary = f"{len(rows)} ranges where Binance has no candles" if rows else "none recorded"
        self.add(Check("exchange_gaps", "Exchange gaps", "info", summary, cols, rows))

    # 8 -----------------------------------------------------------------------------------
    async def _values(self) -> None:
        total = sum(f.bad_values for f in self.facts.values())
        cols = ("symbol", "interval", "ts_ms", "problems")
        if not total:
            self.add(Check("values", "Values", "ok", "all candles pass the value checks", cols))
            return
        where, params = _key_filter(self.keys, "c")
        query = sql.SQL(
            """
            WITH {steps}
            SELECT c.symbol, c.interval, c.ts, {problems} AS problems
            FROM candlesticks c LEFT JOIN steps st ON st.interval = c.interval
            WHERE {where} AND ({bad})
            ORDER BY 1, 2, 3 LIMIT {limit}
            """
        ).format(
            steps=_STEPS,
            problems=_PROBLEM_ARRAY,
            where=where,
            bad=_ANY_PROBLEM,
            limit=sql.Literal(MAX_EXAMPLES),
        )
        rows = [
            {
                "symbol": r["symbol"],
                "interval": r["interval"],
                "ts_ms": _ms(r["ts"]),
                "problems": list(r["problems"]),
            }
            for r in await _fetch(self.conn, query, params)
        ]
        self.add(
            Check(
                "values",
                "Values",
                "fail",
                f"{total} candles with impossible values",
                cols,
                rows,
                truncated=total > len(rows),
            )
        )

    # 9 -----------------------------------------------------------------------------------
    async def _failed_ranges(self) -> None:
        where, params = _key_filter(self.keys, "f")
        query = sql.SQL(
            "SELECT f.symbol, f.interval, f.range_start, f.range_end, f.reason, f.attempts,"
            " f.last_failed_at FROM failed_ranges f WHERE {} ORDER BY 1, 2, 3"
        ).format(where)
        rows = [
            {
                "symbol": r["symbol"],
                "interval": r["interval"],
                "start_ms": _ms(r["range_start"]),
                "end_ms": _ms(r["range_end"]),
                "reason": r["reason"],
                "attempts": r["attempts"],
                "last_failed_ms": _ms(r["last_failed_at"]),
            }
            for r in await _fetch(self.conn, query, params)
        ]
        cols = ("symbol", "interval", "start_ms", "end_ms", "reason", "attempts", "last_failed_ms")
        if rows:
            self.add(
                Check(
                    "failed_ranges",
                    "Failed ranges",
                    "fail",
                    f"{len(rows)} ranges could not be ingested (run `qryptify repair`)",
                    cols,
                    rows,
                )
            )
        else:
            self.add(Check("failed_ranges", "Failed ranges", "ok", "none", cols, rows))

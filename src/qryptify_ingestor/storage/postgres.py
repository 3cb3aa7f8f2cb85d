"""PostgreSQL/TimescaleDB adapter: the only module that talks psycopg.

Owns the connection pool, the idempotent candle writer, the resume points (`sync_state`) and the
bookkeeping tables (`exchange_gaps`, `failed_ranges`). psycopg errors are translated here, once:
connection trouble becomes `DatabaseUnavailable` (retryable), bad credentials or a missing
database become `ConfigError`, anything else propagates unchanged. No message carries the DSN's
password (`mask_dsn`).

Writing a batch is one transaction: text COPY into a per-connection TEMP staging table, one
`INSERT … SELECT … ON CONFLICT DO UPDATE … WHERE values differ` (TimescaleDB rejects MERGE on a
columnstore hypertable, and a plain COPY of a duplicate key fails), the `sync_state` advances,
and a `NOTIFY candles` per key that changed. Idempotency lives in SQL: replaying a batch changes
nothing and returns 0.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from qryptify_ingestor.domain import Candle, StreamKey
from qryptify_ingestor.errors import ConfigError, DatabaseUnavailable
from qryptify_ingestor.observe import NULL_OBSERVER, Observer
from qryptify_ingestor.storage.migrations import SchemaInfo, apply_migrations, schema_info

# TimescaleDB: one DML transaction may decompress at most 100 000 rows from compressed chunks
# (timescaledb.max_tuples_decompressed_per_dml_transaction), and an upsert decompresses the whole
# compressed batch (up to 1000 rows of one segment) it touches. Half the limit leaves room for
# that rounding; the backfill writer groups pages well below it.
MAX_WRITE_ROWS = 50_000


# --- DSN masking -----------------------------------------------------------------------------

_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """`dsn` with any password replaced by `***` (URL userinfo, `?password=`, or key=value)."""
    if "://" not in dsn:
        return _KV_PASSWORD.sub(r"\1***", dsn)
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_location(dsn: str) -> str:
    """`host:port/dbname` of a DSN, for messages (never the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return mask_dsn(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = params.get("dbname")
    return f"{host}:{port}" + (f"/{dbname}" if dbname else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# SQLSTATE classes that retrying cannot fix: 28 (bad credentials), 3D000 (no such database).
_AUTH_PATTERNS = ("password authentication failed", "authentication failed", "no password")


def _connect_error(dsn: str, exc: psycopg.OperationalError) -> Exception:
    where = dsn_location(dsn)
    text = str(exc)
    state = exc.sqlstate or ""
    if state.startswith("28") or any(p in text for p in _AUTH_PATTERNS):
        return ConfigError(f"database {where}: authentication failed ({_first_line(exc)})")
    if state == "3D000" or re.search(r'database ".*" does not exist', text):
        return ConfigError(f"database {where}: {_first_line(exc)}")
    return DatabaseUnavailable(f"database {where} unreachable: {_first_line(exc)}")


# --- value objects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advance:
    """ "If the stored contiguous coverage reaches `prev_last_ms` (or there is none and
    `prev_last_ms` is None), it now reaches `new_last_ms`." Applied with the candles it covers."""

    key: StreamKey
    prev_last_ms: int | None
    new_last_ms: int
    first_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SyncState:
    """A `sync_state` row: coverage start, resume point, listing time (epoch ms or None)."""

    key: StreamKey
    first_ms: int | None
    last_ms: int | None
    listing_ms: int | None


@dataclass(frozen=True, slots=True)
class ExchangeGap:
    """[start_ms, end_ms) for which Binance has no candles; `checked_at_ms` last confirmed."""

    key: StreamKey
    start_ms: int
    end_ms: int
    checked_at_ms: int


@dataclass(frozen=True, slots=True)
class FailedRange:
    """A range whose payloads stayed malformed; retried by `repair`."""

    key: StreamKey
    start_ms: int
    end_ms: int
    reason: str
    attempts: int
    last_failed_at_ms: int


@dataclass(frozen=True, slots=True)
class StatusRow:
    """Per (symbol, interval): what is stored, where sync resumes, and what is outstanding."""

    key: StreamKey
    first_ms: int | None  # first stored candle
    last_ms: int | None  # last stored candle (max open time)
    count: int  # stored candles
    resume_ms: int | None  # sync_state.last_ts: end of contiguous coverage
    coverage_first_ms: int | None  # sync_state.first_ts
    listing_ms: int | None
    updated_at_ms: int | None  # last sync_state change
    gaps: int  # recorded exchange gaps
    failed: int  # recorded failed ranges


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """`status_report()`: schema version, storage mode, database clock and the per-key rows."""

    schema_version: int
    timescaledb: bool
    db_now_ms: int
    rows: list[StatusRow]


# --- SQL -------------------------------------------------------------------------------------


def _ts(expr: str) -> str:
    """SQL: epoch ms (bigint) -> timestamptz, exact (integer microseconds, no time zone)."""
    return f"('epoch'::timestamptz + ({expr})::bigint * INTERVAL '1 millisecond')"


def _ms(expr: str) -> str:
    """SQL: timestamptz -> epoch ms (extract returns numeric since PG 14: exact)."""
    return f"(extract(epoch FROM {expr}) * 1000)::bigint"


_STAGE = "pg_temp.qryptify_candle_stage"
# Created once per pooled connection (configure callback), emptied by every commit. Times stay
# epoch ms here and become timestamptz in the merge, so Python builds no datetime per row.
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS qryptify_candle_stage (
    symbol text, "interval" text, open_ms bigint,
    open numeric, high numeric, low numeric, close numeric, volume numeric,
    close_ms bigint, quote_volume numeric, trades bigint,
    taker_buy_base numeric, taker_buy_quote numeric
) ON COMMIT DELETE ROWS
"""
# Text COPY: one string built with %-formatting (C speed, no per-row await) is about twice as
# fast as psycopg's per-row binary `write_row`, and exact: str(Decimal) keeps every digit and
# trailing zero ('43123.40'), and PostgreSQL's numeric input keeps the scale of exponent forms
# too ('1E-8' -> 0.00000001, '0E-8' -> 0.00000000). Text COPY needs symbol and interval free of
# tab, newline and backslash; `_check_text_safe` makes sure.
_COPY_STAGE = f"COPY {_STAGE} FROM STDIN"
_ROW_FORMAT = "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n"
# Candle fields in staging-column order; attrgetter builds each row tuple in C.
_ROW = attrgetter(
    "symbol", "interval", "open_time", "open", "high", "low", "close", "volume",
    "close_time", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote",
)  # fmt: skip
_UNSAFE_TEXT = re.compile(r"[\t\n\r\\]")


def _check_text_safe(keys: set[tuple[str, str]]) -> None:
    for symbol, interval in keys:
        if _UNSAFE_TEXT.search(symbol) or _UNSAFE_TEXT.search(interval):
            raise ValueError(f"refusing to write candles for {symbol!r} {interval!r}")


_VALUES = (
    "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote",
)  # fmt: skip
# Numeric equality (43123.4 = 43123.40): a re-send that differs only in trailing zeros is not
# a change, the stored text stays as first written.
# After each commit of changed candles, one NOTIFY per (symbol, interval) on this channel
# (configurable: live.notify_channel) with {"symbol", "interval", "ts", "first_ts", "count"}.
DEFAULT_NOTIFY_CHANNEL = "candles"

_MERGE = f"""
WITH merged AS (
    INSERT INTO candlesticks AS c (symbol, "interval", ts, {", ".join(_VALUES)})
    SELECT symbol, "interval", {_ts("open_ms")}, open, high, low, close, volume,
           {_ts("close_ms")}, quote_volume, trades, taker_buy_base, taker_buy_quote
    FROM {_STAGE}
    ON CONFLICT (symbol, "interval", ts) DO UPDATE
    SET {", ".join(f"{v} = EXCLUDED.{v}" for v in _VALUES)}
    WHERE ({", ".join(f"c.{v}" for v in _VALUES)})
          IS DISTINCT FROM ({", ".join(f"EXCLUDED.{v}" for v in _VALUES)})
    RETURNING c.symbol, c."interval", c.ts
), per_key AS (
    SELECT symbol, "interval", count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts
    FROM merged GROUP BY symbol, "interval"
)
SELECT n, pg_notify(%(channel)s, json_build_object(
           'symbol', symbol, 'interval', "interval", 'ts', {_ms("last_ts")},
           'first_ts', {_ms("first_ts")}, 'count', n)::text)
FROM per_key
"""  # noqa: S608 -- only constants are interpolated; values travel as COPY data

# The resume point moves forward only over contiguous candles. The UPDATE re-checks its WHERE
# on the newest row version when a concurrent writer got there first (READ COMMITTED), so
# out-of-order writers never move it past a hole; the INSERT covers a key seen for the first
# time, and only for a writer that starts from nothing (prev None).
_ADVANCE = f"""
WITH moved AS (
    UPDATE sync_state AS s
    SET last_ts = {_ts("%(new)s")},
        first_ts = coalesce(s.first_ts, {_ts("%(first)s")}),
        updated_at = now()
    WHERE s.symbol = %(symbol)s AND s."interval" = %(interval)s
      AND CASE WHEN s.last_ts IS NULL THEN %(prev)s::bigint IS NULL
               ELSE s.last_ts >= {_ts("%(prev)s")} AND s.last_ts < {_ts("%(new)s")} END
    RETURNING 1
)
INSERT INTO sync_state AS s (symbol, "interval", first_ts, last_ts)
SELECT %(symbol)s, %(interval)s, {_ts("%(first)s")}, {_ts("%(new)s")}
WHERE %(prev)s::bigint IS NULL AND NOT EXISTS (SELECT FROM moved)
ON CONFLICT (symbol, "interval") DO UPDATE
SET last_ts = EXCLUDED.last_ts, first_ts = coalesce(s.first_ts, EXCLUDED.first_ts),
    updated_at = now()
WHERE s.last_ts IS NULL
"""  # noqa: S608 -- constants only

_SYNC_COLUMNS = f'symbol, "interval", {_ms("first_ts")}, {_ms("last_ts")}, {_ms("listing_ts")}'

_STATUS = f"""
WITH c AS (
    SELECT symbol, "interval", min(ts) AS first_ts, max(ts) AS last_ts, count(*) AS n
    FROM candlesticks GROUP BY symbol, "interval"
), g AS (
    SELECT symbol, "interval", count(*) AS n FROM exchange_gaps GROUP BY symbol, "interval"
), f AS (
    SELECT symbol, "interval", count(*) AS n FROM failed_ranges GROUP BY symbol, "interval"
), k AS (
    SELECT symbol, "interval" FROM c UNION SELECT symbol, "interval" FROM sync_state
)
SELECT k.symbol, k."interval", {_ms("c.first_ts")}, {_ms("c.last_ts")}, coalesce(c.n, 0),
       {_ms("s.last_ts")}, {_ms("s.first_ts")}, {_ms("s.listing_ts")}, {_ms("s.updated_at")},
       coalesce(g.n, 0), coalesce(f.n, 0)
FROM k
LEFT JOIN c USING (symbol, "interval")
LEFT JOIN sync_state s USING (symbol, "interval")
LEFT JOIN g USING (symbol, "interval")
LEFT JOIN f USING (symbol, "interval")
ORDER BY k.symbol, k."interval"
"""  # noqa: S608 -- constants only


async def _configure(conn: AsyncConnection[Any]) -> None:
    # The staging table does not depend on the schema, so it can exist before migrate().
    await conn.execute(_CREATE_STAGE)


class Storage:
    """The database, as the service sees it. Create with `await Storage.open(dsn)`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        dsn: str,
        observer: Observer,
        notify_channel: str = DEFAULT_NOTIFY_CHANNEL,
    ) -> None:
        self._pool = pool
        self._channel = notify_channel
        self._where = dsn_location(dsn)
        self._observer = observer

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 10.0,
        connect_timeout_s: int = 5,
        observer: Observer = NULL_OBSERVER,
        notify_channel: str = DEFAULT_NOTIFY_CHANNEL,
    ) -> Self:
        """Connect (failing fast with `DatabaseUnavailable`/`ConfigError`) and open the pool.

        `timeout_s` bounds how long a call waits for a connection while the database is down
        before it raises `DatabaseUnavailable`.
        """
        # One direct connection first: the pool would retry bad credentials until its timeout
        # and then report only "couldn't get a connection".
        try:
            probe = await psycopg.AsyncConnection.connect(dsn, connect_timeout=connect_timeout_s)
        except psycopg.OperationalError as exc:
            raise _connect_error(dsn, exc) from exc
        await probe.close()
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s},
            configure=_configure,
            # Validate an idle connection before handing it out: after a server restart the
            # pool discards the dead ones and reconnects instead of failing one call each.
            check=AsyncConnectionPool.check_connection,
            timeout=timeout_s,
            name="qryptify",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except psycopg.OperationalError as exc:
            await pool.close()
            raise DatabaseUnavailable(
                f"database {dsn_location(dsn)} unreachable: {_first_line(exc)}"
            ) from exc
        return cls(pool, dsn, observer, notify_channel)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            if exc.sqlstate == "53400":
                # configuration_limit_exceeded, e.g. TimescaleDB's decompression limit: a batch
                # too large for the settings, which no retry fixes.
                raise
            raise DatabaseUnavailable(
                f"database {self._where} unavailable while {doing}: {_first_line(exc)}"
            ) from exc

    # --- schema ------------------------------------------------------------------------------

    async def migrate(self) -> SchemaInfo:
        """Apply pending migrations (locked, idempotent); say whether TimescaleDB is in use."""
        with self._errors("migrating"):
            async with self._pool.connection() as conn:
                return await apply_migrations(conn)

    async def schema_info(self) -> SchemaInfo:
        with self._errors("reading the schema version"):
            async with self._pool.connection() as conn:
                return await schema_info(conn)

    # --- candles -----------------------------------------------------------------------------

    async def write_candles(
        self, candles: Sequence[Candle], advances: Sequence[Advance] = ()
    ) -> int:
        """Upsert `candles` and apply `advances` in one transaction; rows inserted or changed.

        Keys may repeat within the batch (the last one wins) and may span several streams.
        At most MAX_WRITE_ROWS candles (the TimescaleDB decompression limit, see above).
        """
        if len(candles) > MAX_WRITE_ROWS:
            raise ValueError(f"{len(candles)} candles in one write; the limit is {MAX_WRITE_ROWS}")
        # ON CONFLICT DO UPDATE refuses to touch one row twice in a statement: keep the last.
        unique = {(c.symbol, c.interval, c.open_time): c for c in candles}
        _check_text_safe({k[:2] for k in unique})
        data = "".join([_ROW_FORMAT % _ROW(c) for c in unique.values()]).encode()
        started = time.perf_counter()
        changed = 0
        with self._errors("writing candles"):
            async with self._pool.connection() as conn, conn.transaction():
                cur = conn.cursor()
                if unique:
                    async with cur.copy(_COPY_STAGE) as copy:
                        await copy.write(data)
                    await cur.execute(_MERGE, {"channel": self._channel}, prepare=True)
                    changed = sum(n for n, _ in await cur.fetchall())
                if advances:
                    await cur.executemany(_ADVANCE, [_advance_params(a) for a in advances])
        self._observer.db_write(time.perf_counter() - started, changed)
        return changed

    async def fetch_candles(self, key: StreamKey, start_ms: int, end_ms: int) -> list[Candle]:
        """Stored candles of `key` opening in [start_ms, end_ms), oldest first."""
        query = f"""
            SELECT symbol, "interval", {_ms("ts")}, open, high, low, close, volume,
                   {_ms("close_time")}, quote_volume, trades, taker_buy_base, taker_buy_quote
            FROM candlesticks
            WHERE symbol = %s AND "interval" = %s AND ts >= {_ts("%s")} AND ts < {_ts("%s")}
            ORDER BY ts
        """  # noqa: S608 -- constants only
        with self._errors("reading candles"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, (key.symbol, key.interval, start_ms, end_ms))
                return [Candle(*row) for row in await cur.fetchall()]

    # --- sync_state --------------------------------------------------------------------------

    async def sync_state(self, key: StreamKey) -> SyncState | None:
        with self._errors("reading sync_state"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    f'SELECT {_SYNC_COLUMNS} FROM sync_state WHERE symbol = %s AND "interval" = %s',  # noqa: S608
                    (key.symbol, key.interval),
                )
                row = await cur.fetchone()
        return None if row is None else _sync_state(row)

    async def sync_states(self) -> dict[StreamKey, SyncState]:
        with self._errors("reading sync_state"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(f"SELECT {_SYNC_COLUMNS} FROM sync_state")  # noqa: S608
                rows = await cur.fetchall()
        states = (_sync_state(r) for r in rows)
        return {s.key: s for s in states}

    async def set_listing(self, key: StreamKey, listing_ms: int) -> None:
        """Record the first candle Binance has for `key` (found by backfill)."""
        with self._errors("writing sync_state"):
            async with self._pool.connection() as conn:
                await conn.execute(
                    f"""INSERT INTO sync_state AS s (symbol, "interval", listing_ts)
                        VALUES (%s, %s, {_ts("%s")})
                        ON CONFLICT (symbol, "interval") DO UPDATE
                        SET listing_ts = EXCLUDED.listing_ts, updated_at = now()
                        WHERE s.listing_ts IS DISTINCT FROM EXCLUDED.listing_ts""",  # noqa: S608
                    (key.symbol, key.interval, listing_ms),
                )

    # --- exchange gaps and failed ranges -----------------------------------------------------

    async def record_exchange_gap(self, key: StreamKey, start_ms: int, end_ms: int) -> None:
        """Record [start_ms, end_ms) as a hole in Binance's own data; re-recording refreshes
        `checked_at`."""
        with self._errors("recording an exchange gap"):
            async with self._pool.connection() as conn:
                await conn.execute(
                    f"""INSERT INTO exchange_gaps (symbol, "interval", gap_start, gap_end)
                        VALUES (%s, %s, {_ts("%s")}, {_ts("%s")})
                        ON CONFLICT (symbol, "interval", gap_start) DO UPDATE
                        SET gap_end = EXCLUDED.gap_end, checked_at = now()""",  # noqa: S608
                    (key.symbol, key.interval, start_ms, end_ms),
                )

    async def delete_exchange_gap(self, key: StreamKey, start_ms: int) -> bool:
        """Forget a recorded gap (Binance back-filled it); True when one was deleted."""
        with self._errors("deleting an exchange gap"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    f"""DELETE FROM exchange_gaps
                        WHERE symbol = %s AND "interval" = %s AND gap_start = {_ts("%s")}""",  # noqa: S608
                    (key.symbol, key.interval, start_ms),
                )
                return cur.rowcount > 0

    async def exchange_gaps(self, key: StreamKey | None = None) -> list[ExchangeGap]:
        query = f"""SELECT symbol, "interval", {_ms("gap_start")}, {_ms("gap_end")},
                           {_ms("checked_at")}
                    FROM exchange_gaps
                    WHERE %(symbol)s::text IS NULL
                       OR (symbol = %(symbol)s AND "interval" = %(interval)s)
                    ORDER BY symbol, "interval", gap_start"""  # noqa: S608
        params = {
            "symbol": key.symbol if key else None,
            "interval": key.interval if key else None,
        }
        with self._errors("reading exchange gaps"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                rows = await cur.fetchall()
        return [ExchangeGap(StreamKey(r[0], r[1]), r[2], r[3], r[4]) for r in rows]

    async def record_failed_range(
        self, key: StreamKey, start_ms: int, end_ms: int, reason: str
    ) -> None:
        """Record a range whose payloads stayed malformed; again counts another attempt."""
        with self._errors("recording a failed range"):
            async with self._pool.connection() as conn:
                await conn.execute(
                    f"""INSERT INTO failed_ranges AS f
                            (symbol, "interval", range_start, range_end, reason)
                        VALUES (%s, %s, {_ts("%s")}, {_ts("%s")}, %s)
                        ON CONFLICT (symbol, "interval", range_start) DO UPDATE
                        SET range_end = EXCLUDED.range_end, reason = EXCLUDED.reason,
                            attempts = f.attempts + 1, last_failed_at = now()""",  # noqa: S608
                    (key.symbol, key.interval, start_ms, end_ms, reason),
                )

    async def clear_failed_range(self, key: StreamKey, start_ms: int) -> bool:
        """Forget the failed range of `key` starting at `start_ms`; True if there was one."""
        with self._errors("clearing a failed range"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    f"""DELETE FROM failed_ranges
                        WHERE symbol = %s AND "interval" = %s AND range_start = {_ts("%s")}""",  # noqa: S608
                    (key.symbol, key.interval, start_ms),
                )
                return cur.rowcount > 0

    async def failed_ranges(self) -> list[FailedRange]:
        query = f"""SELECT symbol, "interval", {_ms("range_start")}, {_ms("range_end")}, reason,
                           attempts, {_ms("last_failed_at")}
                    FROM failed_ranges ORDER BY symbol, "interval", range_start"""  # noqa: S608
        with self._errors("reading failed ranges"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(query)
                rows = await cur.fetchall()
        return [FailedRange(StreamKey(r[0], r[1]), *r[2:]) for r in rows]

    # --- status ------------------------------------------------------------------------------

    async def status_rows(self) -> list[StatusRow]:
        """One row per (symbol, interval) seen in candlesticks or sync_state."""
        return (await self.status_report()).rows

    async def status_report(self) -> StorageStatus:
        """Schema version, storage mode, database clock and `status_rows`, for `qryptify status`."""
        with self._errors("reading status"):
            async with self._pool.connection() as conn:
                info = await schema_info(conn)
                cur = await conn.execute(f"SELECT {_ms('now()')}")
                now_row = await cur.fetchone()
                cur = await conn.execute(_STATUS)
                rows = await cur.fetchall()
        return StorageStatus(
            schema_version=info.version,
            timescaledb=info.timescaledb,
            db_now_ms=int(now_row[0]) if now_row else 0,
            rows=[StatusRow(StreamKey(r[0], r[1]), *r[2:]) for r in rows],
        )


def _advance_params(a: Advance) -> dict[str, object]:
    return {
        "symbol": a.key.symbol,
        "interval": a.key.interval,
        "prev": a.prev_last_ms,
        "new": a.new_last_ms,
        "first": a.first_ms,
    }


def _sync_state(row: tuple[Any, ...]) -> SyncState:
    return SyncState(StreamKey(row[0], row[1]), row[2], row[3], row[4])

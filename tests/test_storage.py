"""Storage against real PostgreSQL clusters, plain and TimescaleDB (tests/pg_plugin.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import psycopg
import pytest

from qryptify_ingestor.domain import Candle, Interval, StreamKey
from qryptify_ingestor.errors import ConfigError, DatabaseUnavailable
from qryptify_ingestor.storage import MAX_WRITE_ROWS, Advance, Storage, mask_dsn
from tests.pg_plugin import PgCluster

BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1m")
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
M = 60_000


def candle(key: StreamKey, open_ms: int, close: str = "43123.40", **values: str) -> Candle:
    """A valid candle of `key` opening at `open_ms`; decimal fields given as strings."""
    d = {
        "open": "43100.10",
        "high": "43200.00",
        "low": "43000.0",
        "close": close,
        "volume": "12.345",
        "quote_volume": "532000.50",
        "taker_buy_base": "6.000",
        "taker_buy_quote": "266000.25",
    } | values
    return Candle(
        symbol=key.symbol,
        interval=key.interval,
        open_time=open_ms,
        close_time=Interval(key.interval).close_time(open_ms),
        trades=int(d.pop("trades", "1234")),
        **{k: Decimal(v) for k, v in d.items()},
    )


def run(key: StreamKey, first: int, count: int, close: str = "43123.40") -> list[Candle]:
    return [candle(key, first + i * M, close) for i in range(count)]


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    store = await Storage.open(database_url, timeout_s=5)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def last_ms(storage: Storage, key: StreamKey) -> int | None:
    state = await storage.sync_state(key)
    return None if state is None else state.last_ms


# --- writing candles -------------------------------------------------------------------------


async def test_decimals_round_trip_exactly(storage: Storage) -> None:
    """Decimal strings read back identical: trailing zeros, zero, 20+ significant digits."""
    tricky = candle(
        BTC,
        T0,
        close="43123.40",
        open="0.00000000",
        high="12345678901234567890.123456789012345",
        low="0.000000000000000000000001",
        volume="100.000000000000000000",
        quote_volume="98765432109876543210987654321",
        taker_buy_base="1.10",
        taker_buy_quote="0",
        trades="9223372036854775807",
    )
    assert await storage.write_candles([tricky]) == 1
    [back] = await storage.fetch_candles(BTC, T0, T0 + M)
    assert back == tricky
    for field in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base"):
        assert str(getattr(back, field)) == str(getattr(tricky, field)), field


async def test_rewrite_is_idempotent_and_changes_update(storage: Storage) -> None:
    """Replaying a batch changes nothing (0); a changed value is updated (1)."""
    batch = run(BTC, T0, 5)
    assert await storage.write_candles(batch) == 5
    assert await storage.write_candles(batch) == 0
    changed = [*batch[:2], candle(BTC, T0 + 2 * M, close="1.5"), *batch[3:]]
    assert await storage.write_candles(changed) == 1
    assert await storage.fetch_candles(BTC, T0, T0 + 5 * M) == changed


async def test_duplicate_keys_in_one_batch_keep_the_last(storage: Storage) -> None:
    """A key repeated within one batch is written once, with its last value."""
    batch = [candle(BTC, T0, close="1"), candle(BTC, T0 + M), candle(BTC, T0, close="2")]
    assert await storage.write_candles(batch) == 2
    first, _ = await storage.fetch_candles(BTC, T0, T0 + 2 * M)
    assert first.close == Decimal("2")


async def test_one_batch_spans_several_keys(storage: Storage) -> None:
    """One write holds candles and advances of several streams; status counts them per key."""
    batch = run(BTC, T0, 3) + run(ETH, T0, 4)
    advances = [Advance(BTC, None, T0 + 2 * M, T0), Advance(ETH, None, T0 + 3 * M, T0)]
    assert await storage.write_candles(batch, advances) == 7
    states = await storage.sync_states()
    assert states[BTC].last_ms == T0 + 2 * M
    assert states[ETH].first_ms == T0
    assert states[ETH].last_ms == T0 + 3 * M
    report = await storage.status_report()
    assert report.schema_version >= 2
    by_key = {r.key: r for r in report.rows}
    assert by_key[ETH].count == 4
    assert (by_key[ETH].first_ms, by_key[ETH].last_ms) == (T0, T0 + 3 * M)
    assert by_key[BTC].resume_ms == T0 + 2 * M
    assert report.db_now_ms > T0


async def test_oversized_or_unsafe_batches_are_refused(storage: Storage) -> None:
    """Batches over MAX_WRITE_ROWS or with text COPY control characters in a key are refused."""
    too_many = [candle(BTC, T0)] * (MAX_WRITE_ROWS + 1)
    with pytest.raises(ValueError, match="limit"):
        await storage.write_candles(too_many)
    with pytest.raises(ValueError, match="refusing"):
        await storage.write_candles([candle(StreamKey("BTC\tUSDT", "1m"), T0)])


# --- the resume point ------------------------------------------------------------------------


async def test_advance_moves_only_over_contiguous_candles(storage: Storage) -> None:
    """The resume point moves from nothing, then only from where it is; a gap leaves it."""
    await storage.write_candles(run(BTC, T0, 3), [Advance(BTC, None, T0 + 2 * M, T0)])
    assert await last_ms(storage, BTC) == T0 + 2 * M
    # Written after a hole (T0+3..T0+5 missing): stored, but the resume point stays.
    await storage.write_candles(run(BTC, T0 + 6 * M, 2), [Advance(BTC, T0 + 5 * M, T0 + 7 * M)])
    assert await last_ms(storage, BTC) == T0 + 2 * M
    # A second "from nothing" writer cannot reset it either.
    await storage.write_candles([], [Advance(BTC, None, T0 + 9 * M, T0)])
    assert await last_ms(storage, BTC) == T0 + 2 * M
    # Filling the hole moves it; the next contiguous step too.
    await storage.write_candles(run(BTC, T0 + 3 * M, 3), [Advance(BTC, T0 + 2 * M, T0 + 5 * M)])
    await storage.write_candles([], [Advance(BTC, T0 + 5 * M, T0 + 7 * M)])
    state = await storage.sync_state(BTC)
    assert state is not None
    assert (state.first_ms, state.last_ms) == (T0, T0 + 7 * M)


async def test_advance_never_moves_backwards(storage: Storage) -> None:
    """A stale writer whose range ends before the resume point does not pull it back."""
    await storage.write_candles(run(BTC, T0, 6), [Advance(BTC, None, T0 + 5 * M, T0)])
    await storage.write_candles(run(BTC, T0 + M, 2), [Advance(BTC, T0, T0 + 2 * M)])
    assert await last_ms(storage, BTC) == T0 + 5 * M


async def test_advance_without_coverage_needs_prev_none(storage: Storage) -> None:
    """With no sync_state, only a writer starting from nothing (prev None) creates coverage."""
    await storage.write_candles(run(BTC, T0 + M, 1), [Advance(BTC, T0, T0 + M)])
    assert await last_ms(storage, BTC) is None
    await storage.set_listing(BTC, T0)  # a row without coverage
    await storage.write_candles(run(BTC, T0, 1), [Advance(BTC, None, T0, T0)])
    state = await storage.sync_state(BTC)
    assert state is not None
    assert (state.first_ms, state.last_ms, state.listing_ms) == (T0, T0, T0)


async def test_out_of_order_writers_never_skip_a_hole(storage: Storage) -> None:
    """Pages applied in reverse or concurrently leave the resume point on a contiguous prefix."""
    pages = [(T0 + i * 10 * M, run(BTC, T0 + i * 10 * M, 10)) for i in range(6)]

    def advance(i: int) -> Advance:
        prev = None if i == 0 else pages[i][0] - M
        return Advance(BTC, prev, pages[i][0] + 9 * M, T0)

    for i in reversed(range(3)):
        await storage.write_candles(pages[i][1], [advance(i)])
    assert await last_ms(storage, BTC) == T0 + 9 * M  # only page 0 applied
    await asyncio.gather(*(storage.write_candles(pages[i][1], [advance(i)]) for i in range(1, 6)))
    final = await last_ms(storage, BTC)
    assert final is not None
    assert final in {T0 + (10 * i + 9) * M for i in range(6)}
    stored = await storage.fetch_candles(BTC, T0, final + M)
    assert [c.open_time for c in stored] == list(range(T0, final + M, M))
    # Replaying the pages in order always completes the coverage.
    for i in range(6):
        await storage.write_candles(pages[i][1], [advance(i)])
    assert await last_ms(storage, BTC) == T0 + 59 * M


# --- NOTIFY ----------------------------------------------------------------------------------


async def test_notify_per_written_key_after_commit(storage: Storage, database_url: str) -> None:
    """A LISTENing connection gets one `candles` notification per changed key, none on replay."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN candles")
        batch = run(BTC, T0, 3) + run(ETH, T0, 2)
        await storage.write_candles(batch)
        got = [orjson.loads(n.payload) async for n in listener.notifies(timeout=5, stop_after=2)]
        assert sorted(got, key=lambda p: p["symbol"]) == [
            {"symbol": "BTCUSDT", "interval": "1m", "ts": T0 + 2 * M, "first_ts": T0, "count": 3},
            {"symbol": "ETHUSDT", "interval": "1m", "ts": T0 + M, "first_ts": T0, "count": 2},
        ]
        await storage.write_candles(batch)  # nothing changed: nothing to announce
        assert [n async for n in listener.notifies(timeout=0.3)] == []


# --- bookkeeping tables ----------------------------------------------------------------------


async def test_exchange_gaps_and_failed_ranges(storage: Storage) -> None:
    """Gaps are recorded once (re-recording refreshes them); failed ranges count attempts."""
    await storage.record_exchange_gap(BTC, T0, T0 + 5 * M)
    await storage.record_exchange_gap(BTC, T0, T0 + 5 * M)
    await storage.record_exchange_gap(ETH, T0, T0 + M)
    gaps = await storage.exchange_gaps(BTC)
    assert [(g.start_ms, g.end_ms) for g in gaps] == [(T0, T0 + 5 * M)]
    assert len(await storage.exchange_gaps()) == 2

    await storage.record_failed_range(BTC, T0, T0 + M, "bad row")
    await storage.record_failed_range(BTC, T0, T0 + M, "still bad")
    [failed] = await storage.failed_ranges()
    assert (failed.attempts, failed.reason, failed.end_ms) == (2, "still bad", T0 + M)
    [row] = await storage.status_rows() or [None]
    assert row is None or (row.gaps, row.failed) == (1, 1)
    assert await storage.clear_failed_range(BTC, T0) is True
    assert await storage.clear_failed_range(BTC, T0) is False
    assert await storage.failed_ranges() == []


# --- schema modes ----------------------------------------------------------------------------


async def test_migrate_reports_the_mode(database_url: str, db_mode: str) -> None:
    """migrate() returns the schema version and whether TimescaleDB is in use."""
    async with await Storage.open(database_url) as store:
        info = await store.migrate()
        assert info.version == 2
        assert info.timescaledb is (db_mode == "timescaledb")
        assert await store.schema_info() == info


async def test_plain_mode_has_no_timescaledb(plain_database_url: str) -> None:
    """On plain PostgreSQL, 002 is a no-op: no extension, candlesticks a plain table."""
    async with await Storage.open(plain_database_url) as store:
        assert (await store.migrate()).timescaledb is False
    async with await psycopg.AsyncConnection.connect(plain_database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("SELECT relkind FROM pg_class WHERE relname = 'candlesticks'")
        assert await cur.fetchone() == ("r",)


@pytest.fixture
async def ts_storage(timescaledb_database_url: str) -> AsyncIterator[Storage]:
    store = await Storage.open(timescaledb_database_url, timeout_s=5)
    assert (await store.migrate()).timescaledb
    try:
        yield store
    finally:
        await store.close()


async def test_timescaledb_hypertable_columnstore_and_policy(
    ts_storage: Storage, timescaledb_database_url: str
) -> None:
    """TimescaleDB mode: hypertable on ts, columnstore by (symbol, interval)/ts, 42-day policy."""
    async with await psycopg.AsyncConnection.connect(timescaledb_database_url) as conn:
        cur = await conn.execute(
            """SELECT d.column_name, d.time_interval::text
               FROM timescaledb_information.dimensions d WHERE d.hypertable_name = 'candlesticks'"""
        )
        assert await cur.fetchall() == [("ts", "7 days")]
        cur = await conn.execute(
            """SELECT segmentby, orderby
               FROM timescaledb_information.hypertable_columnstore_settings
               WHERE hypertable = 'candlesticks'::regclass"""
        )
        assert await cur.fetchall() == [("symbol,interval", "ts")]
        cur = await conn.execute(
            """SELECT config->>'compress_after' FROM timescaledb_information.jobs
               WHERE hypertable_name = 'candlesticks' AND proc_name = 'policy_compression'"""
        )
        assert await cur.fetchall() == [("42 days",)]


async def test_timescaledb_upsert_into_compressed_chunk(
    ts_storage: Storage, timescaledb_database_url: str
) -> None:
    """TimescaleDB mode: writes into a chunk converted to columnstore update it exactly."""
    storage = ts_storage
    url = timescaledb_database_url
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # The policy would compress these 2024 rows by itself at any moment; pause it so the
        # test compresses the chunk exactly once, by hand.
        await conn.execute(
            """SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
               WHERE hypertable_name = 'candlesticks' AND proc_name = 'policy_compression'"""
        )
    batch = run(BTC, T0, 60) + run(ETH, T0, 60)
    assert await storage.write_candles(batch) == 120
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET timescaledb.enable_compression_ratio_warnings = off")
        cur = await conn.execute("SELECT c::text FROM show_chunks('candlesticks') c")
        [(chunk,)] = await cur.fetchall()
        # A policy run already in flight when it was paused may compress it first: either way
        # the chunk ends up compressed, which is what this test needs.
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            await conn.execute("CALL convert_to_columnstore(%s::regclass)", (chunk,))
        cur = await conn.execute(
            "SELECT is_compressed FROM timescaledb_information.chunks "
            "WHERE format('%%I.%%I', chunk_schema, chunk_name) = %s",
            (chunk,),
        )
        assert await cur.fetchone() == (True,)
    assert await storage.write_candles(batch) == 0
    changed = [candle(BTC, T0 + 7 * M, close="0.10"), candle(BTC, T0 + 60 * M)]
    assert await storage.write_candles(changed) == 2
    stored = await storage.fetch_candles(BTC, T0, T0 + 61 * M)
    assert len(stored) == 61
    assert str(stored[7].close) == "0.10"
    assert stored[:7] == batch[:7]


# --- errors and recovery ---------------------------------------------------------------------


def test_mask_dsn_hides_passwords() -> None:
    """mask_dsn removes the password from URL and key=value DSNs and keeps the rest."""
    assert mask_dsn("postgresql://u:s3cret@db:5432/q") == "postgresql://u:***@db:5432/q"
    assert mask_dsn("postgresql://u@db/q?password=s3cret&sslmode=require") == (
        "postgresql://u@db/q?password=***&sslmode=require"
    )
    assert mask_dsn("host=db password=s3cret user=u") == "host=db password=*** user=u"
    assert mask_dsn("host=db password='a b\\'c' user=u") == "host=db password=*** user=u"
    assert mask_dsn("postgresql://u:p%40ss@db/q") == "postgresql://u:***@db/q"
    assert mask_dsn("postgresql://db/q") == "postgresql://db/q"


async def test_open_unreachable_raises_database_unavailable(pg_plain_cluster: PgCluster) -> None:
    """An unreachable server at open is DatabaseUnavailable naming host:port, not the password."""
    from tests.pg_plugin import _free_port

    port = _free_port()
    with pytest.raises(DatabaseUnavailable) as info:
        await Storage.open(f"postgresql://u:hunter2@127.0.0.1:{port}/q", connect_timeout_s=2)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_wrong_password_is_a_config_error(pg_plain_cluster: PgCluster) -> None:
    """Bad credentials are not retryable: ConfigError, and the message hides the password."""
    with pytest.raises(ConfigError) as info:
        await Storage.open(pg_plain_cluster.dsn(user="qryptify", password="wrong-pw"))
    assert "authentication failed" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    ok = await Storage.open(pg_plain_cluster.dsn(user="qryptify", password="secret"))
    await ok.close()


async def test_missing_database_is_a_config_error(pg_plain_cluster: PgCluster) -> None:
    """A database that does not exist is a configuration error naming it, not a retry."""
    with pytest.raises(ConfigError, match="no_such_db"):
        await Storage.open(pg_plain_cluster.dsn("no_such_db"))


async def test_pool_recovers_after_server_restart(
    pg_plain_cluster: PgCluster, plain_database_url: str
) -> None:
    """While the server is down calls raise DatabaseUnavailable; after restart the pool heals."""
    async with await Storage.open(plain_database_url, timeout_s=1, max_size=2) as store:
        await store.migrate()
        assert await store.write_candles(run(BTC, T0, 2)) == 2
        pg_plain_cluster.stop("immediate")
        try:
            with pytest.raises(DatabaseUnavailable):
                await store.write_candles(run(BTC, T0 + 2 * M, 2))
            with pytest.raises(DatabaseUnavailable):
                await store.sync_states()
        finally:
            pg_plain_cluster.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await store.write_candles(run(BTC, T0 + 2 * M, 2)) == 2
                break
            except DatabaseUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert len(await store.fetch_candles(BTC, T0, T0 + 4 * M)) == 4

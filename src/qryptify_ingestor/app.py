"""Wiring for the CLI commands: builds the concrete adapters from settings and runs the service.

Part of the composition root with `cli.py` (which only parses arguments and maps errors to exit
codes); nothing else builds an adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson
from rich.console import Console
from rich.table import Table

from qryptify_ingestor.binance.protocol import check_rest_url
from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.binance.stream import KlineStreams, validate_ws_base
from qryptify_ingestor.config import Settings
from qryptify_ingestor.domain import Interval, StreamKey, datetime_to_ms, format_ms
from qryptify_ingestor.errors import ConfigError, DatabaseUnavailable
from qryptify_ingestor.observe import NULL_OBSERVER, Observer
from qryptify_ingestor.progress import make_progress
from qryptify_ingestor.service import (
    ExchangeClock,
    Ingestor,
    StreamResult,
    Tuning,
    summarize_backfill,
)
from qryptify_ingestor.storage.postgres import Storage, mask_dsn
from qryptify_ingestor.storage.runlock import RunLock

log = logging.getLogger("qryptify")

# Binance's documented default until exchangeInfo tells us (binance-futures.md §3).
DEFAULT_WEIGHT_LIMIT = 2400
DEFAULT_WEIGHT_WINDOW_MS = 60_000
READY_DB_TIMEOUT_S = 1.0


def require_dsn(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "database_url: not set (set it in the config, QRYPTIFY_DATABASE_URL or --database-url;"
            " `make run` starts a local PostgreSQL for you)"
        )
    return settings.database_url


@contextlib.asynccontextmanager
async def open_storage(
    settings: Settings, observer: Observer = NULL_OBSERVER
) -> AsyncIterator[Storage]:
    dsn = require_dsn(settings)
    storage = await Storage.open(
        dsn,
        max_size=settings.db_pool_size,
        observer=observer,
        notify_channel=settings.live.notify_channel,
    )
    try:
        yield storage
    finally:
        await storage.close()


async def _migrate(storage: Storage, dsn: str) -> None:
    info = await storage.migrate()
    if info.timescaledb:
        log.info(
            "database %s: schema version %d, TimescaleDB hypertable + columnstore on",
            mask_dsn(dsn),
            info.version,
        )
    else:
        log.info(
            "database %s: schema version %d, plain PostgreSQL (TimescaleDB features are off:"
            " the extension is not available on this server)",
            mask_dsn(dsn),
            info.version,
        )


def build_rest(settings: Settings, observer: Observer) -> BinanceRest:
    budget = WeightBudget(
        DEFAULT_WEIGHT_LIMIT, DEFAULT_WEIGHT_WINDOW_MS, share=settings.binance.weight_share
    )
    return BinanceRest(
        settings.binance.rest_url,
        budget=budget,
        timeout_s=settings.binance.request_timeout_s,
        observer=observer,
        allow_insecure=settings.binance.allow_insecure,
    )


def build_streams(
    settings: Settings, keys: Sequence[StreamKey], observer: Observer, clock: ExchangeClock
) -> KlineStreams:
    live = settings.live
    return KlineStreams(
        settings.binance.ws_url,
        keys,
        max_streams_per_connection=live.streams_per_connection,
        silence_timeout_s=live.silence_timeout_s,
        stream_close_margin_s=live.close_margin_s,
        lifetime_s=live.lifetime_s,
        max_reconnects_per_5min=live.max_reconnects_per_5min,
        close_timeout_s=1.0,
        exchange_clock=clock.seconds,
        observer=observer,
        allow_insecure=settings.binance.allow_insecure,
    )


def tuning(settings: Settings) -> Tuning:
    return Tuning(
        start_ms=settings.start_ms,
        write_batch_rows=settings.backfill.write_batch_rows,
        max_pages_buffered=settings.backfill.max_pages_buffered,
        max_requests_in_flight=settings.binance.max_requests_in_flight,
        close_margin_s=settings.live.close_margin_s,
    )


def check_endpoints(settings: Settings, *, live: bool) -> None:
    """Refuse insecure or malformed Binance URLs before anything is contacted (exit 2)."""
    check_rest_url(settings.binance.rest_url, allow_insecure=settings.binance.allow_insecure)
    if live:
        validate_ws_base(settings.binance.ws_url, allow_insecure=settings.binance.allow_insecure)


async def run(settings: Settings, *, live: bool) -> int:
    """`qryptify run` (live=True) and `qryptify backfill` (live=False)."""
    check_endpoints(settings, live=live)
    keys = settings.stream_keys()
    async with _metrics(settings, keys, live) as monitoring:
        observer = monitoring.observer
        async with open_storage(settings, observer) as storage:
            monitoring.storage = storage
            return await _ingest(settings, keys, storage, observer, live=live)


async def _ingest(
    settings: Settings,
    keys: Sequence[StreamKey],
    storage: Storage,
    observer: Observer,
    *,
    live: bool,
) -> int:
    """Migrate, check the exchange, then backfill (and follow live when `live`)."""
    await _migrate(storage, require_dsn(settings))
    rest = build_rest(settings, observer)
    try:
        clock = ExchangeClock()
        progress = make_progress(Console(stderr=True))
        ingestor = Ingestor(
            rest,
            storage,
            tuning=tuning(settings),
            clock=clock,
            observer=observer,
            progress=progress,
        )
        log.info("connecting to Binance REST at %s", settings.binance.rest_url)
        await ingestor.retrying("reading the server time", lambda: clock.sync(rest))
        await ingestor.load_exchange_info(settings.symbols)
        if live:
            lock = RunLock(require_dsn(settings))
            await lock.acquire()
            try:
                streams = build_streams(settings, keys, observer, clock)
                log.info("live: %d stream(s) over %s", len(keys), settings.binance.ws_url)
                with progress:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(lock.hold(), name="run-lock")
                        await ingestor.follow(streams, keys)
            finally:
                await lock.release()
            return 0
        started = time.monotonic()
        with progress:
            results = await ingestor.backfill(keys)
        summarize_backfill(results, time.monotonic() - started)
        return _report_backfill(results)
    finally:
        await rest.aclose()


def _report_backfill(results: dict[StreamKey, StreamResult]) -> int:
    failed = 0
    for key, result in results.items():
        log.info(
            "%s: %d candle(s) written, %d request(s), last %s%s",
            key,
            result.written,
            result.requests,
            format_ms(result.last_ms),
            f", {len(result.gaps)} exchange gap(s) recorded" if result.gaps else "",
        )
        for start, end, reason in result.failed:
            failed += 1
            log.error(
                "%s: range %s .. %s failed: %s (recorded; `qryptify repair` retries it)",
                key,
                format_ms(start),
                format_ms(end),
                reason,
            )
    return 1 if failed else 0


@dataclass
class Monitoring:
    """What the metrics server watches: the observer, and the storage once it is open."""

    observer: Observer
    storage: Storage | None = None


@contextlib.asynccontextmanager
async def _metrics(
    settings: Settings, keys: Sequence[StreamKey], live: bool
) -> AsyncIterator[Monitoring]:
    """Prometheus metrics and /health, /ready while `run` follows live; a no-op observer else."""
    if not (live and settings.metrics.enabled):
        yield Monitoring(NULL_OBSERVER)
        return
    from qryptify_ingestor.metrics import (
        MetricsServer,
        PrometheusObserver,
        ReadyState,
        stream_readiness,
    )

    observer = PrometheusObserver()
    monitoring = Monitoring(observer)

    async def readiness() -> ReadyState:
        margin_ms = int(settings.live.close_margin_s * 1000)
        streams = stream_readiness(observer.lags_ms(), keys, margin_ms)
        if monitoring.storage is None:
            return ReadyState(False, streams, "not connected yet")
        try:
            # A probe must answer quickly even while the pool waits for a dead server.
            await asyncio.wait_for(monitoring.storage.schema_info(), READY_DB_TIMEOUT_S)
        except TimeoutError:
            return ReadyState(False, streams, f"no answer within {READY_DB_TIMEOUT_S:g} s")
        except DatabaseUnavailable as exc:
            return ReadyState(False, streams, str(exc))
        return ReadyState(True, streams)

    server = MetricsServer(
        observer, host=settings.metrics.host, port=settings.metrics.port, readiness=readiness
    )
    await server.start()
    log.info(
        "metrics on http://%s:%d/metrics (health: /health, readiness: /ready)",
        settings.metrics.host,
        server.port,
    )
    try:
        yield monitoring
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- status


async def status(settings: Settings, *, as_json: bool) -> int:
    """`qryptify status`: coverage and resume points per stream, storage mode, schema version."""
    async with open_storage(settings) as storage:
        report = await storage.status_report()
    now = report.db_now_ms
    streams: list[dict[str, object]] = []
    table = Table(show_lines=False, pad_edge=False)
    for col in ("symbol", "int.", "first", "last", "rows", "resume at", "lag", "gaps", "failed"):
        numeric = col in ("rows", "lag", "gaps", "failed")
        justify: Literal["left", "right"] = "right" if numeric else "left"
        table.add_column(col, justify=justify, no_wrap=True)
    for row in report.rows:
        interval = Interval(row.key.interval)
        lag_s = (
            None if row.last_ms is None else max(0, now - interval.next_open(row.last_ms)) / 1000
        )
        resume_at = None if row.resume_ms is None else interval.next_open(row.resume_ms)
        streams.append(
            {
                "symbol": row.key.symbol,
                "interval": row.key.interval,
                "first": _iso(row.first_ms),
                "last": _iso(row.last_ms),
                "rows": row.count,
                "last_contiguous": _iso(row.resume_ms),
                "resume_point": _iso(resume_at),
                "lag_s": lag_s,
                "exchange_gaps": row.gaps,
                "failed_ranges": row.failed,
            }
        )
        table.add_row(
            row.key.symbol,
            row.key.interval,
            _short(_iso(row.first_ms)),
            _short(_iso(row.last_ms)),
            f"{row.count:,}",
            _short(_iso(resume_at)),
            _human_lag(lag_s),
            str(row.gaps),
            str(row.failed),
        )
    mode = "timescaledb" if report.timescaledb else "postgresql"
    if as_json:
        doc = {"storage": mode, "schema_version": report.schema_version, "streams": streams}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    console = _stdout_console()
    shown = "TimescaleDB" if report.timescaledb else "PostgreSQL (TimescaleDB features off)"
    console.print(f"storage: [bold]{shown}[/]   schema version: [bold]{report.schema_version}[/]")
    if streams:
        console.print(table)
    else:
        console.print("no candles stored yet: run `qryptify backfill` or `qryptify run`")
    return 0


def _stdout_console() -> Console:
    """A console for reports: the terminal's width, or wide enough when piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms).replace(" ", "T") + "Z"


def _short(ms_text: str | None) -> str:
    """'2026-11-20T00:00:00Z' -> '2026-11-20 00:00' for the terminal table."""
    return "-" if ms_text is None else ms_text[:16].replace("T", " ")


def _human_lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# ---------------------------------------------------------------------------- verify / repair


async def verify(settings: Settings, *, as_json: bool) -> int:
    from qryptify_ingestor.storage.verify import verify as run_verify

    now = datetime_to_ms(datetime.now(UTC))
    report = await run_verify(require_dsn(settings), keys=settings.stream_keys(), now_ms=now)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        report.render(_stdout_console())
    return 0 if report.ok else 1


async def repair(settings: Settings, *, from_: str | None, to: str | None) -> int:
    """`qryptify repair`: re-fetch holes and failed ranges, re-check old exchange gaps."""
    from qryptify_ingestor.storage.verify import holes as find_holes

    dsn = require_dsn(settings)
    check_endpoints(settings, live=False)
    start_ms = _parse_when("--from", from_) if from_ else None
    end_ms = _parse_when("--to", to) if to else None
    keys = settings.stream_keys()
    async with open_storage(settings) as storage:
        await _migrate(storage, dsn)
        stored = {row.key: row for row in (await storage.status_report()).rows}
        rest = build_rest(settings, NULL_OBSERVER)
        try:
            clock = ExchangeClock()
            ingestor = Ingestor(rest, storage, tuning=tuning(settings), clock=clock)
            await ingestor.retrying("reading the server time", lambda: clock.sync(rest))
            await ingestor.load_exchange_info(settings.symbols)
            now = clock()

            async def holes(key: StreamKey) -> list[tuple[int, int, bool]]:
                row = stored.get(key)
                if row is None or row.first_ms is None or row.last_ms is None:
                    return []  # nothing stored: that is a backfill, not a repair
                interval = Interval(key.interval)
                # An explicit --from before the stored history back-extends it.
                lo = row.first_ms if start_ms is None else start_ms
                hi = interval.next_open(row.last_ms) if end_ms is None else end_ms
                ranges = await find_holes(dsn, key, lo, min(hi, interval.next_open(row.last_ms)))
                return [
                    (r.start, r.end, r.start > row.first_ms and r.end <= row.last_ms)
                    for r in ranges
                ]

            age_ms = int(settings.repair.recheck_gaps_older_than_days * 86_400_000)
            results = await ingestor.repair(
                keys,
                holes=holes,
                start_ms=start_ms if start_ms is not None else 0,
                end_ms=end_ms if end_ms is not None else now,
                recheck_gaps_before_ms=now - age_ms,
            )
        finally:
            await rest.aclose()
    problems = 0
    for key, r in results.items():
        log.info(
            "%s: %d hole(s) re-fetched, %d candle(s) written, %d exchange gap(s) recorded,"
            " %d old gap(s) re-checked",
            key,
            r.holes,
            r.written,
            r.gaps_recorded,
            r.gaps_rechecked,
        )
        for start, end, reason in r.failed:
            problems += 1
            log.error(
                "%s: %s .. %s still failing: %s", key, format_ms(start), format_ms(end), reason
            )
    return 1 if problems else 0


def _parse_when(flag: str, text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag}: unparsable date {text!r}: use YYYY-MM-DD or ISO datetime"
        ) from None
    return datetime_to_ms(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


async def migrate(settings: Settings) -> int:
    async with open_storage(settings) as storage:
        await _migrate(storage, require_dsn(settings))
    return 0


__all__ = ["migrate", "repair", "run", "status", "verify"]

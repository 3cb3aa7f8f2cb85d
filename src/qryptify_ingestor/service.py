"""Orchestration: validate the universe, backfill over REST, then follow closed candles live.

The service sees only our adapters' domain-level APIs (`BinanceRest`, `KlineStreams`, `Storage`)
and never an httpx, websockets or psycopg type. Every task it starts belongs to a TaskGroup.

Backfill (per (symbol, interval)): resume from `sync_state.last_ts`, or from `start_date` clamped
to the first candle Binance really has (a `limit=1` probe: Binance answers a `startTime` before the
listing with the first candle that exists, binance-futures.md §1.5). The range up to the last
closed candle is cut into aligned pages (`planning.plan_windows`) fetched concurrently under the
shared weight budget, and committed strictly in order per stream, so the resume point only ever
moves over contiguous candles and exchange gaps recorded in the same pass.

Live: subscribe first, backfill, then take the buffered closes; every (re)connect and every lagging
stream is filled from REST before the stream is trusted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from qryptify_ingestor.binance.parse import ExchangeInfo, KlineEvent
from qryptify_ingestor.binance.protocol import backoff_delay
from qryptify_ingestor.binance.rest import BinanceRest
from qryptify_ingestor.domain import Candle, Interval, StreamKey, format_ms
from qryptify_ingestor.errors import (
    ConfigError,
    DatabaseUnavailable,
    IngestorError,
    MalformedPayload,
    RetryableError,
)
from qryptify_ingestor.observe import NULL_OBSERVER, Observer
from qryptify_ingestor.planning import (
    LONG_PAGE_LIMIT,
    Window,
    find_gaps,
    last_closed_open,
    plan_windows,
)
from qryptify_ingestor.storage.postgres import Advance, Storage, SyncState

log = logging.getLogger(__name__)

T = TypeVar("T")

# USDⓈ-M contracts we ingest; anything else named in the config is refused at start
# (binance-futures.md §6.4: filter the universe explicitly, the CM merge may list CM symbols).
USDM_CONTRACT_TYPES = frozenset(
    {"PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER", "CURRENT_MONTH", "NEXT_MONTH"}
)
USDM_MARGIN_ASSETS = frozenset({"USDT", "USDC", "FDUSD", "BFUSD"})


CLOCK_RESYNC_S = 300.0
STOP_WRITE_WAIT_S = 3.0


class Clock(Protocol):
    """Exchange time in epoch ms."""

    def __call__(self) -> int: ...


class ExchangeClock:
    """Exchange time: the local clock plus the offset measured against `/fapi/v1/time`.

    "Is this candle closed?" must be judged against server time (binance-futures.md §2.3).
    """

    def __init__(self) -> None:
        self.offset_ms = 0
        self.synced_at = 0.0  # monotonic time of the last sync

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def seconds(self) -> float:
        """Exchange time in seconds, for components that count in seconds."""
        return self() / 1000

    async def sync(self, rest: BinanceRest) -> None:
        """Measure the offset against `/fapi/v1/time` (weight 1), halving the round trip."""
        before = time.time() * 1000
        server = await rest.get_server_time()
        after = time.time() * 1000
        self.offset_ms = int(server - (before + after) / 2)
        self.synced_at = time.monotonic()

    def observe(self, event_time_ms: int) -> None:
        """An event stamped `event_time_ms` by the exchange proves its clock is at least there."""
        ahead = event_time_ms - int(time.time() * 1000)
        if ahead > self.offset_ms:
            self.offset_ms = ahead


class Progress(Protocol):
    """Where backfill progress goes: a live display on a terminal, log lines elsewhere."""

    def start(self, key: StreamKey, total: int) -> None: ...
    def advance(self, key: StreamKey, count: int) -> None: ...
    def finish(self, key: StreamKey) -> None: ...


class NullProgress:
    def start(self, key: StreamKey, total: int) -> None: ...
    def advance(self, key: StreamKey, count: int) -> None: ...
    def finish(self, key: StreamKey) -> None: ...


@dataclass
class StreamResult:
    """What one backfill pass did for one (symbol, interval)."""

    key: StreamKey
    written: int = 0
    requests: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    last_ms: int | None = None


@dataclass
class RepairResult:
    """What `repair` did for one (symbol, interval)."""

    key: StreamKey
    holes: int = 0
    written: int = 0
    requests: int = 0
    gaps_recorded: int = 0
    gaps_rechecked: int = 0
    failed: list[tuple[int, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Tuning:
    """Knobs the CLI takes from settings."""

    start_ms: int
    write_batch_rows: int = 5000
    max_pages_buffered: int = 64
    max_requests_in_flight: int = 16
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    # A write retry is one cheap attempt against our own database: retry often, so that the
    # ingestor catches up within seconds of the database coming back.
    db_retry_max_s: float = 5.0
    close_margin_s: float = 30.0


@dataclass
class _Page:
    key: StreamKey
    index: int
    window: Window
    candles: list[Candle] | None = None  # None: the page stayed malformed
    reason: str = ""


@dataclass
class _StreamPlan:
    key: StreamKey
    interval: Interval
    prev_last: int | None
    windows: list[Window]
    next_index: int = 0  # next page to commit, in order
    ready: dict[int, _Page] = field(default_factory=dict)
    blocked: bool = False  # a page failed: no further resume-point advance this pass


def check_universe(info: ExchangeInfo, symbols: Sequence[str]) -> list[str]:
    """Names of configured symbols Binance does not list as USDⓈ-M contracts, with the reason."""
    problems: list[str] = []
    for symbol in symbols:
        found = info.symbols.get(symbol)
        if found is None:
            problems.append(f"{symbol} (not listed on USDⓈ-M futures)")
        elif found.contract_type not in USDM_CONTRACT_TYPES or (
            found.margin_asset and found.margin_asset not in USDM_MARGIN_ASSETS
        ):
            problems.append(
                f"{symbol} (contract {found.contract_type or '?'}, "
                f"margin {found.margin_asset or '?'}: not a USDⓈ-M contract we ingest)"
            )
    return problems


class Ingestor:
    """Backfill and live ingestion over our adapters."""

    def __init__(
        self,
        rest: BinanceRest,
        storage: Storage,
        *,
        tuning: Tuning,
        clock: Clock,
        observer: Observer = NULL_OBSERVER,
        progress: Progress | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rest = rest
        self.storage = storage
        self.tuning = tuning
        self.clock = clock
        self.observer = observer
        self.progress: Progress = progress or NullProgress()
        self._sleep = sleep
        self._last: dict[StreamKey, int | None] = {}
        self.exchange_info: ExchangeInfo | None = None

    # ------------------------------------------------------------------ start-up

    async def load_exchange_info(self, symbols: Sequence[str]) -> ExchangeInfo:
        """Fetch exchangeInfo (retrying while Binance is unreachable); refuse unknown symbols."""
        info = await self.retrying("exchangeInfo", self.rest.get_exchange_info)
        problems = check_universe(info, symbols)
        if problems:
            raise ConfigError("symbols: not USDⓈ-M futures symbols: " + ", ".join(problems))
        limit, window_ms = info.request_weight_limit()
        self.rest.budget.set_limit(limit, window_ms)
        self.exchange_info = info
        return info

    def _retry_delay(self, attempt: int, cap_s: float) -> float:
        """Full-jitter backoff for retry number `attempt` (from 0), never below the base."""
        base = self.tuning.retry_base_s
        return max(backoff_delay(attempt + 1, base, cap_s), base)

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Call until it succeeds; retryable failures are logged and retried with backoff."""
        attempt = 0
        while True:
            try:
                return await call()
            except RetryableError as exc:
                delay = self._retry_delay(attempt, self.tuning.retry_max_s)
                log.warning("%s failed: %s; retrying in %.1f s", what, exc, delay)
                attempt += 1
                await self._sleep(delay)

    # ------------------------------------------------------------------ backfill

    async def backfill(self, keys: Sequence[StreamKey]) -> dict[StreamKey, StreamResult]:
        """Fetch and store every closed candle from the resume point (or start) to now."""
        results = {key: StreamResult(key) for key in keys}
        states = await self.retrying("reading sync_state", self.storage.sync_states)
        plans = await asyncio.gather(
            *(self._plan(key, states.get(key), results[key]) for key in keys)
        )
        active = [p for p in plans if p.windows]
        for plan in plans:
            total = sum(_window_size(plan.interval, w) for w in plan.windows)
            self.progress.start(plan.key, total)
            if not plan.windows:
                self.progress.finish(plan.key)
        if active:
            await self._run_pages(active, results)
        return results

    async def _plan(
        self, key: StreamKey, state: SyncState | None, result: StreamResult
    ) -> _StreamPlan:
        interval = Interval(key.interval)
        end = last_closed_open(interval, self.clock())
        prev_last = state.last_ms if state is not None else None
        if prev_last is not None:
            start = interval.next_open(prev_last)
            if start > end:
                return _StreamPlan(key, interval, prev_last, [])
            first: int | None = start
            if interval.count(start, interval.next_open(end)) > LONG_PAGE_LIMIT:
                # More than a page behind: one weight-1 probe skips a long run of nothing
                # (delisted symbol, long maintenance) instead of fetching empty pages.
                first = await self._first_open(key, start, result)
        else:
            # onboardDate is only a hint: the first candle Binance really has is the truth.
            start = interval.ceil(self.tuning.start_ms)
            first = await self._first_open(key, start, result)
            if first is not None and first > start:
                # Nothing from start_date until `first`: the listing (shown by status).
                listing = first
                await self.retrying(
                    "recording the listing", lambda: self.storage.set_listing(key, listing)
                )
        if first is None or first > end:
            return _StreamPlan(key, interval, prev_last, [])
        result.last_ms = prev_last
        return _StreamPlan(key, interval, prev_last, plan_windows(interval, first, end))

    async def _first_open(self, key: StreamKey, start_ms: int, result: StreamResult) -> int | None:
        """Open time of the first candle at or after `start_ms` (one request, weight 1)."""
        result.requests += 1
        rows = await self.retrying(
            f"{key} first-candle probe",
            lambda: self.rest.get_klines(key.symbol, key.interval, start_ms=start_ms, limit=1),
        )
        return rows[0].open_time if rows else None

    async def _run_pages(
        self, plans: list[_StreamPlan], results: dict[StreamKey, StreamResult]
    ) -> None:
        slots = asyncio.Semaphore(self.tuning.max_pages_buffered)
        ready = asyncio.Event()
        by_key = {p.key: p for p in plans}
        queue = _round_robin(plans)
        pending = sum(len(p.windows) for p in plans)

        async def fetcher() -> None:
            while True:
                try:
                    plan, index = next(queue)
                except StopIteration:
                    return
                await slots.acquire()
                page = await self._fetch_page(plan, index, results[plan.key])
                plan.ready[index] = page
                ready.set()

        async def writer() -> None:
            nonlocal pending
            while pending:
                await ready.wait()
                ready.clear()
                while True:
                    batch = self._take_ready(by_key)
                    if not batch:
                        break
                    await self._commit_pages(batch, by_key, results)
                    pending -= len(batch)
                    for _ in batch:
                        slots.release()

        async with asyncio.TaskGroup() as group:
            group.create_task(writer(), name="backfill-writer")
            for n in range(min(self.tuning.max_requests_in_flight, pending)):
                group.create_task(fetcher(), name=f"backfill-fetcher-{n}")
        for plan in plans:
            self.progress.finish(plan.key)

    async def _fetch_page(self, plan: _StreamPlan, index: int, result: StreamResult) -> _Page:
        window = plan.windows[index]
        key = plan.key
        page = _Page(key, index, window)
        attempt = 0
        while True:
            try:
                result.requests += 1
                rows = await self.rest.get_klines(
                    key.symbol,
                    key.interval,
                    start_ms=window.start,
                    end_ms=window.last,
                    limit=window.limit,
                )
            except MalformedPayload as exc:
                # The adapter already retried; the range is recorded as failed and reported,
                # and the rest of the work goes on.
                self.observer.malformed(key, "rest")
                log.error(
                    "%s: malformed page %s..%s: %s [%s]",
                    key,
                    format_ms(window.start),
                    format_ms(window.last),
                    exc,
                    exc.excerpt,
                )
                page.reason = str(exc)
                return page
            except RetryableError as exc:
                delay = self._retry_delay(attempt, self.tuning.retry_max_s)
                log.warning(
                    "%s: page %s failed: %s; retrying in %.1f s",
                    key,
                    format_ms(window.start),
                    exc,
                    delay,
                )
                attempt += 1
                await self._sleep(delay)
                continue
            now = self.clock()
            # Never store the open candle: a row is closed only when its close time is
            # before exchange time (binance-futures.md §1.5).
            page.candles = [
                c for c in rows if c.close_time < now and window.start <= c.open_time <= window.last
            ]
            return page

    def _take_ready(self, plans: dict[StreamKey, _StreamPlan]) -> list[_Page]:
        """Pages that can be committed now, in order per stream, up to one write batch."""
        batch: list[_Page] = []
        rows = 0
        for plan in plans.values():
            while plan.next_index in plan.ready and rows < self.tuning.write_batch_rows:
                page = plan.ready.pop(plan.next_index)
                plan.next_index += 1
                batch.append(page)
                rows += len(page.candles or ())
        return batch

    async def _commit_pages(
        self,
        batch: list[_Page],
        plans: dict[StreamKey, _StreamPlan],
        results: dict[StreamKey, StreamResult],
    ) -> None:
        candles: list[Candle] = []
        advances: list[Advance] = []
        gaps: list[tuple[StreamKey, int, int]] = []
        failed: list[tuple[StreamKey, int, int, str]] = []
        counts: dict[StreamKey, int] = {}
        for key in dict.fromkeys(p.key for p in batch):
            plan = plans[key]
            pages = [p for p in batch if p.key == key]
            prev = plan.prev_last
            first_of_coverage: int | None = None
            for page in pages:
                if page.candles is None:
                    end = plan.interval.next_open(page.window.last)
                    failed.append((key, page.window.start, end, page.reason))
                    plan.blocked = True
                    continue
                candles.extend(page.candles)
                counts[key] = counts.get(key, 0) + len(page.candles)
                if plan.blocked or not page.candles:
                    continue
                opens = [c.open_time for c in page.candles]
                for gap in find_gaps(plan.interval, prev, opens):
                    gaps.append((key, *gap))
                if prev is None:
                    first_of_coverage = opens[0]
                prev = opens[-1]
            if prev is not None and prev != plan.prev_last:
                advances.append(Advance(key, plan.prev_last, prev, first_of_coverage))
                plan.prev_last = prev
        await self._write_with_retry(candles, advances, gaps, failed)
        for key, count in counts.items():
            results[key].written += count
            self.progress.advance(key, count)
            self.observer.candles_written(key, "rest", count)
        for key, start, end, reason in failed:
            results[key].failed.append((start, end, reason))
        for key, start, end in gaps:
            results[key].gaps.append((start, end))
            log.info(
                "%s: exchange gap %s .. %s (Binance has no candles there); recorded",
                key,
                format_ms(start),
                format_ms(end),
            )
        for adv in advances:
            results[adv.key].last_ms = adv.new_last_ms

    async def _write_with_retry(
        self,
        candles: list[Candle],
        advances: list[Advance],
        gaps: Sequence[tuple[StreamKey, int, int]] = (),
        failed: Sequence[tuple[StreamKey, int, int, str]] = (),
    ) -> None:
        """Write until the database takes it: an outage is waited out, never dropped.

        A stop (cancellation) while the write is in flight lets it finish first, so what was
        fetched is committed together with its resume point.
        """
        write = asyncio.ensure_future(self._write_until_done(candles, advances, gaps, failed))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Bounded: with the database down the write cannot finish; the stop must still be
            # prompt (what was not committed is fetched again on the next start).
            with contextlib.suppress(asyncio.CancelledError, IngestorError, TimeoutError):
                await asyncio.wait_for(write, timeout=STOP_WRITE_WAIT_S)
            raise

    async def _write_until_done(
        self,
        candles: list[Candle],
        advances: list[Advance],
        gaps: Sequence[tuple[StreamKey, int, int]],
        failed: Sequence[tuple[StreamKey, int, int, str]],
    ) -> None:
        attempt = 0
        while True:
            try:
                # Gaps first: the resume point may only move over a hole that is recorded.
                for key, start, end in gaps:
                    await self.storage.record_exchange_gap(key, start, end)
                for key, start, end, reason in failed:
                    await self.storage.record_failed_range(key, start, end, reason)
                if candles or advances:
                    await self.storage.write_candles(candles, advances)
                return
            except DatabaseUnavailable as exc:
                delay = self._retry_delay(attempt, self.tuning.db_retry_max_s)
                log.warning("database unavailable: %s; retrying the write in %.1f s", exc, delay)
                attempt += 1
                await self._sleep(delay)

    # ------------------------------------------------------------------ repair

    async def repair(
        self,
        keys: Sequence[StreamKey],
        *,
        holes: Callable[[StreamKey], Awaitable[list[tuple[int, int, bool]]]],
        start_ms: int,
        end_ms: int,
        recheck_gaps_before_ms: int,
    ) -> dict[StreamKey, RepairResult]:
        """Re-fetch holes, failed ranges and old exchange gaps; then advance resume points.

        `holes(key)` lists the missing ranges (outside recorded exchange gaps) in the window, each
        with whether it lies between stored candles. A hole between stored candles that REST
        still answers with nothing becomes a recorded
        exchange gap; a recorded gap that now has candles (Binance back-filled it) is replaced
        by its candles and by whatever smaller gaps remain.
        """
        results = {key: RepairResult(key) for key in keys}
        failed = await self.retrying("reading failed ranges", self.storage.failed_ranges)
        gaps = await self.retrying("reading exchange gaps", self.storage.exchange_gaps)
        for key in keys:
            result = results[key]
            for start, end, inner in await holes(key):
                result.holes += 1
                result.written += await self._refetch(key, start, end, result, inner=inner)
            for f in failed:
                if f.key == key and f.end_ms > start_ms and f.start_ms < end_ms:
                    before = len(result.failed)
                    result.written += await self._refetch(
                        key, f.start_ms, f.end_ms, result, inner=False
                    )
                    if len(result.failed) == before:
                        await self.storage.clear_failed_range(key, f.start_ms)
            for g in gaps:
                if g.key != key or g.checked_at_ms > recheck_gaps_before_ms:
                    continue
                if g.end_ms <= start_ms or g.start_ms >= end_ms:
                    continue
                result.gaps_rechecked += 1
                found = await self._refetch(
                    key, g.start_ms, g.end_ms, result, inner=True, gap=g.start_ms
                )
                result.written += found
        # Resume points advance over what is now contiguous (and the tail is brought up to now).
        await self.backfill(keys)
        return results

    async def _refetch(
        self,
        key: StreamKey,
        start: int,
        end: int,
        result: RepairResult,
        *,
        inner: bool,
        gap: int | None = None,
    ) -> int:
        """Fetch [start, end) page by page and upsert it (no resume-point move here).

        `inner`: the range lies between stored candles, so "no rows at all" is an exchange gap.
        `gap`: the start of a recorded gap being re-checked (replaced by what is still missing).
        """
        interval = Interval(key.interval)
        last_open = interval.floor(end - 1)
        windows = plan_windows(interval, start, last_open)
        plan = _StreamPlan(key, interval, None, windows)
        scratch = StreamResult(key)
        opens: list[int] = []
        written = 0
        for index in range(len(windows)):
            page = await self._fetch_page(plan, index, scratch)
            if page.candles is None:
                w = page.window
                await self._write_with_retry(
                    [], [], (), [(key, w.start, interval.next_open(w.last), page.reason)]
                )
                result.failed.append((w.start, interval.next_open(w.last), page.reason))
                return written
            if page.candles:
                await self._write_with_retry(page.candles, [])
                written += len(page.candles)
                opens.extend(c.open_time for c in page.candles)
        result.requests += scratch.requests
        if not inner:
            return written
        # What is still missing inside the range is Binance's own hole.
        missing: list[tuple[int, int]] = []
        prev = interval.floor(start - 1)
        for a, b in find_gaps(interval, prev, [*opens, interval.ceil(end)]):
            missing.append((a, b))
        if gap is not None:
            await self.retrying(
                "deleting a back-filled gap", lambda: self.storage.delete_exchange_gap(key, gap)
            )
        remaining = [(a, b) for a, b in missing if b > a]
        await self._write_with_retry([], [], [(key, a, b) for a, b in remaining])
        result.gaps_recorded += len([r for r in remaining if gap is None])
        return written

    # ------------------------------------------------------------------ live

    async def follow(self, streams: LiveSource, keys: Sequence[StreamKey]) -> None:
        """Follow closed candles until cancelled.

        Hand-over without a hole: the streams are subscribed (and buffering) before the
        backfill runs; afterwards the buffered closes are taken, and each `StreamsUp` makes the
        filler bring its streams up to the last closed candle from REST.
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(streams.run(), name="kline-streams")
            started = time.monotonic()
            summarize_backfill(await self.backfill(keys), time.monotonic() - started)
            states = await self.retrying("reading sync_state", self.storage.sync_states)
            self._last = {k: states[k].last_ms for k in keys if k in states}
            self._fill_pending: set[StreamKey] = set()
            self._fill_wanted = asyncio.Event()
            group.create_task(self._filler(), name="rest-filler")
            group.create_task(self._watch_lag(keys), name="lag-watchdog")
            await self._consume(streams)

    def request_fill(self, keys: Sequence[StreamKey], reason: str) -> None:
        """Ask the filler to bring `keys` up to the last closed candle from REST."""
        fresh = [k for k in keys if k not in self._fill_pending]
        if fresh:
            log.info("REST fill requested for %d stream(s) (%s)", len(fresh), reason)
            self._fill_pending.update(fresh)
            self._fill_wanted.set()

    async def _filler(self) -> None:
        """One task fills from REST, so fills never race each other (they share the budget)."""
        while True:
            await self._fill_wanted.wait()
            self._fill_wanted.clear()
            keys = sorted(self._fill_pending, key=lambda k: (k.symbol, k.interval))
            results = await self.backfill(keys)
            for key in keys:
                self._fill_pending.discard(key)
                last = results[key].last_ms
                if last is not None and (self._last.get(key) or -1) < last:
                    self._last[key] = last

    async def _consume(self, streams: LiveSource) -> None:
        while True:
            items = [await streams.get()]
            # Finals of one close arrive as a burst: let the readers queue what they already
            # received, so the burst lands in one commit instead of two.
            await asyncio.sleep(0)
            items.extend(streams.drain())
            closes: dict[tuple[StreamKey, int], Candle] = {}
            observe = getattr(self.clock, "observe", None)
            for item in items:
                if isinstance(item, KlineEvent):
                    if observe is not None:
                        observe(item.event_time)
                    if item.closed:
                        c = item.candle
                        closes[(StreamKey(c.symbol, c.interval), c.open_time)] = c
                else:
                    self.request_fill(item.keys, item.reason)
            if closes:
                await self._write_closes(list(closes.values()))

    async def _write_closes(self, candles: list[Candle]) -> None:
        """Upsert closed candles from the stream; advance resume points only over contiguity."""
        candles.sort(key=lambda c: (c.symbol, c.interval, c.open_time))
        advances: list[Advance] = []
        holes: list[StreamKey] = []
        by_key: dict[StreamKey, list[Candle]] = {}
        for c in candles:
            by_key.setdefault(StreamKey(c.symbol, c.interval), []).append(c)
        for key, group in by_key.items():
            interval = Interval(key.interval)
            start = last = self._last.get(key)
            first: int | None = None
            for c in group:
                if last is None:
                    first = last = c.open_time
                elif c.open_time == interval.next_open(last):
                    last = c.open_time
                elif c.open_time > last:
                    holes.append(key)  # a final went missing: REST fills the hole
                    break
            if last is not None and last != start:
                advances.append(Advance(key, start, last, first))
        await self._write_with_retry(candles, advances)
        now = self.clock()
        for adv in advances:
            self._last[adv.key] = adv.new_last_ms
        worst = 0
        for key, group in by_key.items():
            self.observer.candles_written(key, "ws", len(group))
            for c in group:
                latency = max(0, now - (c.close_time + 1))
                worst = max(worst, latency)
                self.observer.close_to_commit(latency / 1000)
        newest = max(c.open_time for c in candles)
        log.info(
            "live: %d closed candle(s) committed (%s%s), newest open %s, close-to-commit <= %d ms",
            len(candles),
            ", ".join(str(k) for k in list(by_key)[:3]),
            f" +{len(by_key) - 3} more" if len(by_key) > 3 else "",
            format_ms(newest),
            worst,
        )
        if holes:
            self.request_fill(holes, "missed closed candle on the stream")

    async def _watch_lag(self, keys: Sequence[StreamKey]) -> None:
        """A stream whose next close is overdue by the margin is filled from REST."""
        margin_ms = int(self.tuning.close_margin_s * 1000)
        asked: dict[StreamKey, int] = {}
        while True:
            now = self.clock()
            late: list[StreamKey] = []
            for key in keys:
                interval = Interval(key.interval)
                expected = last_closed_open(interval, now)
                last = self._last.get(key)
                if last is not None:
                    self.observer.stream_lag(key, now - interval.next_open(last))
                if last is not None and last >= expected:
                    continue
                overdue = now - interval.next_open(expected)
                if overdue > margin_ms and now - asked.get(key, 0) > margin_ms:
                    asked[key] = now
                    late.append(key)
            if late:
                self.request_fill(late, "closed candle overdue on the stream")
            await self._resync_clock()
            await self._sleep(1.0)

    async def _resync_clock(self) -> None:
        """Re-measure the exchange clock every few minutes (clocks drift; weight 1)."""
        clock = self.clock
        if isinstance(clock, ExchangeClock) and time.monotonic() - clock.synced_at > CLOCK_RESYNC_S:
            try:
                await clock.sync(self.rest)
            except RetryableError as exc:
                clock.synced_at = time.monotonic()
                log.warning("could not re-sync the exchange clock: %s", exc)


class StreamSignal(Protocol):
    """`StreamsUp` / `Resync` from the stream: these keys need a REST fill, and why."""

    @property
    def keys(self) -> tuple[StreamKey, ...]: ...
    @property
    def reason(self) -> str: ...


class LiveSource(Protocol):
    """What `follow` needs from the WebSocket side (`binance.stream.KlineStreams`)."""

    async def run(self) -> None: ...
    async def get(self) -> KlineEvent | StreamSignal: ...
    def drain(self) -> Sequence[KlineEvent | StreamSignal]: ...


def summarize_backfill(results: dict[StreamKey, StreamResult], seconds: float) -> None:
    """One log line for a finished backfill pass."""
    written = sum(r.written for r in results.values())
    requests = sum(r.requests for r in results.values())
    gaps = sum(len(r.gaps) for r in results.values())
    failed = sum(len(r.failed) for r in results.values())
    log.info(
        "backfill done: %s candle(s) written for %d stream(s) in %.1f s (%s candles/s, %d requests)"
        "%s%s",
        f"{written:,}",
        len(results),
        seconds,
        f"{written / seconds:,.0f}" if seconds > 0 else "-",
        requests,
        f", {gaps} exchange gap(s) recorded" if gaps else "",
        f", {failed} range(s) failed" if failed else "",
    )


def _window_size(interval: Interval, window: Window) -> int:
    return interval.count(window.start, interval.next_open(window.last))


def _round_robin(plans: list[_StreamPlan]):  # type: ignore[no-untyped-def]
    """Yield (plan, page index) taking one page from each stream in turn."""
    index = 0
    while True:
        emitted = False
        for plan in plans:
            if index < len(plan.windows):
                emitted = True
                yield plan, index
        if not emitted:
            return
        index += 1


__all__ = ["ExchangeClock", "Ingestor", "KlineEvent", "StreamResult", "Tuning", "check_universe"]

"""Fixtures that assemble the real ingestor over the simulator and a real PostgreSQL.

`make_ingestor(sim, dsn, **tuning)` builds `Ingestor` exactly as the CLI does (real `BinanceRest`,
real `Storage`), with the simulator's clock as exchange time. `truth_diff` compares the table with
the simulator's candles value for value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.domain import Interval, StreamKey
from qryptify_ingestor.observe import NULL_OBSERVER, Observer
from qryptify_ingestor.service import Ingestor, Tuning
from qryptify_ingestor.sim import Simulator
from qryptify_ingestor.storage.postgres import Storage

COLUMNS = (
    "open_time, open, high, low, close, volume, close_time, quote_volume, trades, "
    "taker_buy_base, taker_buy_quote"
)


@dataclass
class Assembled:
    ingestor: Ingestor
    storage: Storage
    rest: BinanceRest
    sim: Simulator
    dsn: str
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


MakeIngestor = Callable[..., Awaitable[Assembled]]


@pytest.fixture
async def make_ingestor() -> AsyncIterator[MakeIngestor]:
    """A factory of ingestors wired to a simulator and a database; closed at teardown."""
    made: list[Assembled] = []

    async def factory(
        sim: Simulator,
        dsn: str,
        *,
        share: float = 0.9,
        migrate: bool = True,
        observer: Observer = NULL_OBSERVER,
        **tuning: Any,
    ) -> Assembled:
        storage = await Storage.open(dsn, observer=observer)
        if migrate:
            await storage.migrate()
        # Weight windows run on wall time, on Binance and in the simulator alike.
        budget = WeightBudget(sim.limiter.limit, sim.limiter.window_ms, share=share)
        rest = BinanceRest(
            sim.rest_url, budget=budget, backoff_base_s=0.01, backoff_max_s=0.2, observer=observer
        )
        tuning.setdefault("start_ms", sim.clock.now_ms() - 2 * 86_400_000)
        tuning.setdefault("retry_base_s", 0.01)
        tuning.setdefault("retry_max_s", 0.2)
        ingestor = Ingestor(
            rest, storage, tuning=Tuning(**tuning), clock=sim.clock.now_ms, observer=observer
        )
        assembled = Assembled(ingestor, storage, rest, sim, dsn)
        made.append(assembled)
        return assembled

    yield factory
    for a in made:
        await a.rest.aclose()
        await a.storage.close()


def _text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def stored_rows(dsn: str, key: StreamKey) -> list[list[Any]]:
    """The table's rows for `key` in Binance's REST row layout (values as exact text)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT (extract(epoch FROM ts) * 1000)::bigint, open, high, low, close, volume,
                   (extract(epoch FROM close_time) * 1000)::bigint, quote_volume, trades,
                   taker_buy_base, taker_buy_quote
            FROM candlesticks WHERE symbol = %s AND interval = %s ORDER BY ts
            """,
            (key.symbol, key.interval),
        ).fetchall()
    return [[_text(v) for v in row] for row in rows]


@dataclass
class Diff:
    missing: list[int]
    extra: list[int]
    mismatched: list[int]
    duplicates: int

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.mismatched or self.duplicates)


def truth_diff(
    sim: Simulator, dsn: str, keys: Sequence[StreamKey], start_ms: int, end_ms: int
) -> Diff:
    """Compare stored candles with the simulator's closed candles opening in [start, end)."""
    missing: list[int] = []
    extra: list[int] = []
    mismatched: list[int] = []
    duplicates = 0
    for key in keys:
        truth = {
            int(r[0]): [int(r[0]), *r[1:6], int(r[6]), *r[7:11]]
            for r in sim.market.candles(key.symbol, key.interval, start_ms, end_ms)
        }
        stored = stored_rows(dsn, key)
        opens = [r[0] for r in stored]
        duplicates += len(opens) - len(set(opens))
        have = {r[0]: r for r in stored if start_ms <= r[0] < end_ms}
        missing += [t for t in truth if t not in have]
        extra += [t for t in have if t not in truth]
        mismatched += [t for t, row in have.items() if t in truth and row != truth[t]]
    return Diff(sorted(missing), sorted(extra), sorted(mismatched), duplicates)


def sync_last(dsn: str, key: StreamKey) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (extract(epoch FROM last_ts) * 1000)::bigint FROM sync_state"
            " WHERE symbol = %s AND interval = %s",
            (key.symbol, key.interval),
        ).fetchone()
    return None if row is None else row[0]


def last_closed(interval: str, now_ms: int) -> int:
    iv = Interval(interval)
    return iv.floor(iv.floor(now_ms) - 1)

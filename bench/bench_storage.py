"""The storage write path alone: our idempotent merge vs raw COPY vs executemany upsert.

Rows: realistic 1m candles from the simulator's market model (deterministic; parsed into
`Candle`s exactly as the REST client does), ordered like the backfill writer's batches (pages of
499 taken round-robin across streams, grouped into write batches of 5000 rows with the
resume-point advances).

Per mode (plain PostgreSQL, TimescaleDB hypertable), in one run, each into its own empty table:

- ours: `Storage.write_candles(batch, advances)` (Python text formatting + COPY to staging +
  INSERT … ON CONFLICT DO UPDATE … WHERE distinct + sync_state + NOTIFY), timed end to end;
- raw COPY: the same rows, pre-formatted outside the timer (database time only: the strictest
  reference), text COPY straight into an empty copy of `candlesticks` (same primary key; a
  hypertable with the same chunking in TimescaleDB mode), one transaction per batch;
- executemany: a per-row `INSERT … ON CONFLICT DO UPDATE` with psycopg `executemany` (pipeline
  mode), one transaction per batch, on a subset (it is slow);
- replay: `write_candles` of the same batches again (all conflicts, nothing changes).

    .venv/bin/python bench/bench_storage.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
import psycopg

import _common as C
from qryptify_ingestor.binance.parse import parse_kline_rows
from qryptify_ingestor.domain import Candle, StreamKey
from qryptify_ingestor.sim import Market, generated_symbols
from qryptify_ingestor.storage.postgres import Advance, Storage

PAGE, BATCH = 499, 5000
ONBOARD = 1_704_067_200_000  # 2024-01-01


def make_batches(n_rows: int, n_streams: int) -> list[tuple[list[Candle], list[Advance]]]:
    specs = generated_symbols(n_streams, onboard_ms=ONBOARD)
    market = Market(specs)
    per = n_rows // n_streams
    pages: dict[str, list[list[Candle]]] = {}
    for spec in specs:
        rows = market.candles(spec.name, "1m", ONBOARD, ONBOARD + per * 60_000)
        candles = parse_kline_rows(spec.name, "1m", orjson.dumps(rows))
        pages[spec.name] = [candles[i : i + PAGE] for i in range(0, len(candles), PAGE)]
    order: list[list[Candle]] = []
    for i in range(max(len(p) for p in pages.values())):
        order += [p[i] for p in pages.values() if i < len(p)]
    last: dict[str, int | None] = {s.name: None for s in specs}
    batches = []
    cur: list[list[Candle]] = []
    for page in [*order, None]:
        if page is not None and sum(len(p) for p in cur) < BATCH:
            cur.append(page)
            continue
        candles = [c for p in cur for c in p]
        advances = []
        by: dict[str, list[Candle]] = {}
        for c in candles:
            by.setdefault(c.symbol, []).append(c)
        for sym, cs in by.items():
            prev = last[sym]
            advances.append(
                Advance(
                    StreamKey(sym, "1m"),
                    prev,
                    cs[-1].open_time,
                    cs[0].open_time if prev is None else None,
                )
            )
            last[sym] = cs[-1].open_time
        batches.append((candles, advances))
        cur = [page] if page is not None else []
    return batches


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def raw_text(candles: list[Candle]) -> bytes:
    return "".join(
        f"{c.symbol}\t{c.interval}\t{_iso(c.open_time)}\t{c.open}\t{c.high}\t{c.low}\t{c.close}\t"
        f"{c.volume}\t{_iso(c.close_time)}\t{c.quote_volume}\t{c.trades}\t{c.taker_buy_base}\t"
        f"{c.taker_buy_quote}\n"
        for c in candles
    ).encode()


UPSERT = """
INSERT INTO candlesticks_em (symbol, interval, ts, open, high, low, close, volume, close_time,
                             quote_volume, trades, taker_buy_base, taker_buy_quote)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (symbol, interval, ts) DO UPDATE SET
  open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
  volume = EXCLUDED.volume, close_time = EXCLUDED.close_time,
  quote_volume = EXCLUDED.quote_volume, trades = EXCLUDED.trades,
  taker_buy_base = EXCLUDED.taker_buy_base, taker_buy_quote = EXCLUDED.taker_buy_quote
"""


async def run_mode(mode: str, batches, em_rows: int) -> dict[str, float]:
    n = sum(len(b[0]) for b in batches)
    out: dict[str, float] = {}
    with C.cluster(mode) as pg:
        dsn = C.fresh_db(pg)
        storage = await Storage.open(dsn)
        info = await storage.migrate()
        assert info.timescaledb == (mode == "timescaledb"), info
        with psycopg.connect(dsn, autocommit=True) as db:
            for t in ("candlesticks_raw", "candlesticks_em"):
                db.execute(f"CREATE TABLE {t} (LIKE candlesticks INCLUDING ALL)")
                if mode == "timescaledb":
                    db.execute(
                        f"SELECT create_hypertable('{t}', by_range('ts', INTERVAL '7 days'))"
                    )
        t0 = time.perf_counter()
        raw = [raw_text(c) for c, _ in batches]
        raw_format_s = time.perf_counter() - t0
        # raw COPY (database time only)
        with psycopg.connect(dsn) as db:
            db.execute("CHECKPOINT")
            db.commit()
            t0 = time.perf_counter()
            for data in raw:
                with db.cursor().copy("COPY candlesticks_raw FROM STDIN") as cp:
                    cp.write(data)
                db.commit()
            raw_db_s = time.perf_counter() - t0
            out["raw"] = n / raw_db_s
            out["raw_e2e"] = n / (raw_db_s + raw_format_s)
            db.execute("CHECKPOINT")
            db.commit()
        # ours
        t0 = time.perf_counter()
        changed = 0
        for candles, advances in batches:
            changed += await storage.write_candles(candles, advances)
        out["ours"] = n / (time.perf_counter() - t0)
        assert changed == n, (changed, n)
        # replay: every row conflicts, nothing changes
        t0 = time.perf_counter()
        again = 0
        for candles, _advances in batches:
            again += await storage.write_candles(candles, ())
        out["replay"] = n / (time.perf_counter() - t0)
        assert again == 0, again
        # executemany per-row upsert, on a subset
        with psycopg.connect(dsn) as db:
            db.execute("CHECKPOINT")
            db.commit()
            done = 0
            t0 = time.perf_counter()
            for candles, _ in batches:
                if done >= em_rows:
                    break
                with db.cursor() as cur:
                    cur.executemany(
                        UPSERT,
                        [
                            (
                                c.symbol,
                                c.interval,
                                datetime.fromtimestamp(c.open_time / 1000, UTC),
                                c.open,
                                c.high,
                                c.low,
                                c.close,
                                c.volume,
                                datetime.fromtimestamp(c.close_time / 1000, UTC),
                                c.quote_volume,
                                c.trades,
                                c.taker_buy_base,
                                c.taker_buy_quote,
                            )
                            for c in candles
                        ],
                    )
                db.commit()
                done += len(candles)
            out["executemany"] = done / (time.perf_counter() - t0)
            out["executemany_rows"] = done
            cnt = db.execute("SELECT count(*) FROM candlesticks").fetchone()[0]
            assert cnt == n, cnt
        await storage.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    C.header("bench_storage", args.quick)
    n_rows = 100_000 if args.quick else 500_000
    em_rows = 20_000 if args.quick else 50_000
    t0 = time.perf_counter()
    batches = make_batches(n_rows, 20)
    n = sum(len(b[0]) for b in batches)
    print(f"{n:,} candles in {len(batches)} batches (built in {time.perf_counter() - t0:.1f} s)")
    rows = []
    for mode in C.try_modes(["plain", "timescaledb"]):
        r = asyncio.run(run_mode(mode, batches, em_rows))
        rows.append(
            [
                mode,
                r["raw"],
                r["ours"],
                r["ours"] / r["raw"],
                r["raw_e2e"],
                r["ours"] / r["raw_e2e"],
                r["executemany"],
                r["ours"] / r["executemany"],
                r["replay"],
            ]
        )
    C.table(
        f"storage write path, {n:,} rows, batches of {BATCH} (rows/s)",
        [
            "mode",
            "raw COPY (db only)",
            "ours (write_candles)",
            "ours / raw (target >= 0.6)",
            "raw COPY incl. formatting",
            "ours / raw incl. formatting",
            f"executemany upsert ({em_rows:,} rows)",
            "ours / executemany",
            "replay (no-op)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

"""Backfill throughput against the weight ceiling, and against the usual naive loop (same run).

Setup: a simulator subprocess with a shortened weight window (400 weight per 10 s) and 50 ms of
added latency on every REST request (`faults.rest_latency(50)`), a fresh plain PostgreSQL
database, and the real `Ingestor` assembled as tests/ingest_plugin.py does (real BinanceRest +
WeightBudget, real Storage), with the product's default tuning and weight share.

Ceiling = allowed weight per second × best candles per weight (limit=499 costs 2: 249.5).
Reported against the full limit (limit/window) and against the configured share.

Reference ("how most users do it"): one sequential loop per symbol of `limit=1500` pages
(weight 10), each page written with psycopg `executemany` of a per-row
`INSERT … ON CONFLICT DO UPDATE`, sleeping `Retry-After` on a 429. Time-boxed; its candles/s.

    .venv/bin/python bench/bench_backfill.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import psycopg

import _common as C
from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.domain import StreamKey
from qryptify_ingestor.observe import Observer
from qryptify_ingestor.service import ExchangeClock, Ingestor, Tuning
from qryptify_ingestor.storage.postgres import Storage

LIMIT, WINDOW_MS = 400, 10_000
LATENCY_MS = 50
TIER = 499 / 2  # candles per weight at limit=499


class Counting(Observer):
    """Counts 429/418 seen by the client and timestamps written candles (for steady state)."""

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.written: list[tuple[float, int]] = []

    def rest_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def candles_written(self, key: StreamKey, source: str, count: int) -> None:
        self.written.append((time.perf_counter(), count))


async def run_ours(sim: C.SimProcess, dsn: str, symbols: list[str], start_ms: int, share: float):
    storage = await Storage.open(dsn)
    await storage.migrate()
    obs = Counting()
    budget = WeightBudget(LIMIT, WINDOW_MS, share=share)
    rest = BinanceRest(sim.rest_url, budget=budget, observer=obs)
    clock = ExchangeClock()
    await clock.sync(rest)
    ingestor = Ingestor(rest, storage, tuning=Tuning(start_ms=start_ms), clock=clock, observer=obs)
    await ingestor.load_exchange_info(symbols)
    keys = [StreamKey(s, "1m") for s in symbols]
    # Start at a window boundary, so the first (partial) window gives no free burst.
    now = time.time() * 1000
    await asyncio.sleep((WINDOW_MS - now % WINDOW_MS) / 1000 + 0.01)
    s0 = sim.stats()
    t0 = time.perf_counter()
    sampler = asyncio.create_task(_sample_windows(sim))
    results = await ingestor.backfill(keys)
    elapsed = time.perf_counter() - t0
    sampler.cancel()
    per_window = await sampler
    s1 = sim.stats()
    await rest.aclose()
    await storage.close()
    written = sum(r.written for r in results.values())
    # Whole windows only: a fixed-window budget lets a run that ends inside a window spend
    # that window's full cap, which flatters short runs. Count what was committed by the end
    # of the last whole window (writes trail fetches a little: conservative).
    n_win = int(elapsed // (WINDOW_MS / 1000))
    span = n_win * WINDOW_MS / 1000
    steady = sum(c for t, c in obs.written if t <= t0 + span) / span if n_win else None
    return {
        "candles": written,
        "seconds": elapsed,
        "rate": written / elapsed,
        "steady_rate": steady,
        "weight": s1["weight_used"] - s0["weight_used"],
        "requests": s1["requests"] - s0["requests"],
        "429": s1["rate_limited_429"] - s0["rate_limited_429"],
        "418": s1["banned_418"] - s0["banned_418"],
        "client_errors": obs.errors,
        "windows": n_win,
        "max_window_weight": max(per_window[:-1] or per_window or [0]),
        "per_window": per_window,
    }


async def _sample_windows(sim: C.SimProcess) -> list[int]:
    """Weight the simulator charged in each whole window (sampled at window boundaries)."""
    out: list[int] = []
    last = None
    try:
        while True:
            now = time.time() * 1000
            await asyncio.sleep((WINDOW_MS - now % WINDOW_MS) / 1000 - 0.002)
            used = (await asyncio.to_thread(sim.stats))["weight_used"]
            if last is not None:
                out.append(used - last)
            last = used
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        return out


NAIVE_SQL = """
INSERT INTO candlesticks (symbol, interval, ts, open, high, low, close, volume, close_time,
                          quote_volume, trades, taker_buy_base, taker_buy_quote)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (symbol, interval, ts) DO UPDATE SET
  open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
  volume = EXCLUDED.volume, close_time = EXCLUDED.close_time,
  quote_volume = EXCLUDED.quote_volume, trades = EXCLUDED.trades,
  taker_buy_base = EXCLUDED.taker_buy_base, taker_buy_quote = EXCLUDED.taker_buy_quote
"""


def run_naive(sim: C.SimProcess, dsn: str, symbols: list[str], start_ms: int, box_s: float):
    """The usual loop: sequential limit=1500 pages, per-row executemany upsert, sleep on 429."""
    written = requests = n429 = n418 = 0
    with httpx.Client(base_url=sim.rest_url, timeout=10) as http, psycopg.connect(dsn) as db:
        t0 = time.perf_counter()
        deadline = t0 + box_s
        for symbol in symbols:
            start = start_ms
            while time.perf_counter() < deadline:
                r = http.get(
                    "/fapi/v1/klines",
                    params={"symbol": symbol, "interval": "1m", "startTime": start, "limit": 1500},
                )
                requests += 1
                if r.status_code in (418, 429):
                    n429 += r.status_code == 429
                    n418 += r.status_code == 418
                    time.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                r.raise_for_status()
                now = time.time() * 1000
                rows = [row for row in json.loads(r.content) if row[6] < now]
                if rows:
                    with db.cursor() as cur:
                        cur.executemany(
                            NAIVE_SQL,
                            [
                                (
                                    symbol,
                                    "1m",
                                    datetime.fromtimestamp(row[0] / 1000, UTC),
                                    Decimal(row[1]),
                                    Decimal(row[2]),
                                    Decimal(row[3]),
                                    Decimal(row[4]),
                                    Decimal(row[5]),
                                    datetime.fromtimestamp(row[6] / 1000, UTC),
                                    Decimal(row[7]),
                                    row[8],
                                    Decimal(row[9]),
                                    Decimal(row[10]),
                                )
                                for row in rows
                            ],
                        )
                    db.commit()
                    written += len(rows)
                if len(rows) < 1500:
                    break
                start = rows[-1][0] + 60_000
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - t0
    return {
        "candles": written,
        "seconds": elapsed,
        "rate": written / elapsed,
        "requests": requests,
        "429": n429,
        "418": n418,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--share", type=float, default=0.8, help="weight share (product default 0.8)")
    args = ap.parse_args()
    C.header("bench_backfill", args.quick)
    target_s = 15 if args.quick else 40
    naive_box_s = 10 if args.quick else 25
    n_sym = 10 if args.quick else 20
    ceiling_full = LIMIT / (WINDOW_MS / 1000) * TIER
    ceiling_share = ceiling_full * args.share
    per_symbol = int(ceiling_share * target_s / n_sym)
    now = int(time.time() * 1000)
    start_ms = (now - per_symbol * 60_000) // 60_000 * 60_000
    onboard = datetime.fromtimestamp((start_ms - 86_400_000) / 1000, UTC).isoformat()
    print(
        f"{n_sym} symbols x {per_symbol:,} 1m candles; weight {LIMIT}/{WINDOW_MS} ms, "
        f"share {args.share}, +{LATENCY_MS} ms per request",
        flush=True,
    )
    sim_args = [
        "--generate",
        str(n_sym),
        "--generate-onboard",
        onboard,
        "--weight-limit",
        str(LIMIT),
        "--weight-window-ms",
        str(WINDOW_MS),
    ]
    with C.cluster("plain") as pg, C.SimProcess(sim_args) as sim:
        sim.admin("/_sim/faults", {"fault": "rest_latency", "ms": LATENCY_MS, "duration_s": 900})
        symbols = [f"GEN{i:04d}USDT" for i in range(1, n_sym + 1)]
        ours = asyncio.run(run_ours(sim, C.fresh_db(pg), symbols, start_ms, args.share))
        sim.admin("/_sim/limits/reset", {})
        time.sleep((WINDOW_MS - time.time() * 1000 % WINDOW_MS) / 1000)
        db2 = C.fresh_db(pg)
        asyncio.run(_migrate(db2))
        naive = run_naive(sim, db2, symbols, start_ms, naive_box_s)
    rows = [
        [
            "ours (Ingestor.backfill)",
            ours["candles"],
            ours["seconds"],
            ours["rate"],
            ours["steady_rate"] or 0.0,
            ours["max_window_weight"],
            ours["requests"],
            ours["429"],
            ours["418"],
        ],
        [
            "naive: seq limit=1500 + executemany upsert",
            naive["candles"],
            naive["seconds"],
            naive["rate"],
            naive["rate"],
            "-",
            naive["requests"],
            naive["429"],
            naive["418"],
        ],
    ]
    C.table(
        "backfill throughput",
        [
            "path",
            "candles",
            "s",
            "candles/s (all)",
            "candles/s (whole windows)",
            "max weight/window",
            "requests",
            "429s",
            "418s",
        ],
        rows,
    )
    C.table(
        "ratios",
        ["measure", "value", "target"],
        [
            ["ceiling, full limit (candles/s)", ceiling_full, ""],
            [f"ceiling at share {args.share} (candles/s)", ceiling_share, ""],
            ["whole windows measured", ours["windows"], ""],
            [
                "ours (whole windows) / ceiling at configured share",
                (ours["steady_rate"] or 0) / ceiling_share,
                ">= 0.90",
            ],
            [
                "ours (whole windows) / ceiling at full limit",
                (ours["steady_rate"] or 0) / ceiling_full,
                "",
            ],
            [
                "ours (all, incl. probes + partial last window) / ceiling at share",
                ours["rate"] / ceiling_share,
                "",
            ],
            [
                f"max weight in one window (cap {int(LIMIT * args.share)}, limit {LIMIT})",
                ours["max_window_weight"],
                f"<= {int(LIMIT * args.share)}",
            ],
            ["ours / naive", ours["rate"] / naive["rate"], ""],
            ["418s (ours)", ours["418"], "0"],
        ],
    )
    print("client-side errors seen by ours:", ours["client_errors"] or "none")
    print("weight per window (ours):", ours["per_window"])


async def _migrate(dsn: str) -> None:
    async with await Storage.open(dsn) as s:
        await s.migrate()


if __name__ == "__main__":
    main()

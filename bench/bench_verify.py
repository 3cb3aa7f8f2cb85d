"""`qryptify verify` cost on a large table vs a plain `SELECT count(*)` (same run, both modes).

Rows are generated in the database with generate_series (20 streams x up to 500k 1m candles,
values that pass every value check, a few holes per stream, matching sync_state rows), in
chunks until the row target or the generation time box is reached; the size reached is printed.
Then, on the same data: `SELECT count(*) FROM candlesticks` (twice: cold-ish and warm) and
`storage.verify.verify()` (what `qryptify verify` runs; lag check off, the data is historical).

    .venv/bin/python bench/bench_verify.py [--quick] [--rows N] [--gen-box-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg

import _common as C
from qryptify_ingestor.storage.postgres import Storage
from qryptify_ingestor.storage.verify import verify

START = "2024-01-01 00:00:00+00"
HOLES = [(100_000, 100_010), (250_000, 250_001), (400_000, 400_120)]  # [from, to) minute indexes

# The holes are integer constants of this script, the only text interpolated.
GEN = (
    """
INSERT INTO candlesticks
SELECT %(symbol)s, '1m', ts, p, p + 1, p - 1, p, 12.345, ts + interval '59.999 seconds',
       1234.5678, 42, 6.1, 617.3
FROM (SELECT %(start)s::timestamptz + i * interval '1 minute' AS ts,
             round(100 + (i %% 1000) / 100.0, 2) AS p, i
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) s
WHERE NOT ("""  # noqa: S608
    + " OR ".join(f"(i >= {a} AND i < {b})" for a, b in HOLES)
    + ")"
)


async def migrate(dsn: str) -> bool:
    async with await Storage.open(dsn) as s:
        return (await s.migrate()).timescaledb


def run_mode(mode: str, target: int, box_s: float, per_stream: int) -> dict:
    with C.cluster(mode) as pg:
        dsn = C.fresh_db(pg)
        tsdb = asyncio.run(migrate(dsn))
        n_streams = max(1, target // per_stream)
        chunk = 100_000
        rows = 0
        t0 = time.perf_counter()
        done_streams = 0
        with psycopg.connect(dsn, autocommit=True) as db:
            for k in range(n_streams):
                sym = f"GEN{k + 1:04d}USDT"
                hi = 0
                for lo in range(0, per_stream, chunk):
                    hi = min(per_stream, lo + chunk)
                    cur = db.execute(GEN, {"symbol": sym, "start": START, "lo": lo, "hi": hi})
                    rows += cur.rowcount
                    if time.perf_counter() - t0 > box_s:
                        break
                db.execute(
                    """INSERT INTO sync_state (symbol, interval, first_ts, last_ts, listing_ts)
                       VALUES (%s, '1m', %s::timestamptz,
                               %s::timestamptz + (%s - 1) * interval '1 minute',
                               %s::timestamptz)""",
                    (sym, START, START, hi, START),
                )
                done_streams += 1
                if time.perf_counter() - t0 > box_s:
                    break
            gen_s = time.perf_counter() - t0
            db.execute("VACUUM ANALYZE candlesticks")
            t = time.perf_counter()
            n1 = db.execute("SELECT count(*) FROM candlesticks").fetchone()[0]
            count1 = time.perf_counter() - t
            t = time.perf_counter()
            db.execute("SELECT count(*) FROM candlesticks").fetchone()
            count2 = time.perf_counter() - t
        t = time.perf_counter()
        report = asyncio.run(verify(dsn, now_ms=int(time.time() * 1000), check_lag=False))
        verify_s = time.perf_counter() - t
        holes = ""
        for check in getattr(report, "checks", []):
            if getattr(check, "name", "") == "continuity":
                holes = getattr(check, "summary", "") or getattr(check, "detail", "")
    return {
        "mode": mode,
        "tsdb": tsdb,
        "rows": n1,
        "streams": done_streams,
        "gen_s": gen_s,
        "count_cold": count1,
        "count_warm": count2,
        "verify": verify_s,
        "ok": report.ok,
        "holes": str(holes)[:80],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--gen-box-s", type=float, default=None)
    args = ap.parse_args()
    C.header("bench_verify", args.quick)
    target = args.rows or (400_000 if args.quick else 10_000_000)
    box = args.gen_box_s or (15 if args.quick else 100)
    per_stream = 200_000 if args.quick else 500_000
    rows = []
    for mode in C.try_modes(["plain", "timescaledb"]):
        r = run_mode(mode, target, box, per_stream)
        print(r, flush=True)
        rows.append(
            [
                mode,
                r["rows"],
                r["streams"],
                r["gen_s"],
                r["count_cold"],
                r["count_warm"],
                r["verify"],
                r["verify"] / r["count_warm"],
                str(r["ok"]),
            ]
        )
    C.table(
        "qryptify verify vs SELECT count(*) (seconds)",
        [
            "mode",
            "rows",
            "streams",
            "generate s",
            "count(*) first",
            "count(*) warm",
            "verify",
            "verify / count(*) warm",
            "verify ok (holes => False)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

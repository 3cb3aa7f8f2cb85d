"""Peak RSS of `qryptify backfill` as history grows: a short history vs a long one (same run).

The simulator runs as `qryptify sim --generate N --generate-onboard … --weight-limit 100000000`
(budget lifted) in its own process; the ingestor is a `qryptify backfill` subprocess configured
through the environment (QRYPTIFY_DATABASE_URL, QRYPTIFY_REST_URL, QRYPTIFY_SYMBOLS,
QRYPTIFY_START_DATE), so the RSS measured is its own. /proc/<pid>/status VmRSS is sampled every
100 ms and VmHWM (the kernel's peak) read at the end of the run; each phase gets a fresh database.

The full target (50 symbols x 1 year of 1m = 26 M rows) does not fit a few minutes on 2 shared
cores, so the default is scaled down (see --symbols / --months) and says so; flatness (peak at
the short history vs at the long one) is the claim under test.

    .venv/bin/python bench/bench_memory.py [--quick] [--symbols N] [--months A B]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg

import _common as C


def run_phase(pg, sim: C.SimProcess, symbols: list[str], days: float, box_s: float) -> dict:
    dsn = C.fresh_db(pg)
    start = (datetime.now(UTC) - timedelta(days=days)).replace(second=0, microsecond=0)
    env = {
        **os.environ,
        "QRYPTIFY_DATABASE_URL": dsn,
        "QRYPTIFY_REST_URL": sim.rest_url,
        "QRYPTIFY_WS_URL": sim.ws_url,
        "QRYPTIFY_SYMBOLS": ",".join(symbols),
        "QRYPTIFY_INTERVALS": "1m",
        "QRYPTIFY_START_DATE": start.isoformat(),
        "QRYPTIFY_LOG_LEVEL": "WARNING",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [C.QRYPTIFY, "backfill"],
        env=env,
        cwd="/tmp",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, int]] = []
    hwm = 0
    timed_out = False
    while proc.poll() is None:
        try:
            st = C.proc_status(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        if "VmRSS" in st:
            samples.append((time.perf_counter() - t0, st["VmRSS"]))
            hwm = max(hwm, st.get("VmHWM", 0))
        if time.perf_counter() - t0 > box_s:
            timed_out = True
            proc.terminate()
            proc.wait(timeout=30)
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode not in (0, -15) and not timed_out:
        raise RuntimeError(f"backfill exited {proc.returncode}: {err[-2000:]}")
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT count(*) FROM candlesticks").fetchone()[0]
    rss = [r for _, r in samples]
    # RSS at 25/50/75/100 % of the run: flat means it stops growing after warm-up.
    quart = [rss[min(len(rss) - 1, int(len(rss) * q))] for q in (0.25, 0.5, 0.75, 0.999)]
    return {
        "rows": rows,
        "seconds": elapsed,
        "peak_rss_mb": max(rss) / 1024,
        "hwm_mb": hwm / 1024,
        "quartiles_mb": [q / 1024 for q in quart],
        "timed_out": timed_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--symbols", type=int, default=None)
    ap.add_argument("--months", type=float, nargs=2, default=None)
    ap.add_argument("--box-s", type=float, default=None, help="time box per phase")
    args = ap.parse_args()
    C.header("bench_memory", args.quick)
    n = args.symbols or (2 if args.quick else 10)
    months = args.months or ((1.0, 4.0) if args.quick else (3.0, 12.0))
    box = args.box_s or (40 if args.quick else 300)
    symbols = [f"GEN{i:04d}USDT" for i in range(1, n + 1)]
    onboard = (datetime.now(UTC) - timedelta(days=max(months) * 30.5 + 2)).isoformat()
    sim_args = ["--generate", str(n), "--generate-onboard", onboard, "--weight-limit", "100000000"]
    rows = []
    with C.cluster("plain") as pg, C.SimProcess(sim_args) as sim:
        for m in months:
            r = run_phase(pg, sim, symbols, m * 30.5, box)
            print(f"{m} months: {r}", flush=True)
            rows.append(
                [
                    f"{n} x {m:g} months" + (" (time-boxed)" if r["timed_out"] else ""),
                    r["rows"],
                    r["seconds"],
                    r["rows"] / r["seconds"],
                    r["peak_rss_mb"],
                    r["hwm_mb"],
                    " / ".join(f"{q:.0f}" for q in r["quartiles_mb"]),
                ]
            )
        sim_rss = C.proc_status(sim.pid).get("VmHWM", 0) / 1024
    C.table(
        "qryptify backfill peak memory (MB)",
        ["history", "rows", "s", "rows/s", "peak VmRSS", "VmHWM", "RSS at 25/50/75/100 %"],
        rows,
    )
    a, b = rows[0][5], rows[1][5]
    C.table(
        "flatness",
        ["measure", "value", "target"],
        [
            ["VmHWM long / short", b / a, "~1.0 (flat)"],
            ["VmHWM long history (MB)", b, "<= 300"],
            ["simulator process VmHWM (MB, not counted)", sim_rss, ""],
        ],
    )
    full = 50 * 525_600
    rate = rows[1][3]
    print(
        f"extrapolated time for 50 symbols x 1 year ({full:,} rows) at {rate:,.0f} rows/s: "
        f"{full / rate / 60:.0f} min"
    )


if __name__ == "__main__":
    main()

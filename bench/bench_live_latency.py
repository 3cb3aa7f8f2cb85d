"""Close-to-commit latency of live candles: final leaves the simulator -> NOTIFY received.

Three processes, so none steals the others' event loop: the simulator (`bench/_sim_server.py`,
i.e. `qryptify sim` + a dump of `final_sent_at`) with 200 generated symbols and a controlled
clock; the ingestor (`qryptify run`, configured through the environment, following the 200
`@kline_1m` streams after a short backfill); and this process, which LISTENs on `candles` and
advances the simulator's clock by one minute every ~2 s (`POST /_sim/clock/advance`), so 200
finals go out at once each time, with ~4 updates/s per stream in between (ws_tick_ms=250).

Latency per candle = wall time the NOTIFY for (symbol, ts) arrived here - wall time the
simulator queued that final (`final_sent_at`). NOTIFY is sent inside the writing transaction,
so its delivery means the row is committed and visible.

    .venv/bin/python bench/bench_live_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

import psycopg

import _common as C

N_STREAMS = 200


def listen(dsn: str, out: list[tuple[str, int, float]], stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN candles")
        while not stop.is_set():
            for note in conn.notifies(timeout=0.5):
                at = time.time()
                p = json.loads(note.payload)
                out.append((p["symbol"], p["ts"], at, p.get("count", 1)))


def wire_watch(ws_url: str, symbols: list[str], out: dict, stop: threading.Event) -> None:
    """A bare WebSocket client on the same streams: when each final reaches a socket here."""
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    async def run() -> None:
        url = ws_url + "/stream?streams=" + "/".join(f"{s.lower()}@kline_1m" for s in symbols)
        async with connect(url, max_size=1 << 20) as ws:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                at = time.time()
                if b'"x":true' in (raw if isinstance(raw, bytes) else raw.encode()):
                    d = orjson.loads(raw)["data"]
                    out.setdefault((d["s"], d["k"]["t"]), at)

    asyncio.run(run())


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--intervals", type=int, default=None)
    ap.add_argument("--period-s", type=float, default=2.0)
    ap.add_argument(
        "--decompose",
        action="store_true",
        help="also time finals at a bare WS client (one more subscriber: adds load)",
    )
    args = ap.parse_args()
    C.header("bench_live_latency", args.quick)
    intervals = args.intervals or (6 if args.quick else 20)
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    symbols = [f"GEN{i:04d}USDT" for i in range(1, N_STREAMS + 1)]
    dump = Path(tempfile.mkdtemp(prefix="qbench-")) / "finals.jsonl"
    sim_args = [
        "--port",
        "0",
        "--generate",
        str(N_STREAMS),
        "--generate-onboard",
        (now - timedelta(days=2)).isoformat(),
        "--clock-start",
        now.isoformat(),
        "--weight-limit",
        "100000000",
        "--dump",
        str(dump),
    ]
    notes: list[tuple[str, int, float, int]] = []
    stop = threading.Event()
    with (
        C.cluster("plain") as pg,
        C.SimProcess(sim_args, script=str(C.REPO / "bench/_sim_server.py")) as sim,
    ):
        dsn = C.fresh_db(pg)
        env = {
            **os.environ,
            "QRYPTIFY_DATABASE_URL": dsn,
            "QRYPTIFY_REST_URL": sim.rest_url,
            "QRYPTIFY_WS_URL": sim.ws_url,
            "QRYPTIFY_SYMBOLS": ",".join(symbols),
            "QRYPTIFY_INTERVALS": "1m",
            "QRYPTIFY_START_DATE": (now - timedelta(minutes=30)).isoformat(),
            "QRYPTIFY_METRICS_ENABLED": "false",
            "QRYPTIFY_LOG_LEVEL": "WARNING",
        }
        ing = subprocess.Popen(
            [C.QRYPTIFY, "run"],
            env=env,
            cwd="/tmp",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Live once every stream's resume point reached the last closed candle.
            deadline = time.monotonic() + 120
            with psycopg.connect(dsn, autocommit=True) as db:
                while time.monotonic() < deadline:
                    if ing.poll() is not None:
                        raise RuntimeError(f"ingestor exited: {ing.stderr.read()[-2000:]}")
                    try:
                        n = db.execute(
                            "SELECT count(*) FROM sync_state WHERE last_ts >= %s",
                            (now - timedelta(minutes=1, seconds=30),),
                        ).fetchone()[0]
                    except psycopg.errors.UndefinedTable:
                        n = 0
                    if n >= N_STREAMS:
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError("ingestor did not catch up within 120 s")
            time.sleep(2.0)
            th = threading.Thread(target=listen, args=(dsn, notes, stop), daemon=True)
            th.start()
            wire: dict = {}
            tw = threading.Thread(
                target=wire_watch, args=(sim.ws_url, symbols, wire, stop), daemon=True
            )
            if args.decompose:
                tw.start()
            time.sleep(1.0)
            cpu0 = C.cpu_seconds(ing.pid)
            t_first = time.time()
            for _ in range(intervals):
                sim.admin("/_sim/clock/advance", {"ms": 60_000})
                time.sleep(args.period_s)
            cpu = C.cpu_seconds(ing.pid) - cpu0
            stop.set()
            th.join(timeout=5)
            stats = sim.stats()
        finally:
            ing.terminate()
            ing.wait(timeout=30)
        sim.stop()
        sent = {}
        for line in dump.read_text().splitlines():
            s, _iv, o, at = json.loads(line)
            sent[(s, o)] = at
    wire_lat = [
        (at - sent[k]) * 1000 for k, at in wire.items() if k in sent and sent[k] >= t_first - 0.5
    ]
    ing_lat = [(at - wire[(s_, ts)]) * 1000 for s_, ts, at, _ in notes if (s_, ts) in wire]
    lat = []
    unmatched = multi = 0
    for s, ts, at, count in notes:
        if count != 1:
            multi += 1
        t = sent.get((s, ts))
        if t is None or t < t_first - 0.5:
            unmatched += 1
            continue
        lat.append((at - t) * 1000)
    expected = intervals * N_STREAMS
    # Commits per close: NOTIFYs of one transaction arrive back to back; a gap > 3 ms starts
    # another transaction's group.
    arrivals = sorted(at for _, _, at, _ in notes if at >= t_first)
    groups = 1 + sum(1 for a, b in itertools.pairwise(arrivals) if b - a > 0.003)
    first_lat = []
    by_close: dict[int, list[float]] = {}
    for s, ts, at, _ in notes:
        t = sent.get((s, ts))
        if t is not None and t >= t_first - 0.5:
            by_close.setdefault(ts, []).append((at - t) * 1000)
    first_lat = [min(v) for v in by_close.values()]
    rows = (
        [
            [
                len(lat),
                expected,
                pct(lat, 0.5),
                pct(lat, 0.9),
                pct(lat, 0.99),
                max(lat),
                statistics.mean(lat),
                min(lat),
                statistics.median(first_lat),
                groups / max(1, len(by_close)),
            ]
        ]
        if lat
        else [[0, expected, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    C.table(
        f"close-to-commit latency, {N_STREAMS} streams x {intervals} closes (ms)",
        [
            "candles measured",
            "closes sent",
            "p50",
            "p90",
            "p99 (target <= 50)",
            "max",
            "mean",
            "min",
            "median of first-committed per close",
            "commits per close",
        ],
        rows,
    )
    if wire_lat and ing_lat:
        C.table(
            "decomposition (ms): simulator queue -> wire arrival (bare client) -> NOTIFY",
            ["segment", "p50", "p99", "max"],
            [
                [
                    "sim stamp -> final arrives at a bare WS client (simulator + loopback)",
                    pct(wire_lat, 0.5),
                    pct(wire_lat, 0.99),
                    max(wire_lat),
                ],
                [
                    "final at bare client -> NOTIFY (ingestor: read, parse, write, commit)",
                    pct(ing_lat, 0.5),
                    pct(ing_lat, 0.99),
                    max(ing_lat),
                ],
            ],
        )
    print(
        f"notifies not matched to a timed final: {unmatched}; notifies covering >1 candle: "
        f"{multi}; ingestor CPU {cpu:.1f} s over {intervals * args.period_s:.0f} s; "
        f"sim ws messages sent {stats['ws_messages_sent']:,}"
    )


if __name__ == "__main__":
    main()

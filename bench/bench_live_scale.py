"""1000 live streams in one process: does the ingestor keep up, and what does a message cost?

The simulator runs as a `qryptify sim` subprocess (1000 generated symbols, controlled clock,
budget lifted) so its CPU is not counted; the ingestor runs in this process (real Storage,
BinanceRest, KlineStreams, `Ingestor.follow`, assembled as `qryptify run` does), so its
`KlineStreams.statistics()` can be sampled. Every `--close-every-s` the simulator's clock is
advanced one minute (`POST /_sim/clock/advance`): 1000 finals at once, ~4 updates/s per stream
in between. Measured over the steady part (after the backfill and a warm-up):

- messages/s read (statistics().messages; with `closed_only=True` every update is still read);
- CPU seconds per 10,000 messages (time.process_time of this process, the ingestor only);
- backlog: statistics().queued (max and at the end) and messages sent by the simulator minus
  messages read (what waits in socket buffers), at the start and the end of the window.

    .venv/bin/python bench/bench_live_scale.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import _common as C
from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.binance.stream import KlineStreams
from qryptify_ingestor.domain import StreamKey, datetime_to_ms
from qryptify_ingestor.service import ExchangeClock, Ingestor, Tuning
from qryptify_ingestor.storage.postgres import Storage


async def run(
    sim: C.SimProcess,
    dsn: str,
    n: int,
    start,
    measure_s: float,
    close_every_s: float,
    profile: bool,
) -> dict:
    storage = await Storage.open(dsn)
    await storage.migrate()
    rest = BinanceRest(sim.rest_url, budget=WeightBudget(2400, 60_000, share=0.8))
    clock = ExchangeClock()
    await clock.sync(rest)
    ingestor = Ingestor(rest, storage, tuning=Tuning(start_ms=datetime_to_ms(start)), clock=clock)
    symbols = [f"GEN{i:04d}USDT" for i in range(1, n + 1)]
    await ingestor.load_exchange_info(symbols)
    keys = [StreamKey(s, "1m") for s in symbols]
    # silence_timeout_s=120: each clock advance moves exchange time 60 s at once (a simulator
    # artifact, see RESULTS.md); the 30 s default would then judge the other shards silent.
    streams = KlineStreams(
        sim.ws_url,
        keys,
        close_timeout_s=1.0,
        clock=clock.seconds,
        silence_timeout_s=120,
        stream_close_margin_s=120,
        allow_insecure=True,
    )
    task = asyncio.create_task(ingestor.follow(streams, keys))
    # Wait for every stream to be live and the backfill done (resume points current).
    t_end = time.monotonic() + 180
    while time.monotonic() < t_end:
        await asyncio.sleep(1.0)
        if task.done():
            task.result()
        st = await storage.sync_states()
        if len(st) >= n and streams.statistics().messages > n:
            break
    await asyncio.sleep(3.0)

    async def advance() -> None:
        await asyncio.to_thread(sim.admin, "/_sim/clock/advance", {"ms": 60_000})

    samples = []
    prof = cProfile.Profile() if profile else None

    def sample() -> dict:
        s = streams.statistics()
        return {
            "t": time.perf_counter(),
            "cpu": time.process_time(),
            "messages": s.messages,
            "queued": s.queued,
            "sent": sim.stats()["ws_messages_sent"],
            "reconnects": s.reconnects,
            "stalls": s.stalls,
        }

    first = await asyncio.to_thread(sample)
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    next_close = t0
    while time.perf_counter() - t0 < measure_s:
        if time.perf_counter() >= next_close:
            await advance()
            next_close += close_every_s
        await asyncio.sleep(0.5)
        samples.append(await asyncio.to_thread(sample))
    if prof:
        prof.disable()
    last = samples[-1]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, BaseExceptionGroup):
        await task
    await streams.aclose()
    await rest.aclose()
    await storage.close()
    # The sampler's own CPU (a thread doing one HTTP call per 0.5 s) is included: small.
    dmsg = last["messages"] - first["messages"]
    out = {
        "seconds": last["t"] - first["t"],
        "messages": dmsg,
        "msg_rate": dmsg / (last["t"] - first["t"]),
        "cpu_s": last["cpu"] - first["cpu"],
        "cpu_per_10k": (last["cpu"] - first["cpu"]) / dmsg * 10_000 if dmsg else float("nan"),
        "queued_max": max(s["queued"] for s in samples),
        "queued_end": last["queued"],
        "lag_start": first["sent"] - first["messages"],
        "lag_end": last["sent"] - last["messages"],
        "sent_rate": (last["sent"] - first["sent"]) / (last["t"] - first["t"]),
        "reconnects": last["reconnects"] - first["reconnects"],
    }
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
        out["profile"] = buf.getvalue()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="cProfile the measured window")
    args = ap.parse_args()
    C.header("bench_live_scale", args.quick)
    measure_s = 15 if args.quick else 45
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    sim_args = [
        "--generate",
        str(args.streams),
        "--generate-onboard",
        (now - timedelta(days=2)).isoformat(),
        "--clock-start",
        now.isoformat(),
        "--weight-limit",
        "100000000",
    ]
    with C.cluster("plain") as pg, C.SimProcess(sim_args) as sim:
        sim_cpu0 = C.cpu_seconds(sim.pid)
        r = asyncio.run(
            run(
                sim,
                C.fresh_db(pg),
                args.streams,
                now - timedelta(minutes=5),
                measure_s,
                5.0,
                args.profile,
            )
        )
        sim_cpu = C.cpu_seconds(sim.pid) - sim_cpu0
    C.table(
        f"{args.streams} streams, one ingestor process, {r['seconds']:.0f} s measured",
        [
            "messages read",
            "msgs/s read",
            "msgs/s sent by sim",
            "ingestor CPU s",
            "CPU s / 10k msgs",
            "CPU share of one core",
            "queued max / end",
            "socket backlog start -> end (msgs)",
            "reconnects",
        ],
        [
            [
                r["messages"],
                r["msg_rate"],
                r["sent_rate"],
                r["cpu_s"],
                r["cpu_per_10k"],
                r["cpu_s"] / r["seconds"],
                f"{r['queued_max']} / {r['queued_end']}",
                f"{r['lag_start']:,} -> {r['lag_end']:,}",
                r["reconnects"],
            ]
        ],
    )
    print(f"simulator CPU over the whole run (not counted): {sim_cpu:.1f} s")
    if "profile" in r:
        print(r["profile"])


if __name__ == "__main__":
    main()

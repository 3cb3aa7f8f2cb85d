"""`qryptify sim` plus one thing the benchmarks need: the wall time each final left the server.

Same options as `qryptify sim` (built by `sim.cli.build_simulator`), and `--dump PATH`: on
SIGTERM the simulator's `final_sent_at` ({(symbol, interval, open_ms): wall seconds}, stamped
right after the final is queued to every subscriber) is written there as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qryptify_ingestor.sim.cli import build_simulator, configure_parser


async def serve(args: argparse.Namespace) -> None:
    sim = build_simulator(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"bench sim listening rest={sim.rest_url} ws={sim.ws_url}", flush=True)
        await stop.wait()
        if args.dump:
            with open(args.dump, "w") as f:  # noqa: ASYNC230 -- at shutdown, nothing else runs
                for (symbol, interval, open_ms), at in sim.final_sent_at.items():
                    f.write(json.dumps([symbol, interval, open_ms, at]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    parser.add_argument("--dump", default=None)
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

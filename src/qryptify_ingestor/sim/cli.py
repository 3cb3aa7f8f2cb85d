"""`qryptify sim`: run the Binance simulator as a process until SIGINT/SIGTERM.

The main CLI calls `configure_parser(subparser)` and, for the command, `run(args)`. Tests drive a
running simulator through its `/_sim/…` admin endpoints (clock, faults, stats, truth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import datetime

from qryptify_ingestor.domain import datetime_to_ms
from qryptify_ingestor.sim.clock import SimClock
from qryptify_ingestor.sim.server import Simulator
from qryptify_ingestor.sim.universe import default_symbols, generated_symbols


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `sim` options to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0: any free port)")
    parser.add_argument(
        "--symbols",
        nargs="+",
        metavar="SYMBOL",
        help="restrict the default universe to these symbols",
    )
    parser.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="add N generated perpetuals GEN0001USDT… (listed at --generate-onboard)",
    )
    parser.add_argument(
        "--generate-onboard",
        default="2024-01-01T00:00:00+00:00",
        metavar="ISO",
        help="listing time of generated symbols",
    )
    parser.add_argument("--weight-limit", type=int, default=2400, help="REQUEST_WEIGHT per window")
    parser.add_argument("--weight-window-ms", type=int, default=60_000, help="weight window (ms)")
    parser.add_argument("--ban-base-ms", type=int, default=120_000, help="first 418 ban length")
    parser.add_argument("--ws-lifetime-s", type=float, default=86_400.0)
    parser.add_argument("--ws-ping-interval-s", type=float, default=180.0)
    parser.add_argument("--ws-pong-timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--clock-start",
        metavar="ISO",
        help="start a controlled exchange clock here (default: real time)",
    )
    parser.add_argument(
        "--clock-speed", type=float, default=1.0, help="controlled clock rate (x real time)"
    )


def _parse_iso(text: str) -> int:
    return datetime_to_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def build_simulator(args: argparse.Namespace) -> Simulator:
    """The simulator the parsed options describe."""
    symbols = default_symbols()
    if args.symbols:
        wanted = {s.upper() for s in args.symbols}
        unknown = wanted - {s.name for s in symbols}
        if unknown:
            raise SystemExit(f"unknown symbols for the simulator: {', '.join(sorted(unknown))}")
        symbols = [s for s in symbols if s.name in wanted]
    if args.generate:
        symbols += generated_symbols(args.generate, onboard_ms=_parse_iso(args.generate_onboard))
    clock = (
        SimClock.controlled(_parse_iso(args.clock_start), speed=args.clock_speed)
        if args.clock_start
        else SimClock()
    )
    return Simulator(
        symbols,
        clock,
        host=args.host,
        port=args.port,
        weight_limit=args.weight_limit,
        weight_window_ms=args.weight_window_ms,
        ban_base_ms=args.ban_base_ms,
        ws_lifetime_s=args.ws_lifetime_s,
        ws_ping_interval_s=args.ws_ping_interval_s,
        ws_pong_timeout_s=args.ws_pong_timeout_s,
    )


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        # One parseable line so a parent process can find the port it got (with --port 0).
        print(f"qryptify sim listening rest={sim.rest_url} ws={sim.ws_url}", flush=True)
        await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run the simulator until SIGINT/SIGTERM; returns the exit status."""
    sim = build_simulator(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sim))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m qryptify_ingestor.sim.cli --port 0`."""
    parser = argparse.ArgumentParser(prog="qryptify sim", description=__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

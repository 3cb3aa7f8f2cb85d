"""The `qryptify` command: the composition root, the only module that builds concrete adapters.

Exit codes: 0 done (or stopped by SIGINT/SIGTERM), 1 a runtime failure, 2 bad configuration,
bad arguments, or a database that cannot be reached at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from qryptify_ingestor import __version__
from qryptify_ingestor.config import Settings, load_settings, unknown_env_names
from qryptify_ingestor.errors import (
    ConfigError,
    DatabaseUnavailable,
    IngestorError,
)

log = logging.getLogger("qryptify")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qryptify",
        description="Binance USDⓈ-M Futures klines into TimescaleDB / PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"qryptify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="YAML config (default ./config.yaml if present, else built-in defaults)",
        )
        p.add_argument("--database-url", default=None, help="overrides database_url")
        p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.add_argument("--log-format", default=None, choices=["text", "json"])

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--symbol", action="append", default=None, help="limit to this symbol (repeatable)"
        )
        p.add_argument(
            "--interval", action="append", default=None, help="limit to this interval (repeatable)"
        )

    p = sub.add_parser("run", help="backfill, then follow closed candles live until stopped")
    common(p)
    p.add_argument("--no-live", action="store_true", help="stop after the backfill")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus/health port (0 = off)"
    )

    p = sub.add_parser("backfill", help="fetch every closed candle up to now, then exit")
    common(p)
    selection(p)

    p = sub.add_parser("status", help="coverage and resume points per (symbol, interval)")
    common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("verify", help="check the stored data: coverage, continuity, values, lag")
    common(p)
    selection(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("repair", help="re-fetch the holes verify finds; re-check old exchange gaps")
    common(p)
    selection(p)
    p.add_argument("--from", dest="from_", default=None, help="start (ISO date/time, UTC)")
    p.add_argument("--to", default=None, help="end (ISO date/time, UTC)")

    p = sub.add_parser("migrate", help="apply the schema migrations and exit")
    common(p)

    p = sub.add_parser("sim", help="run the Binance USDⓈ-M simulator (REST + WebSocket)")
    from qryptify_ingestor.sim import cli as sim_cli

    sim_cli.configure_parser(p)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "database_url": getattr(args, "database_url", None),
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
    }
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics.port"] = args.metrics_port
        overrides["metrics.enabled"] = args.metrics_port != 0
    settings = load_settings(args.config, overrides=overrides)
    symbols = getattr(args, "symbol", None)
    intervals = getattr(args, "interval", None)
    if symbols or intervals:
        settings = load_settings(
            args.config,
            overrides={
                **overrides,
                "symbols": symbols or list(settings.symbols),
                "intervals": intervals or list(settings.intervals),
            },
        )
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "sim":
        from qryptify_ingestor.sim import cli as sim_cli

        return sim_cli.run(args)
    err = Console(stderr=True)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    from qryptify_ingestor.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, console=err)
    # One line per HTTP request is noise at INFO; our own logs say what matters.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    for name in unknown_env_names():
        log.warning("environment variable %s configures nothing (typo?)", name)
    command: Callable[[argparse.Namespace, Settings], Awaitable[int]] = COMMANDS[args.command]
    return run_async(command(args, settings), err)


def run_async(coro: Awaitable[int], err: Console) -> int:
    """Run a command; SIGINT/SIGTERM stop it gracefully (exit 0), errors become exit codes."""

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopping = False

        def stop(signame: str) -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                log.info("received %s: stopping (in-flight writes are committed)", signame)
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await coro
        except asyncio.CancelledError:
            if stopping:
                return EXIT_OK
            raise

    try:
        return asyncio.run(guarded())
    except (IngestorError, BaseExceptionGroup) as exc:
        error = _first_leaf(exc)
        if not isinstance(error, IngestorError):
            raise
        if isinstance(error, DatabaseUnavailable):
            err.print(f"[bold red]error:[/] database unavailable: {error}", highlight=False)
        else:
            err.print(f"[bold red]error:[/] {error}", highlight=False)
        if isinstance(error, ConfigError | DatabaseUnavailable):
            return EXIT_USAGE
        return EXIT_FAILURE


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups from TaskGroups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# ---------------------------------------------------------------------------- commands
# Imported lazily so that `qryptify --help` and config errors stay fast.


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.run(settings, live=settings.live.enabled and not args.no_live)


async def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.run(settings, live=False)


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.status(settings, as_json=args.json)


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.verify(settings, as_json=args.json)


async def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.repair(settings, from_=args.from_, to=args.to)


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from qryptify_ingestor import app

    return await app.migrate(settings)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]] = {
    "run": cmd_run,
    "backfill": cmd_backfill,
    "status": cmd_status,
    "verify": cmd_verify,
    "repair": cmd_repair,
    "migrate": cmd_migrate,
}


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())

"""Driving the real `qryptify` command as a subprocess, and judging the table it leaves.

The simulator runs in the test's event loop (`make_sim`); every wait on the subprocess is
asynchronous, so the simulator keeps serving while the test waits. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from qryptify_ingestor.domain import (
    HOUR_MS,
    MINUTE_MS,
    Interval,
    StreamKey,
    ms_to_datetime,
)
from qryptify_ingestor.sim import Simulator
from tests.ingest_plugin import last_closed, stored_rows, sync_last, truth_diff

QRYPTIFY = (sys.executable, "-m", "qryptify_ingestor")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def near_now_ms() -> int:
    """A sim clock start at wall time: the CLI's exchange clock (wall + offset from
    /fapi/v1/time) then agrees with the simulator, and `verify`'s lag (judged on wall time)
    sees the simulator's last closed candle as current."""
    return wall_ms()


def keys_of(symbols: Sequence[str], intervals: Sequence[str]) -> list[StreamKey]:
    """The streams the CLI ingests for these symbols and intervals (their cross product)."""
    return [StreamKey(s, i) for s in symbols for i in intervals]


def iso(ms: int) -> str:
    """Exact to the millisecond, so start_date is the test's start (not a second earlier)."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds")


def cli_env(
    sim: Simulator | None,
    dsn: str | None,
    *,
    keys: Sequence[StreamKey] = (),
    start_ms: int | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of one CLI run: only our QRYPTIFY_* variables, metrics off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRYPTIFY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    if dsn is not None:
        env["QRYPTIFY_DATABASE_URL"] = dsn
    if sim is not None:
        env["QRYPTIFY_REST_URL"] = sim.rest_url
        env["QRYPTIFY_WS_URL"] = sim.ws_url
    if keys:
        env["QRYPTIFY_SYMBOLS"] = ",".join(dict.fromkeys(k.symbol for k in keys))
        env["QRYPTIFY_INTERVALS"] = ",".join(dict.fromkeys(k.interval for k in keys))
    if start_ms is not None:
        env["QRYPTIFY_START_DATE"] = iso(start_ms)
    env.setdefault("QRYPTIFY_METRICS_ENABLED", "false")
    env.update(extra)
    return env


class Cli:
    """One `qryptify …` subprocess; its stdout and stderr are collected as they come."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers: list[asyncio.Task[None]] = []
        self.started_at = 0.0

    async def start(self) -> Cli:
        self.proc = await asyncio.create_subprocess_exec(
            *QRYPTIFY,
            *self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(_pump(self.proc.stdout, self.stdout)),
            asyncio.create_task(_pump(self.proc.stderr, self.stderr)),
        ]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    def tail(self, n: int = 40) -> str:
        lines = [ln for ln in self.output.splitlines() if "websockets" not in ln]
        return "\n".join(lines[-n:])

    async def wait_output(self, pattern: str, timeout_s: float = 15.0) -> re.Match[str]:
        """Wait until the combined output matches `pattern` (regex)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.output)
            if match:
                return match
            if not self.running and all(t.done() for t in self._readers):
                raise AssertionError(f"exited without printing {pattern!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout_s: float = 15.0) -> int:
        """The exit code, within `timeout_s` (AssertionError otherwise)."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(timeout_s):
                code = await self.proc.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout_s} s:\n{self.tail()}") from None
        return code

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL (a crash: nothing runs in the process after it) and reap it."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.proc.wait()
                    await asyncio.gather(*self._readers)

    def rss_kb(self) -> int:
        """Resident set size of the process (VmRSS from /proc), in kB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1))


async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
    while True:
        line = await stream.readline()
        if not line:
            return
        sink.append(line.decode(errors="replace"))


StartCli = Callable[..., Awaitable[Cli]]


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str,
    cli: Cli | None = None,
) -> None:
    """Poll `predicate` (sync or async) every 100 ms until it holds; fail after `timeout_s`
    (with the tail of `cli`'s output, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            context = "" if cli is None else f":\n{cli.tail()}"
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{context}")
        await asyncio.sleep(0.1)


def _quiet(call: Callable[[], Any], default: Any) -> Any:
    """Read the database, treating 'not there yet' (no table, server down) as `default`."""
    try:
        return call()
    except psycopg.Error:
        return default


def row_count(dsn: str) -> int:
    def count() -> int:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM candlesticks").fetchone()
        return int(row[0]) if row else 0

    return int(_quiet(count, 0))


def caught_up(sim: Simulator, dsn: str, keys: Sequence[StreamKey]) -> Callable[[], bool]:
    """True when every key's resume point is the simulator's last closed candle."""

    def check() -> bool:
        now = sim.clock.now_ms()
        return all(
            _quiet(lambda k=k: sync_last(dsn, k), None) == last_closed(k.interval, now)
            for k in keys
        )

    return check


async def recover(
    sim: Simulator, dsn: str, keys: Sequence[StreamKey], cli: Cli, closes: int = 1
) -> None:
    """Close `closes` candles, each time until the table is caught up (at most 3 tries).

    The CLI's exchange clock is wall time plus the offset read at start, moved forward by the
    event times of the finals it receives (binance-futures.md §2.3). When the test jumps the
    simulator's clock while a connection is down, the CLI learns the new time only from the
    next final, which also reveals the candles lost meanwhile; so recovery is proven by the
    closes that follow the fault, as it would be in real time. (A jump also looks like silence
    to the CLI, which judges silence on exchange time, and makes it replace the connection: a
    final deferred on the old one is then lost, and again only the next final reveals it.)
    """
    for _ in range(closes):
        for _ in range(2):
            sim.clock.advance(MINUTE_MS)
            with contextlib.suppress(AssertionError):
                await wait_until(caught_up(sim, dsn, keys), 3, "recovery")
                break
        else:
            sim.clock.advance(MINUTE_MS)
            await wait_until(caught_up(sim, dsn, keys), 10, "recovery within 3 closes", cli)


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def assert_exact(
    sim: Simulator,
    dsn: str,
    keys: Sequence[StreamKey],
    start_ms: int,
    *,
    closed_before_ms: int | None = None,
) -> None:
    """The table equals the simulator's closed candles from `start_ms`: missing = extra =
    mismatched = 0, no duplicate, and no candle stored before it closed.

    `closed_before_ms` (for a backfill, which stops at the time it started): candles that
    closed later are not expected, but those stored must still be exact.
    """
    now = sim.clock.now_ms()
    for key in keys:
        end = now + HOUR_MS
        if closed_before_ms is not None:
            end = Interval(key.interval).floor(closed_before_ms)
        diff = truth_diff(sim, dsn, [key], start_ms, end)
        later = truth_diff(sim, dsn, [key], end, now + HOUR_MS)
        assert diff.clean and not (later.extra or later.mismatched), (
            f"{key}: missing={len(diff.missing)} extra={len(diff.extra)} "
            f"mismatched={len(diff.mismatched)} duplicates={diff.duplicates}: {diff} {later}"
        )
    for key in keys:
        rows = stored_rows(dsn, key)
        assert rows, f"{key}: nothing stored"
        assert all(r[6] < now for r in rows), f"{key}: an unclosed candle was stored"
        assert all(r[0] >= start_ms for r in rows), f"{key}: a candle before start_date"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM candlesticks"
            " GROUP BY symbol, interval, ts HAVING count(*) > 1) d"
        ).fetchone()
    assert row is not None and row[0] == 0, "duplicate (symbol, interval, ts) rows"

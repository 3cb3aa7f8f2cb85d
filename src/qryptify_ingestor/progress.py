"""Backfill progress a person can watch.

On a terminal: a live display with one row per (symbol, interval) — done/total candles, rate,
ETA — and a total row. Off a terminal (logs, CI, systemd): one log line every few seconds.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from qryptify_ingestor.domain import StreamKey

log = logging.getLogger("qryptify.progress")


class _Base:
    def __init__(self) -> None:
        self.total: dict[StreamKey, int] = {}
        self.done: dict[StreamKey, int] = {}
        self.started = time.monotonic()

    def __enter__(self) -> _Base:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class LogProgress(_Base):
    """A log line every `every_s` seconds with the totals and the slowest streams."""

    def __init__(self, every_s: float = 5.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last_log = time.monotonic()

    def start(self, key: StreamKey, total: int) -> None:
        self.total[key] = self.total.get(key, 0) + total
        self.done.setdefault(key, 0)

    def advance(self, key: StreamKey, count: int) -> None:
        self.done[key] = self.done.get(key, 0) + count
        now = time.monotonic()
        if now - self._last_log >= self.every_s:
            self._last_log = now
            self._log(now)

    def finish(self, key: StreamKey) -> None:
        return None

    def _log(self, now: float) -> None:
        done = sum(self.done.values())
        total = max(sum(self.total.values()), done)
        rate = done / max(now - self.started, 1e-6)
        eta = (total - done) / rate if rate > 0 else float("inf")
        behind = sorted(self.total, key=lambda k: self.done.get(k, 0) - self.total[k])[:3]
        log.info(
            "backfill: %s/%s candles (%.1f%%), %.0f candles/s, ETA %s; furthest behind: %s",
            f"{done:,}",
            f"{total:,}",
            100 * done / total if total else 100.0,
            rate,
            _eta(eta),
            ", ".join(f"{k} {self.done.get(k, 0):,}/{self.total[k]:,}" for k in behind),
        )


class RichProgress(_Base):
    """A live terminal display: one row per stream plus a total."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9} c/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[StreamKey, TaskID] = {}
        self._total_task = self._progress.add_task("total", total=0, rate="")

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start(self, key: StreamKey, total: int) -> None:
        if total <= 0 and key not in self._tasks:
            return
        self.total[key] = self.total.get(key, 0) + total
        if key in self._tasks:
            self._progress.update(self._tasks[key], total=self.total[key])
        else:
            self._tasks[key] = self._progress.add_task(str(key), total=total, rate="")
        self._progress.update(self._total_task, total=sum(self.total.values()))

    def advance(self, key: StreamKey, count: int) -> None:
        self.done[key] = self.done.get(key, 0) + count
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if key in self._tasks:
            self._progress.update(
                self._tasks[key], advance=count, rate=f"{self.done[key] / elapsed:,.0f}"
            )
        self._progress.update(
            self._total_task, advance=count, rate=f"{sum(self.done.values()) / elapsed:,.0f}"
        )

    def finish(self, key: StreamKey) -> None:
        if key in self._tasks:
            task = self._tasks[key]
            self._progress.update(task, completed=self._progress.tasks[task].total)


def make_progress(console: Console) -> RichProgress | LogProgress:
    """A live display on a terminal, log lines otherwise."""
    return RichProgress(console) if console.is_terminal else LogProgress()


def _eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

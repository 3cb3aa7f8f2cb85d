"""Shared benchmark helpers: throwaway PostgreSQL clusters, simulator subprocesses, tables.

Every benchmark is self-contained: it starts its own cluster (plain or TimescaleDB, through
`tests.pg_plugin.PgCluster`, as the postgres user when we are root) and its own simulator
(`qryptify sim` or `bench/_sim_server.py` in a subprocess, so its CPU is not the ingestor's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PY = str(REPO / ".venv" / "bin" / "python")
QRYPTIFY = str(REPO / ".venv" / "bin" / "qryptify")

from tests.pg_plugin import ClusterUnavailable, PgCluster, _ensure_timescaledb_installed  # noqa: E402

MINUTE_MS = 60_000
DAY_MS = 86_400_000


# --- PostgreSQL --------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(mode: str = "plain") -> Iterator[PgCluster]:
    """A running throwaway cluster ('plain' or 'timescaledb'), destroyed on exit."""
    if mode == "timescaledb":
        _ensure_timescaledb_installed()
    c = PgCluster(mode)  # type: ignore[arg-type]
    try:
        c.start()
        yield c
    finally:
        c.destroy()


def fresh_db(c: PgCluster) -> str:
    return c.create_database(f"b_{uuid.uuid4().hex[:12]}")


def try_modes(modes: Sequence[str]) -> list[str]:
    """The modes that can run here (TimescaleDB may be unavailable: said, not hidden)."""
    ok = []
    for m in modes:
        if m == "timescaledb":
            try:
                _ensure_timescaledb_installed()
            except ClusterUnavailable as exc:
                print(f"!! timescaledb mode skipped: {exc}")
                continue
        ok.append(m)
    return ok


# --- simulator subprocess ------------------------------------------------------------------------


class SimProcess:
    """A simulator in its own process; `rest_url`, `ws_url`, admin helpers."""

    def __init__(self, args: Sequence[str], *, script: str | None = None) -> None:
        cmd = [PY, script, *args] if script else [QRYPTIFY, "sim", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO)
        )
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if "listening" in line or not line:
                break
        m = re.search(r"rest=(\S+) ws=(\S+)", line)
        if not m:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r} {err[-2000:]}")
        self.rest_url, self.ws_url = m.group(1), m.group(2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.rest_url + path, data=data, method="GET" if body is None else "POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, int]:
        return self.admin("/_sim/stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


# --- output ------------------------------------------------------------------------------------


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (printed and pasteable into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [f"\n### {title}\n"]
    for n, r in enumerate(cells):
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def header(name: str, quick: bool) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(
        f"# {name} {'--quick ' if quick else ''}at {stamp} on {os.cpu_count()} cores "
        f"(python {sys.version.split()[0]})",
        flush=True,
    )

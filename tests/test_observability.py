"""Metrics, health and readiness of a real `qryptify run`, scraped over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from qryptify_ingestor.domain import HOUR_MS, MINUTE_MS
from qryptify_ingestor.sim import Simulator
from tests.pg_plugin import PgCluster

pytestmark = pytest.mark.db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not m:
            continue
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
            found = True
    assert found, f"no sample {name}{labels}"
    return total


@pytest.fixture
async def running(
    sim: Simulator, plain_database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.subprocess.Process]]:
    """`qryptify run` against the simulator, with metrics on a free loopback port."""
    port = free_port()
    env = {
        **os.environ,
        "QRYPTIFY_DATABASE_URL": plain_database_url,
        "QRYPTIFY_REST_URL": sim.rest_url,
        "QRYPTIFY_WS_URL": sim.ws_url,
        "QRYPTIFY_SYMBOLS": "BTCUSDT,ETHUSDT",
        "QRYPTIFY_INTERVALS": "1m",
        "QRYPTIFY_START_DATE": "2026-09-30T22:00",
        "QRYPTIFY_METRICS_PORT": str(port),
        "QRYPTIFY_LIVE_SILENCE_TIMEOUT_S": "5",
        "QRYPTIFY_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qryptify_ingestor", "run", "--config", os.devnull,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.returncode is None, (await proc.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "never became ready"
                await asyncio.sleep(0.1)
            yield client, proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_metrics_report_backfill_live_and_reconnects(
    sim: Simulator, running: tuple[httpx.AsyncClient, asyncio.subprocess.Process]
) -> None:
    """/metrics shows REST candles and weight after backfill, WebSocket candles and
    close-to-commit latency after a close, and a reconnect after a drop."""
    client, _ = running
    text = (await client.get("/metrics")).text
    assert metric(text, "qryptify_candles_written_total", source="rest") > 100
    assert metric(text, "qryptify_rest_weight_limit") == 2400
    assert metric(text, "qryptify_ws_connections") == 1
    sim.clock.advance(MINUTE_MS)
    deadline = time.monotonic() + 10
    while True:
        text = (await client.get("/metrics")).text
        if (
            'source="ws"' in text
            and metric(text, "qryptify_candles_written_total", source="ws") >= 2
        ):
            break
        assert time.monotonic() < deadline, "no WebSocket candles counted"
        await asyncio.sleep(0.1)
    assert metric(text, "qryptify_close_to_commit_seconds_count") >= 2
    sim.faults.ws_drop()
    deadline = time.monotonic() + 10
    while (
        "qryptify_ws_reconnects_total{" not in text
        or metric(text, "qryptify_ws_reconnects_total") < 1
    ):
        assert time.monotonic() < deadline, "reconnect not counted"
        await asyncio.sleep(0.1)
        text = (await client.get("/metrics")).text


async def test_health_and_readiness_follow_the_database(
    pg_plain_cluster: PgCluster, running: tuple[httpx.AsyncClient, asyncio.subprocess.Process]
) -> None:
    """/health stays 200 while /ready turns 503 when the database goes away, and back."""
    client, proc = running
    assert (await client.get("/health")).json()["status"] == "ok"
    ready = await client.get("/ready")
    assert ready.status_code == 200
    pg_plain_cluster.stop(mode="immediate")
    try:
        deadline = time.monotonic() + 20
        while (await client.get("/ready")).status_code != 503:
            assert time.monotonic() < deadline, "readiness ignored the database outage"
            await asyncio.sleep(0.2)
        assert (await client.get("/health")).status_code == 200
    finally:
        pg_plain_cluster.start()
    deadline = time.monotonic() + 30
    while (await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the database came back"
        await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 5) == 0


def test_ready_needs_streams_within_their_lag_threshold() -> None:
    """A stream whose lag exceeds one interval plus the margin makes readiness fail."""
    from qryptify_ingestor.domain import StreamKey
    from qryptify_ingestor.metrics import ReadyState, stream_readiness

    key = StreamKey("BTCUSDT", "1m")
    ok = ReadyState(True, stream_readiness({key: 30_000}, [key], margin_ms=30_000))
    late = ReadyState(True, stream_readiness({key: 2 * HOUR_MS}, [key], margin_ms=30_000))
    assert ok.ready and not late.ready

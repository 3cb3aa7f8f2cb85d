"""PrometheusObserver and MetricsServer, scraped over real loopback HTTP."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS, StreamKey
from qryptify_ingestor.errors import DatabaseUnavailable
from qryptify_ingestor.metrics import (
    MetricsServer,
    PrometheusObserver,
    Readiness,
    ReadyState,
    StreamReadiness,
    lag_threshold_ms,
    stream_readiness,
)
from qryptify_ingestor.observe import Observer

BTC_1M = StreamKey("BTCUSDT", "1m")
ETH_1H = StreamKey("ETHUSDT", "1h")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _ready_fixed(state: ReadyState) -> Readiness:
    async def readiness() -> ReadyState:
        return state

    return readiness


def test_observer_overrides_every_hook() -> None:
    """PrometheusObserver implements every method the Observer seam defines."""
    hooks = [n for n, v in vars(Observer).items() if callable(v) and not n.startswith("_")]
    assert hooks
    missing = [n for n in hooks if getattr(PrometheusObserver, n) is getattr(Observer, n)]
    assert missing == []


def test_two_observers_do_not_share_counters() -> None:
    """Each observer has its own registry, so counts never leak between instances."""
    a, b = PrometheusObserver(), PrometheusObserver()
    a.candles_written(BTC_1M, "rest", 5)
    sa, sb = _samples(a.exposition().decode()), _samples(b.exposition().decode())
    key = (
        "qryptify_candles_written_total",
        (("interval", "1m"), ("source", "rest"), ("symbol", "BTCUSDT")),
    )
    assert sa[key] == 5
    assert key not in sb


def test_lag_threshold_is_interval_plus_margin() -> None:
    """A stream may lag one interval plus the margin; a month counts as 31 days."""
    assert lag_threshold_ms("1m", 5_000) == MINUTE_MS + 5_000
    assert lag_threshold_ms("1h", 0) == HOUR_MS
    assert lag_threshold_ms("1M", 0) == 31 * DAY_MS


def test_ready_state_names_failing_streams() -> None:
    """ReadyState is ready only with the database up and every stream within threshold."""
    streams = stream_readiness({BTC_1M: 1_000, ETH_1H: 3 * HOUR_MS}, [BTC_1M, ETH_1H], 0)
    state = ReadyState(database_ok=True, streams=streams)
    assert not state.ready
    assert [s.key for s in state.failing_streams] == [ETH_1H]
    assert StreamReadiness(BTC_1M, None, 1).ok is False
    assert ReadyState(database_ok=True, streams=streams[:1]).ready


async def test_metrics_endpoint_shows_observer_reports() -> None:
    """After the core reports events, /metrics serves them in Prometheus text format."""
    obs = PrometheusObserver()
    obs.candles_written(BTC_1M, "ws", 3)
    obs.candles_written(BTC_1M, "ws", 2)
    obs.rest_budget(2400, 150)
    obs.rest_response(200, 160)
    obs.rest_error("429")
    obs.ws_connections(2)
    obs.ws_reconnect("stall")
    obs.ws_stall()
    obs.ws_message()
    obs.stream_lag(BTC_1M, 1_500)
    obs.close_to_commit(0.012)
    obs.db_write(0.02, 500)
    obs.exchange_gaps(ETH_1H, 4)
    obs.malformed(BTC_1M, "rest")
    async with (
        MetricsServer(obs, port=0, readiness=_ready_fixed(ReadyState(True))) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    s = _samples(text)
    btc = (("interval", "1m"), ("symbol", "BTCUSDT"))
    assert s[("qryptify_candles_written_total", (*btc[:1], ("source", "ws"), btc[1]))] == 5
    assert s[("qryptify_rest_weight_limit", ())] == 2400
    assert s[("qryptify_rest_weight_used", ())] == 160
    assert s[("qryptify_rest_responses_total", (("status", "200"),))] == 1
    assert s[("qryptify_rest_errors_total", (("kind", "429"),))] == 1
    assert s[("qryptify_ws_connections", ())] == 2
    assert s[("qryptify_ws_reconnects_total", (("reason", "stall"),))] == 1
    assert s[("qryptify_ws_stalls_total", ())] == 1
    assert s[("qryptify_ws_messages_total", ())] == 1
    assert s[("qryptify_stream_lag_seconds", btc)] == 1.5
    assert s[("qryptify_close_to_commit_seconds_bucket", (("le", "0.005"),))] == 0
    assert s[("qryptify_close_to_commit_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("qryptify_db_write_seconds_count", ())] == 1
    assert s[("qryptify_db_rows_written_total", ())] == 500
    assert s[("qryptify_exchange_gaps", (("interval", "1h"), ("symbol", "ETHUSDT")))] == 4
    assert s[("qryptify_malformed_total", (("source", "rest"),))] == 1


async def test_health_is_ok_with_uptime() -> None:
    """/health answers 200 with status ok and the uptime from the injected clock."""
    now = [100.0]
    obs = PrometheusObserver()
    server = MetricsServer(
        obs, port=0, readiness=_ready_fixed(ReadyState(False)), clock=lambda: now[0]
    )
    async with server, aiohttp.ClientSession() as http:
        now[0] = 112.5
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "uptime_s": 12.5}


async def test_ready_200_when_database_up_and_streams_current() -> None:
    """/ready answers 200 when the database is reachable and no stream lags."""
    obs = PrometheusObserver()
    obs.stream_lag(BTC_1M, 2_000)

    async def readiness() -> ReadyState:
        return ReadyState(True, stream_readiness(obs.lags_ms(), [BTC_1M]))

    async with (
        MetricsServer(obs, port=0, readiness=readiness) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/ready") as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ready"
    assert body["failing_streams"] == []


async def test_ready_503_lists_lagging_stream() -> None:
    """/ready answers 503 and names the stream whose lag exceeds its threshold."""
    obs = PrometheusObserver()
    obs.stream_lag(BTC_1M, 2_000)
    obs.stream_lag(ETH_1H, 5 * HOUR_MS)

    async def readiness() -> ReadyState:
        return ReadyState(True, stream_readiness(obs.lags_ms(), [BTC_1M, ETH_1H]))

    async with (
        MetricsServer(obs, port=0, readiness=readiness) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/ready") as resp,
    ):
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "not ready"
    assert [(f["symbol"], f["interval"]) for f in body["failing_streams"]] == [("ETHUSDT", "1h")]
    assert body["failing_streams"][0]["lag_ms"] == 5 * HOUR_MS


async def test_ready_503_when_database_unreachable() -> None:
    """/ready answers 503 with the database error when the readiness check cannot reach it."""

    async def readiness() -> ReadyState:
        raise DatabaseUnavailable("connection refused")

    async with (
        MetricsServer(PrometheusObserver(), port=0, readiness=readiness) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/ready") as resp,
    ):
        assert resp.status == 503
        body = await resp.json()
    assert body["database"] == {"ok": False, "error": "connection refused"}


async def test_binds_loopback_by_default() -> None:
    """Without an explicit host the server listens on 127.0.0.1 only."""
    server = MetricsServer(PrometheusObserver(), port=0, readiness=_ready_fixed(ReadyState(True)))
    async with server:
        assert server.host == "127.0.0.1"
        assert server.url.startswith("http://127.0.0.1:")
        assert server.port > 0


@pytest.mark.parametrize("path", ["/nope", "/metrics/x"])
async def test_unknown_path_is_404(path: str) -> None:
    """Only the three documented endpoints exist."""
    async with (
        MetricsServer(
            PrometheusObserver(), port=0, readiness=_ready_fixed(ReadyState(True))
        ) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}{path}") as resp,
    ):
        assert resp.status == 404

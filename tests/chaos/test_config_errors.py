"""Bad configuration, bad arguments and insecure settings: exit 2 within seconds with a message
a person understands (naming the key, symbol or host), secrets never printed, nothing written."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psycopg
import pytest

from qryptify_ingestor.domain import HOUR_MS
from tests.chaos.harness import StartCli, cli_env, keys_of, near_now_ms, tables, wait_until
from tests.pg_plugin import PASSWORD_ROLE, PgCluster
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT"], ["1m"])
START = "2026-01-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _fails_with_2(start_cli: StartCli, args: list[str], env: dict[str, str]) -> str:
    began = time.monotonic()
    cli = await start_cli(args, env)
    code = await cli.wait_exit(5)
    assert code == 2, (code, cli.output)
    assert time.monotonic() - began < 5
    assert "Traceback" not in cli.output, cli.output
    return cli.output


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("QRYPTIFY_INTERVALS", "7m", ["interval", "7m"]),
        ("QRYPTIFY_START_DATE", "2999-01-01", ["start", "future"]),
        ("QRYPTIFY_SYMBOLS", "BTC-USDT!", ["symbol", "BTC-USDT!"]),
        ("QRYPTIFY_LIVE_SILENCE_TIMEOUT_S", "-5", ["silence_timeout_s"]),
    ],
    ids=["bad-interval", "future-start", "bad-symbol-syntax", "negative-timeout"],
)
async def test_bad_setting_exits_2_naming_it_and_creates_nothing(
    setting: str, value: str, words: list[str], plain_database_url: str, start_cli: StartCli
) -> None:
    """A bad value exits 2 with one line naming the key and value; no table is created."""
    env = cli_env(None, plain_database_url, keys=KEYS, QRYPTIFY_START_DATE=START)
    env[setting] = value
    output = await _fails_with_2(start_cli, ["run"], env)
    for word in words:
        assert word.lower() in output.lower(), (word, output)
    assert tables(plain_database_url) == set()


async def test_unknown_config_key_exits_2_naming_it(
    tmp_path: Path, plain_database_url: str, start_cli: StartCli
) -> None:
    """An unknown key in the config file exits 2 naming the key; no table is created."""
    config = tmp_path / "typo.yaml"
    config.write_text("symbols: [BTCUSDT]\nlive:\n  silence_timout_s: 5\n")
    env = cli_env(None, plain_database_url)
    output = await _fails_with_2(start_cli, ["run", "--config", str(config)], env)
    assert "silence_timout_s" in output and "unknown" in output.lower(), output
    assert tables(plain_database_url) == set()


async def test_bad_argument_exits_2(plain_database_url: str, start_cli: StartCli) -> None:
    """An unknown command-line option exits 2 naming it."""
    env = cli_env(None, plain_database_url)
    output = await _fails_with_2(start_cli, ["run", "--symbols-typo", "BTCUSDT"], env)
    assert "--symbols-typo" in output, output


async def test_unknown_symbol_exits_2_naming_it_and_stores_nothing(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A symbol Binance does not list exits 2 naming it (checked against exchangeInfo), before
    any candle is fetched or stored."""
    sim = await make_sim(start_ms=near_now_ms())
    env = cli_env(
        sim,
        plain_database_url,
        start_ms=sim.clock.now_ms() - HOUR_MS,
        QRYPTIFY_SYMBOLS="BTCUSDT,NOSUCHUSDT",
    )
    output = await _fails_with_2(start_cli, ["run"], env)
    assert "NOSUCHUSDT" in output, output
    assert sim.stats.klines_rows_served == 0
    if "candlesticks" in tables(plain_database_url):
        with psycopg.connect(plain_database_url) as conn:
            row = conn.execute("SELECT count(*) FROM candlesticks").fetchone()
        assert row == (0,)


async def test_unreachable_database_exits_2_naming_the_host(start_cli: StartCli) -> None:
    """A database nobody listens for exits 2 within seconds, naming host and port."""
    port = _free_port()
    env = cli_env(None, f"postgresql://postgres@127.0.0.1:{port}/qryptify", keys=KEYS)
    env["QRYPTIFY_START_DATE"] = START
    output = await _fails_with_2(start_cli, ["run"], env)
    assert "127.0.0.1" in output and str(port) in output, output


async def test_wrong_password_exits_2_without_printing_it(
    pg_plain_cluster: PgCluster, plain_database_url: str, start_cli: StartCli
) -> None:
    """Wrong credentials exit 2 saying authentication failed for the user; the password given
    appears nowhere in the output."""
    secret = "Wr0ng-S3cret-xyz"
    dbname = plain_database_url.rsplit("/", 1)[1]
    dsn = pg_plain_cluster.dsn(dbname, user=PASSWORD_ROLE[0], password=secret)
    env = cli_env(None, dsn, keys=KEYS, QRYPTIFY_START_DATE=START)
    output = await _fails_with_2(start_cli, ["run"], env)
    assert secret not in output, output
    assert "password" in output.lower() or "authentication" in output.lower(), output
    assert PASSWORD_ROLE[0] in output, output
    assert tables(plain_database_url) == set()


async def test_plain_http_to_a_remote_host_is_refused(
    plain_database_url: str, start_cli: StartCli
) -> None:
    """A plain http:// REST URL to a non-loopback host exits 2 with a clear error naming it,
    without a request to it (example.invalid cannot resolve: an attempt would retry forever)."""
    env = cli_env(None, plain_database_url, keys=KEYS, QRYPTIFY_START_DATE=START)
    env["QRYPTIFY_REST_URL"] = "http://example.invalid"
    output = await _fails_with_2(start_cli, ["run"], env)
    assert "http://example.invalid" in output and "TLS" in output, output
    assert "connecting to Binance" not in output, output


async def test_plain_http_to_a_remote_host_is_refused_before_touching_the_database(
    plain_database_url: str, start_cli: StartCli
) -> None:
    """The insecure REST URL is refused before the database is touched (no table created)."""
    env = cli_env(None, plain_database_url, keys=KEYS, QRYPTIFY_START_DATE=START)
    env["QRYPTIFY_REST_URL"] = "http://example.invalid"
    await _fails_with_2(start_cli, ["run"], env)
    assert tables(plain_database_url) == set(), "the database was migrated before the check"


async def test_plain_ws_to_a_remote_host_is_refused(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A plain ws:// WebSocket URL to a non-loopback host exits 2 naming it (no connection to
    it is tried: example.invalid cannot resolve)."""
    sim = await make_sim(start_ms=near_now_ms())
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=sim.clock.now_ms() - HOUR_MS)
    env["QRYPTIFY_WS_URL"] = "ws://example.invalid/market"
    output = await _fails_with_2(start_cli, ["run"], env)
    assert "ws://example.invalid" in output, output
    assert sim.stats.ws_connections_total == 0


async def test_plain_ws_to_a_remote_host_is_refused_before_any_request(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """The insecure WebSocket URL is refused before any REST request or database write."""
    sim = await make_sim(start_ms=near_now_ms())
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=sim.clock.now_ms() - HOUR_MS)
    env["QRYPTIFY_WS_URL"] = "ws://example.invalid/market"
    await _fails_with_2(start_cli, ["run"], env)
    assert sim.stats.requests == 0, f"{sim.stats.requests} REST request(s) before the refusal"
    assert tables(plain_database_url) == set(), "the database was migrated before the check"


async def test_metrics_bind_loopback_by_default(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """With metrics on and no host configured, /metrics listens on 127.0.0.1 only."""
    sim = await make_sim(start_ms=near_now_ms())
    port = _free_port()
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=sim.clock.now_ms() - HOUR_MS)
    env["QRYPTIFY_METRICS_ENABLED"] = "true"
    env["QRYPTIFY_METRICS_PORT"] = str(port)
    cli = await start_cli(["run"], env)
    await cli.wait_output(rf"metrics on http://127\.0\.0\.1:{port}/", 20)
    listening = await asyncio.to_thread(_listeners, port)
    assert listening == {"127.0.0.1"}, listening
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readline()
    writer.close()
    assert b" 200 " in head, head
    await wait_until(lambda: cli.running, 1, "the CLI running")


def _listeners(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
            else:
                raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found

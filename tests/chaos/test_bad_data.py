"""What Binance gets wrong in its data: malformed rows (never stored, reported, other streams
unaffected) and ranges it has no candles for (recorded once as exchange gaps, shown by
`status` and `verify`, never re-fetched forever)."""

from __future__ import annotations

import json

import psycopg
import pytest

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS
from tests.chaos.harness import StartCli, assert_exact, cli_env, keys_of, near_now_ms
from tests.ingest_plugin import stored_rows, truth_diff
from tests.sim_plugin import MakeSim

pytestmark = pytest.mark.chaos

KEYS = keys_of(["BTCUSDT", "ETHUSDT"], ["1m"])
BTC, ETH = KEYS


async def test_malformed_rows_are_never_stored_and_are_reported(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A row that stays malformed is never stored: its page is recorded in failed_ranges,
    logged, and the backfill exits 1; other streams are complete; once Binance serves it
    correctly, the next run completes the table exactly."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - DAY_MS
    bad = start - start % MINUTE_MS + 6 * HOUR_MS + 7 * MINUTE_MS
    sim.faults.malformed("BTCUSDT", "1m", bad, kind="high_below_low")  # for good
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    assert await cli.wait_exit(60) == 1, cli.tail()
    assert "malformed" in cli.output and "BTCUSDT" in cli.output, cli.tail()
    assert "Traceback" not in cli.output, cli.tail()

    assert bad not in [r[0] for r in stored_rows(plain_database_url, BTC)]
    diff = truth_diff(
        sim, plain_database_url, [BTC], start, backfill_from - backfill_from % MINUTE_MS
    )
    assert not (diff.extra or diff.mismatched or diff.duplicates), diff
    # Only the page around the bad row is missing, in one piece.
    assert bad in diff.missing and len(diff.missing) <= 499, diff.missing
    assert diff.missing == list(range(diff.missing[0], diff.missing[-1] + 1, MINUTE_MS))
    assert_exact(
        sim, plain_database_url, [ETH], start, closed_before_ms=backfill_from
    )  # the other stream is unaffected
    with psycopg.connect(plain_database_url) as conn:
        failed = conn.execute(
            "SELECT symbol, interval, (extract(epoch FROM range_start) * 1000)::bigint,"
            " (extract(epoch FROM range_end) * 1000)::bigint FROM failed_ranges"
        ).fetchall()
    assert [(s, i) for s, i, *_ in failed] == [("BTCUSDT", "1m")], failed
    assert failed[0][2] <= bad < failed[0][3]

    status = await start_cli(["status", "--json"], env)
    assert await status.wait_exit(15) == 0, status.tail()
    streams = {(s["symbol"], s["interval"]): s for s in json.loads(status.out)["streams"]}
    assert streams["BTCUSDT", "1m"]["failed_ranges"] >= 1
    assert streams["ETHUSDT", "1m"]["failed_ranges"] == 0

    sim.faults.clear()
    sim.faults.malformed("BTCUSDT", "1m", bad, count=0)  # Binance serves the row right again
    backfill_from = sim.clock.now_ms()
    again = await start_cli(["backfill"], env)
    assert await again.wait_exit(60) == 0, again.tail()
    assert_exact(sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from)


async def test_exchange_gap_is_recorded_once_and_reported(
    make_sim: MakeSim, plain_database_url: str, start_cli: StartCli
) -> None:
    """A maintenance hole in Binance's history is recorded as an exchange gap, not fetched again
    on the next run, and reported by `verify --json` and `status --json` as a gap, not a hole."""
    sim = await make_sim(start_ms=near_now_ms())
    start = sim.clock.now_ms() - DAY_MS
    gap_start = start - start % HOUR_MS + 5 * HOUR_MS
    gap_end = gap_start + 2 * HOUR_MS
    sim.faults.exchange_gap(gap_start, gap_end)  # every symbol: a platform maintenance
    env = cli_env(sim, plain_database_url, keys=KEYS, start_ms=start)
    backfill_from = sim.clock.now_ms()
    cli = await start_cli(["backfill"], env)
    assert await cli.wait_exit(60) == 0, cli.tail()
    assert_exact(
        sim, plain_database_url, KEYS, start, closed_before_ms=backfill_from
    )  # the truth has no rows in the gap
    with psycopg.connect(plain_database_url) as conn:
        gaps = conn.execute(
            "SELECT symbol, interval, (extract(epoch FROM gap_start) * 1000)::bigint,"
            " (extract(epoch FROM gap_end) * 1000)::bigint FROM exchange_gaps ORDER BY 1"
        ).fetchall()
    assert [(g[0], g[1]) for g in gaps] == [("BTCUSDT", "1m"), ("ETHUSDT", "1m")], gaps
    assert all(g[2] == gap_start for g in gaps), (gaps, gap_start)

    requests = sim.stats.requests
    backfill_from = sim.clock.now_ms()
    again = await start_cli(["backfill"], env)
    assert await again.wait_exit(30) == 0, again.tail()
    # time + exchangeInfo + at most a probe and a page per stream: the gap is not re-fetched.
    assert sim.stats.requests - requests <= 2 + 2 * len(KEYS)

    verify = await start_cli(["verify", "--json"], env)
    code = await verify.wait_exit(30)
    report = json.loads(verify.out)
    assert code == 0, verify.output
    checks = report["checks"]
    assert checks["continuity"]["status"] == "ok", checks["continuity"]
    assert not checks["continuity"]["items"], checks["continuity"]
    gap_items = checks["exchange_gaps"]["items"]
    assert {item["symbol"] for item in gap_items} == {"BTCUSDT", "ETHUSDT"}, gap_items

    status = await start_cli(["status", "--json"], env)
    assert await status.wait_exit(15) == 0, status.tail()
    for stream in json.loads(status.out)["streams"]:
        assert stream["exchange_gaps"] == 1, stream

"""The resilience suite (issue 7): the real `qryptify` CLI as a subprocess, under faults.

Each test starts the simulator in its own event loop (`make_sim`, a controlled clock near wall
time), runs `python -m qryptify_ingestor …` against it and a throwaway PostgreSQL (`harness.Cli`,
all waits asynchronous and bounded, every process killed at teardown), injects a fault, and ends
comparing the whole table with the simulator's candles value for value (`harness.assert_exact`:
missing = extra = mismatched = 0, no duplicate, nothing stored before it closed).

    make chaos                     # or: .venv/bin/pytest -m chaos tests/chaos
    .venv/bin/pytest -m chaos tests/chaos -k plain

Crash and database-outage scenarios run in both storage modes (plain PostgreSQL, TimescaleDB);
the others exercise the network side and run on plain PostgreSQL only.

Time in live tests: the CLI's exchange clock is wall time plus the offset read from
/fapi/v1/time at start, moved forward by the event times of the finals it receives. Tests jump
the simulator's clock to close candles in seconds; after a fault they close further candles
(`harness.recover`) so the CLI learns the new time from the next final, as it would in real
time.
"""

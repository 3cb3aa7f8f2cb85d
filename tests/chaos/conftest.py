"""Fixtures of the resilience suite: start the real CLI, kill whatever is left at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.chaos.harness import Cli, StartCli


@pytest.fixture
async def start_cli(tmp_path: Path) -> AsyncIterator[StartCli]:
    """`await start_cli(["run"], env)`: a started `qryptify` subprocess (cwd: an empty temp dir,
    so no ./config.yaml is read); SIGKILLed and reaped at teardown if still running."""
    started: list[Cli] = []

    async def factory(args: Sequence[str], env: Mapping[str, str]) -> Cli:
        cli = Cli(args, env, tmp_path)
        started.append(cli)
        return await cli.start()

    try:
        yield factory
    finally:
        for cli in started:
            await cli.kill()

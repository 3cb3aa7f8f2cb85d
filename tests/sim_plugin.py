"""Pytest fixtures for the Binance simulator (`sim`, `make_sim`), registered by conftest.

`sim` is a simulator on a free loopback port with a controlled clock that starts 30 s into a
minute at `SIM_START_MS` and runs at real speed, so tests can both wait for live events and
`sim.clock.advance(...)` through hours. `make_sim(**kwargs)` builds more (custom limits, short
pings and lifetimes, generated symbols); all are stopped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from qryptify_ingestor.sim import SimClock, Simulator

SIM_START_MS = 1_790_812_800_000 + 30_000  # 2026-10-01 00:00:30 UTC

MakeSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """A factory of started simulators: `await make_sim(weight_limit=400, ...)`."""
    started: list[Simulator] = []

    async def factory(
        *, start_ms: int = SIM_START_MS, speed: float = 1.0, **kwargs: Any
    ) -> Simulator:
        kwargs.setdefault("clock", SimClock.controlled(start_ms, speed=speed))
        sim = Simulator(**kwargs)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in reversed(started):
        await sim.stop()


@pytest.fixture
async def sim(make_sim: MakeSim) -> Simulator:
    """A started simulator with the default universe and a controlled clock."""
    return await make_sim()

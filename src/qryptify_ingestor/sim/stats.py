"""Counters the simulator keeps about what it served (`sim.stats`, `GET /_sim/stats`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class SimStats:
    """Live counters; read them at any time, `as_dict()` for a snapshot."""

    requests: int = 0  # REST requests to /fapi (admin endpoints excluded)
    weight_used: int = 0  # total weight charged
    rate_limited_429: int = 0
    banned_418: int = 0
    errors_5xx: int = 0  # injected server errors
    resets: int = 0  # injected mid-body connection resets
    klines_rows_served: int = 0
    ws_connections_total: int = 0
    ws_connections_open: int = 0
    ws_messages_sent: int = 0
    ws_finals_sent: int = 0
    ws_forced_closes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

"""The observation hook: how the core reports what happens without importing Prometheus.

Adapters and the service call methods of an `Observer`; the default does nothing. The CLI
installs a Prometheus-backed observer (`metrics.py`) when metrics are enabled. Methods are sync
and must not block: they only update counters.
"""

from __future__ import annotations

from qryptify_ingestor.domain import StreamKey


class Observer:
    """No-op base; subclasses override what they record."""

    # REST
    def rest_response(self, status: int, used_weight: int | None) -> None: ...
    def rest_budget(self, limit: int, used: int) -> None: ...
    def rest_error(self, kind: str) -> None:
        """kind: '429', '418', '5xx', 'timeout', 'reset', 'malformed'."""

    # WebSocket
    def ws_connections(self, count: int) -> None: ...
    def ws_reconnect(self, reason: str) -> None: ...
    def ws_stall(self) -> None: ...
    def ws_message(self) -> None: ...

    # Data
    def candles_written(self, key: StreamKey, source: str, count: int) -> None:
        """source: 'rest' or 'ws'."""

    def close_to_commit(self, seconds: float) -> None: ...
    def db_write(self, seconds: float, rows: int) -> None: ...
    def stream_lag(self, key: StreamKey, lag_ms: int) -> None: ...
    def exchange_gaps(self, key: StreamKey, count: int) -> None: ...
    def malformed(self, key: StreamKey, source: str) -> None: ...


NULL_OBSERVER = Observer()

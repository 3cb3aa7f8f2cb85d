"""Storage adapter: PostgreSQL/TimescaleDB through psycopg (see `postgres.py`)."""

from qryptify_ingestor.storage.migrations import SchemaInfo
from qryptify_ingestor.storage.postgres import (
    MAX_WRITE_ROWS,
    Advance,
    ExchangeGap,
    FailedRange,
    StatusRow,
    Storage,
    StorageStatus,
    SyncState,
    mask_dsn,
)

__all__ = [
    "MAX_WRITE_ROWS",
    "Advance",
    "ExchangeGap",
    "FailedRange",
    "SchemaInfo",
    "StatusRow",
    "Storage",
    "StorageStatus",
    "SyncState",
    "mask_dsn",
]

"""The ingestor's exception tree, organised by what the caller should do.

    IngestorError
    ├── ConfigError               bad configuration or arguments: exit 2, one line naming key/value
    ├── FatalError                stop: retrying cannot help
    │   ├── ExchangeRejected      Binance refused a request that will never succeed
    │   │                         (-1121 invalid symbol, -1120 invalid interval, other 4xx)
    │   ├── RestrictedLocation    HTTP 451: Binance serves no one from this location
    │   └── WafBlocked            HTTP 403: Binance's web application firewall blocked us
    ├── RetryableError            wait and try again
    │   ├── ExchangeUnavailable   5xx, 408, timeouts, connection errors, resets
    │   ├── RateLimited           HTTP 429: pause all REST traffic until `retry_at_ms`
    │   ├── IpBanned              HTTP 418: banned until `until_ms`
    │   ├── StreamStalled         a WebSocket stopped delivering data
    │   └── DatabaseUnavailable   the database cannot be reached right now
    └── MalformedPayload          the exchange sent something we cannot trust: skip, count, report

Library errors (httpx, websockets, psycopg) are translated into these once, in the adapter that
talks to the library, with `raise … from exc`.
"""

from __future__ import annotations


class IngestorError(Exception):
    """Base of every error the ingestor raises on purpose."""


class ConfigError(IngestorError):
    """Bad configuration or command-line input. The message names the key and the value."""


class FatalError(IngestorError):
    """Retrying cannot help; the process stops with a message."""


class ExchangeRejected(FatalError):
    """Binance answered with an error that will not change on retry."""

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RestrictedLocation(FatalError):
    """HTTP 451: Binance refuses service to this location (UM:general-info)."""


class WafBlocked(FatalError):
    """HTTP 403: the request was blocked by Binance's WAF (UM:general-info)."""


class RetryableError(IngestorError):
    """A condition expected to pass; the caller waits and tries again."""


class ExchangeUnavailable(RetryableError):
    """Binance could not be reached or answered 5xx/408."""


class RateLimited(RetryableError):
    """HTTP 429: the IP's request weight is spent; no REST request until `retry_at_ms`."""

    def __init__(self, message: str, *, retry_at_ms: int) -> None:
        super().__init__(message)
        self.retry_at_ms = retry_at_ms


class IpBanned(RetryableError):
    """HTTP 418: the IP is banned until `until_ms` for continuing after 429s."""

    def __init__(self, message: str, *, until_ms: int) -> None:
        super().__init__(message)
        self.until_ms = until_ms


class StreamStalled(RetryableError):
    """A WebSocket connection stopped delivering events."""


class DatabaseUnavailable(RetryableError):
    """The database cannot be reached right now (connection refused, shut down, …)."""


class MalformedPayload(IngestorError):
    """The exchange sent data that fails validation; never written, counted and reported."""

    def __init__(self, message: str, *, excerpt: str = "") -> None:
        super().__init__(message)
        self.excerpt = excerpt[:200]

"""Settings: one frozen tree, and the only reader of the configuration file and environment.

Precedence: built-in defaults < YAML file < `QRYPTIFY_*` environment < command-line flags.
Every problem is a `ConfigError` whose one-line message names the key and the bad value.

Environment: `QRYPTIFY_DATABASE_URL`, `QRYPTIFY_REST_URL`, `QRYPTIFY_WS_URL` (the documented
short names), and `QRYPTIFY_<KEY>` / `QRYPTIFY_<SECTION>_<KEY>` for every other key, e.g.
`QRYPTIFY_SYMBOLS=BTCUSDT,ETHUSDT`, `QRYPTIFY_START_DATE=2024-01-01`,
`QRYPTIFY_LIVE_SILENCE_TIMEOUT_S=20`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qryptify_ingestor.domain import Interval, StreamKey, datetime_to_ms, validate_symbol
from qryptify_ingestor.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config.yaml")

_STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class BinanceSettings(BaseModel):
    """Where Binance is and how hard we may use it."""

    model_config = _STRICT

    rest_url: str = "https://fapi.binance.com"
    # The route base: kline streams live under /market since 2026-04-23 (binance-futures.md §4.1).
    ws_url: str = "wss://fstream.binance.com/market"
    # Share of the IP's REQUEST_WEIGHT limit this process may use; the rest is headroom for
    # other processes on the same IP (the limit itself is read from exchangeInfo).
    weight_share: float = Field(default=0.8, gt=0, le=1)
    max_requests_in_flight: int = Field(default=16, ge=1, le=256)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # Plain http:// and ws:// are accepted for loopback hosts only, unless this is true.
    allow_insecure: bool = False

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ValueError(f"not a URL: {value!r}")
        return value.rstrip("/")


class BackfillSettings(BaseModel):
    """The REST backfill."""

    model_config = _STRICT

    # Rows written per database transaction (several pages are merged into one write).
    write_batch_rows: int = Field(default=5000, ge=100, le=90_000)
    # Pages fetched but not yet written, across all streams: bounds memory.
    max_pages_buffered: int = Field(default=64, ge=4, le=4096)
    malformed_retries: int = Field(default=3, ge=1, le=20)


class LiveSettings(BaseModel):
    """The WebSocket follower."""

    model_config = _STRICT

    enabled: bool = True
    streams_per_connection: int = Field(default=200, ge=1, le=1024)
    silence_timeout_s: float = Field(default=30.0, gt=0)
    close_margin_s: float = Field(default=30.0, gt=0)
    lifetime_s: float = Field(default=23.5 * 3600, gt=0)
    max_reconnects_per_5min: int = Field(default=60, ge=1)
    notify_channel: str = Field(default="candles", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class MetricsSettings(BaseModel):
    """Prometheus metrics and health endpoints."""

    model_config = _STRICT

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class RepairSettings(BaseModel):
    """`qryptify repair`."""

    model_config = _STRICT

    # Binance sometimes back-fills its own history: re-check recorded gaps older than this.
    recheck_gaps_older_than_days: float = Field(default=7.0, ge=0)


class Settings(BaseModel):
    """The whole configuration (see config.example.yaml for every key)."""

    model_config = _STRICT

    database_url: str | None = None
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    intervals: tuple[str, ...] = ("1m",)
    start_date: datetime = datetime(2023, 1, 1, tzinfo=UTC)
    db_pool_size: int = Field(default=4, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    binance: BinanceSettings = BinanceSettings()
    backfill: BackfillSettings = BackfillSettings()
    live: LiveSettings = LiveSettings()
    metrics: MetricsSettings = MetricsSettings()
    repair: RepairSettings = RepairSettings()

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> Any:
        return _unique_list(value, "symbol", lambda raw: validate_symbol(raw.upper()))

    @field_validator("intervals", mode="before")
    @classmethod
    def _intervals(cls, value: Any) -> Any:
        return _unique_list(value, "interval", lambda raw: str(Interval(raw)))

    @field_validator("start_date", mode="before")
    @classmethod
    def _start_date(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            parsed = datetime(value.year, value.month, value.day)
        elif isinstance(value, str):
            text = value.strip()
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"unparsable date {value!r}: use YYYY-MM-DD or ISO datetime"
                ) from None
        else:
            raise ValueError(f"unparsable date {value!r}: use YYYY-MM-DD or ISO datetime")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
        if parsed > datetime.now(UTC):
            raise ValueError(f"start date {value!s} is in the future")
        return parsed

    @property
    def start_ms(self) -> int:
        return datetime_to_ms(self.start_date)

    def stream_keys(self) -> list[StreamKey]:
        """Every configured (symbol, interval), symbols outer."""
        return [StreamKey(s, i) for s in self.symbols for i in self.intervals]


def _unique_list(value: Any, what: str, check: Callable[[str], str]) -> tuple[str, ...]:
    """A YAML list or a comma/space separated string of items, each checked, duplicates
    dropped, order kept; an empty list is an error naming `what`."""
    if isinstance(value, str):
        value = [s for s in value.replace(" ", ",").split(",") if s]
    if not value:
        raise ValueError(f"the {what} list is empty")
    out: list[str] = []
    for raw in value:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a {what}")
        item = check(raw.strip())
        if item not in out:
            out.append(item)
    return tuple(out)


# Environment names that are not simply QRYPTIFY_<KEY> (kept short because users type them).
_ENV_ALIASES = {
    "QRYPTIFY_DATABASE_URL": ("database_url",),
    "QRYPTIFY_REST_URL": ("binance", "rest_url"),
    "QRYPTIFY_WS_URL": ("binance", "ws_url"),
}


def _env_paths() -> dict[str, tuple[str, ...]]:
    """Map every QRYPTIFY_* variable we understand to its key path."""
    paths = dict(_ENV_ALIASES)
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub in annotation.model_fields:
                paths[f"QRYPTIFY_{name}_{sub}".upper()] = (name, sub)
        else:
            paths[f"QRYPTIFY_{name}".upper()] = (name,)
    return paths


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys, got {type(data).__name__}"
        )
    return data


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """One line naming the key and the value for the first validation problem."""
    loc = tuple(str(p) for p in error.get("loc", ()) if not isinstance(p, int))
    key = ".".join(loc) or "config"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    value: Any = data
    for part in loc:
        value = value.get(part) if isinstance(value, Mapping) else None
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    shown = "" if value is None or str(value) in msg else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and overrides (dotted keys, e.g. 'live.enabled').

    `path=None` reads ./config.yaml when it exists, else uses only the built-in defaults.
    """
    env = os.environ if environ is None else environ
    if path is None:
        data = _read_file(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else {}
    else:
        if not path.exists():
            raise ConfigError(f"config file {path}: not found")
        data = _read_file(path)
    source = {k: v for k, v in data.items()}
    known = _env_paths()
    for name, value in env.items():
        if name.startswith("QRYPTIFY_") and name in known:
            _set_path(source, known[name], value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(source, tuple(dotted.split(".")), value)
    try:
        return Settings.model_validate(source)
    except ValidationError as exc:
        raise ConfigError(f"config error: {_describe(exc.errors()[0], source)}") from None


# QRYPTIFY_* names read by our scripts and test tooling rather than by the settings.
_TOOLING_ENV_PREFIXES = ("QRYPTIFY_LOCALDB_", "QRYPTIFY_PG_", "QRYPTIFY_TIMESCALEDB_")


def unknown_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """QRYPTIFY_* variables that configure nothing (reported as a warning, likely a typo)."""
    env = os.environ if environ is None else environ
    known = _env_paths()
    return sorted(
        n
        for n in env
        if n.startswith("QRYPTIFY_") and n not in known and not n.startswith(_TOOLING_ENV_PREFIXES)
    )

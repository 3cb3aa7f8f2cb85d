"""setup_logging: text and JSON output, and password masking on every path a record takes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from rich.console import Console

from qryptify_ingestor.errors import ConfigError
from qryptify_ingestor.logs import mask_secrets, setup_logging

DSN = "postgresql://ingest:s3cr3t@db.example:5432/qryptify"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _capture(fmt: str, *, terminal: bool = False) -> tuple[io.StringIO, Console]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200, color_system=None)
    setup_logging("DEBUG", fmt, console)  # type: ignore[arg-type]
    return buf, console


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (DSN, "postgresql://ingest:***@db.example:5432/qryptify"),
        ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db"),
        ("postgresql://u:pa@ss@h/db", "postgresql://u:***@h/db"),
        ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
        ("password = 'two words' port=5", "password = *** port=5"),
        ('{"password": "x y", "user": "u"}', '{"password": ***, "user": "u"}'),
        ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
        ("postgresql://u@h/db and postgresql://h/db", "postgresql://u@h/db and postgresql://h/db"),
        ("password authentication failed for user", "password authentication failed for user"),
    ],
)
def test_mask_secrets(raw: str, masked: str) -> None:
    """Passwords in URLs and key=value forms are replaced by ***; other text is untouched."""
    assert mask_secrets(raw) == masked


def test_json_lines_have_fields_and_extras() -> None:
    """JSON format writes one object per line with ts, level, logger, msg and extra fields."""
    buf, _ = _capture("json")
    log = logging.getLogger("qryptify.test")
    log.info("wrote %d candles", 5, extra={"symbol": "BTCUSDT", "interval": "1m"})
    log.debug("plain")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first = orjson.loads(lines[0])
    assert first["level"] == "INFO"
    assert first["logger"] == "qryptify.test"
    assert first["msg"] == "wrote 5 candles"
    assert first["symbol"] == "BTCUSDT" and first["interval"] == "1m"
    assert first["ts"].endswith("+00:00")
    assert set(orjson.loads(lines[1])) == {"ts", "level", "logger", "msg"}


def test_text_lines_are_readable_without_a_terminal() -> None:
    """Text format off a TTY writes plain lines with level, logger, [symbol interval] and msg."""
    buf, _ = _capture("text")
    logging.getLogger("qryptify.svc").warning(
        "stream stalled", extra={"symbol": "ETHUSDT", "interval": "1h"}
    )
    line = buf.getvalue().strip()
    assert "WARNING qryptify.svc: [ETHUSDT 1h] stream stalled" in line
    assert "\x1b[" not in line


def test_text_on_terminal_uses_rich() -> None:
    """Text format on a TTY goes through rich and still shows the message."""
    buf, _ = _capture("text", terminal=True)
    logging.getLogger("qryptify.svc").info("backfill done")
    assert "backfill done" in buf.getvalue()
    assert "INFO" in buf.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_dsn_password_masked_in_message_args(fmt: str) -> None:
    """A DSN passed as a %-argument is masked in both formats."""
    buf, _ = _capture(fmt)
    logging.getLogger("qryptify").error("cannot connect to %s", DSN)
    out = buf.getvalue()
    assert "s3cr3t" not in out
    assert "postgresql://ingest:***@db.example:5432/qryptify" in out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_password_masked_in_exception_text(fmt: str) -> None:
    """A password inside an exception's message or traceback is masked too."""
    buf, _ = _capture(fmt)
    try:
        raise ConnectionError(f"connection to {DSN} failed; password=topsecret")
    except ConnectionError:
        logging.getLogger("qryptify").exception("database down")
    out = buf.getvalue()
    assert "ConnectionError" in out
    assert "s3cr3t" not in out and "topsecret" not in out
    assert "password=***" in out


def test_password_masked_in_extra_fields_and_child_loggers() -> None:
    """String extras are masked, for records from any logger (the filter is on the handler)."""
    buf, _ = _capture("json")
    logging.getLogger("psycopg.pool").warning("retrying", extra={"dsn": DSN})
    doc = orjson.loads(buf.getvalue())
    assert doc["dsn"] == "postgresql://ingest:***@db.example:5432/qryptify"


def test_setup_twice_replaces_the_handler() -> None:
    """Calling setup_logging again swaps our handler instead of doubling every line."""
    buf1, _ = _capture("json")
    buf2, _ = _capture("json")
    logging.getLogger("qryptify").info("once")
    assert buf1.getvalue() == ""
    assert len(buf2.getvalue().splitlines()) == 1


def test_invalid_level_is_a_config_error() -> None:
    """An unknown level name is rejected with a ConfigError naming it."""
    with pytest.raises(ConfigError, match="LOUD"):
        setup_logging("LOUD", "text", Console(file=io.StringIO()))

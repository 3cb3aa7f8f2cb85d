"""Logging setup: readable text or JSON lines, with database passwords masked everywhere.

Owns `setup_logging`, the JSON formatter and `SecretsFilter`. The filter sits on the handler,
so it sees every record that reaches the output, from any logger, and rewrites the message, the
exception text, the stack text and string `extra=` fields before any formatter runs:

    postgresql://user:secret@host/db   ->  postgresql://user:***@host/db
    password=secret / password: 'a b'  ->  password=*** / password: ***

The rest of the code can therefore log a DSN or a psycopg error (whose text often quotes the
connection string) without thinking about it.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.logging import RichHandler

from qryptify_ingestor.errors import ConfigError

# user:password@ in any URL; the password runs to the last '@' before the host (an unescaped
# '@' in a password is ambiguous, so we mask too much rather than too little).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s/]*(?=@)")
# key=value / key: value for password-like keys (libpq conninfo, PGPASSWORD=, JSON, YAML);
# libpq quotes values with single quotes and escapes with backslashes.
_KV_PASSWORD = re.compile(
    r"""(?P<head>["']?\b[\w-]*(?:password|passwd|pwd)["']?\s*[=:]\s*)"""
    r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}'"]+)""",
    re.IGNORECASE,
)
MASK = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# Extra fields worth showing in text mode, in this order.
_TEXT_EXTRAS = ("symbol", "interval")


def mask_secrets(text: str) -> str:
    """`text` with passwords in URLs and key=value pairs replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)


class SecretsFilter(logging.Filter):
    """Masks passwords in a record's message, exception and stack text and string extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # Bad %-arguments: leave the record alone so logging reports the error itself,
            # rather than raising from inside a filter into the caller's log call.
            message = None
        if message is not None:
            record.msg, record.args = mask_secrets(message), None
        if record.exc_info and not record.exc_text:
            # Formatter.format reuses exc_text when set, so the masked copy is what is printed.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, mask_secrets(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then `extra=` fields, then exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """Plain lines for files and pipes: time, level, logger, [symbol interval], message."""

    def __init__(self, *, with_time: bool = True) -> None:
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s" if with_time else "%(message)s"
        super().__init__(fmt)
        self.with_time = with_time

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def formatMessage(self, record: logging.LogRecord) -> str:
        tags = [str(getattr(record, k)) for k in _TEXT_EXTRAS if getattr(record, k, None)]
        if tags:
            record.message = f"[{' '.join(tags)}] {record.message}"
        return super().formatMessage(record)


_HANDLER_MARK = "_qryptify_handler"


def setup_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    console: Console | None = None,
) -> logging.Handler:
    """Configure the root logger once (calling again replaces our handler) and return it.

    text: a rich handler when `console` (default: stderr) is a terminal, else plain lines.
    json: JSON lines on the console's file (stderr by default).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"log level {level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if fmt not in ("text", "json"):
        raise ConfigError(f"log format {fmt!r}: expected 'text' or 'json'")
    console = console if console is not None else Console(stderr=True)
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(JsonFormatter())
    elif console.is_terminal:
        # rich_tracebacks off: rich renders exceptions from exc_info (and can show locals),
        # which would bypass the masking; the formatter prints our masked exc_text instead.
        handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(TextFormatter(with_time=False))
    else:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(TextFormatter())
    handler.addFilter(SecretsFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # One line per HTTP request on the metrics port is noise, not information.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler

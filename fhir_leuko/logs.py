"""Log configuration for ``fhir-leuko serve``: uvicorn's own loggers, plus ours.

uvicorn configures only its ``uvicorn.*`` loggers. Without this, every ``fhir_leuko`` line
below WARNING went nowhere: the one line per CDS call (service, hookInstance, iss, jti, card
count, time taken), feedback counts, notifications received and the worker's write-backs.
Those lines carry identifiers of calls and resources, never patient data or tokens
(``docs/cds-hooks.md``, "Logs").

The level is the ``[service] log_level`` setting (``FHIR_LEUKO_LOG_LEVEL``), ``info`` by
default. Lines go to stderr with a UTC timestamp, for journald, a container runtime or a
log shipper to collect.

One record is one line, whatever it quotes. Values that reach a log line come from callers
(a ``hookInstance``, a ``jti``, an issuer) and may hold a newline that would start a forged
line, so escaping is done here, by the formatters every handler uses, not at each call site.
``log_format = "json"`` (``FHIR_LEUKO_LOG_FORMAT``) writes one JSON object per line instead.
"""

from __future__ import annotations

import copy
import logging
import logging.config
import sys
import time
from typing import Any

import orjson

from fhir_leuko.errors import ConfigError

LEVELS = ("critical", "error", "warning", "info", "debug")
FORMATS = ("text", "json")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _escapes() -> dict[int, str]:
    """Backslash, C0 and C1 controls, DEL and the Unicode line and paragraph separators."""
    table = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)):
        table.setdefault(code, f"\\x{code:02x}")
    table[0x2028] = "\\u2028"
    table[0x2029] = "\\u2029"
    return table


_ESCAPES = _escapes()


def escape(text: str) -> str:
    """``text`` on one line, unambiguously: ``\\n`` for a newline, ``\\\\`` for a backslash,
    ``\\xNN`` for other control characters."""
    return text.translate(_ESCAPES)


class UtcFormatter(logging.Formatter):
    """``2026-11-23T13:05:01.123Z INFO fhir_leuko.cdshooks.router: cds ...``, escaped.

    The whole line is escaped, traceback included (at ``debug``): a record never spans two
    lines, so no value it quotes can start a line of its own.
    """

    @staticmethod
    def converter(secs: float | None = None) -> time.struct_time:
        return time.gmtime(secs)

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


class JsonFormatter(UtcFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, and
    ``exc_type`` / ``exc`` when a traceback is logged (``debug`` only)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, str] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # JSON escapes control characters; U+2028/9 are legal raw in JSON, yet some readers
        # split lines on them.
        line = orjson.dumps(doc).decode("utf-8")
        return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def check_level(level: str) -> str:
    """The level, lower-cased; a :class:`ConfigError` naming the choices otherwise."""
    low = level.strip().lower()
    if low not in LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LEVELS)}, got {level!r:.40}")
    return low


def check_format(log_format: str) -> str:
    """The log format, lower-cased; a :class:`ConfigError` naming the choices otherwise."""
    low = log_format.strip().lower()
    if low not in FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(FORMATS)}, got {log_format!r:.40}")
    return low


def formatter_config(log_format: str = "text") -> dict[str, Any]:
    """The ``dictConfig`` entry of the formatter for ``log_format``."""
    if check_format(log_format) == "json":
        return {"()": f"{__name__}.JsonFormatter"}
    return {"()": f"{__name__}.UtcFormatter", "fmt": FORMAT}


#: Third-party loggers `serve` formats as its own, at WARNING and above.
LIBRARY_LOGGERS = ("psycopg", "httpx", "httpcore")


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: uvicorn's loggers plus the ``fhir_leuko``
    tree, every handler with our escaping formatter (uvicorn's lines too)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    formatter = formatter_config(log_format)
    cfg["formatters"] = {name: dict(formatter) for name in (*cfg["formatters"], "fhir_leuko")}
    cfg["handlers"]["fhir_leuko"] = {
        "class": "logging.StreamHandler",
        "formatter": "fhir_leuko",
        "stream": "ext://sys.stderr",
    }
    cfg["loggers"]["fhir_leuko"] = {
        "handlers": ["fhir_leuko"],
        "level": check_level(level).upper(),
        "propagate": False,
    }
    # Libraries whose warnings an operator needs (the database pool cannot connect): through
    # the same handler, so every line of `serve` has one format (a JSON log stays JSON lines).
    # Warnings only: httpx logs every request URL at INFO, and those name patients.
    for library in LIBRARY_LOGGERS:
        cfg["loggers"][library] = {
            "handlers": ["fhir_leuko"],
            "level": "WARNING",
            "propagate": False,
        }
    return cfg


def configure(level: str, log_format: str = "text") -> dict[str, Any]:
    """Apply :func:`log_config` in this process (before the app is built, so its start-up
    warnings are formatted too) and return it for uvicorn to apply in worker processes."""
    cfg = log_config(level, log_format)
    logging.config.dictConfig(cfg)
    return cfg


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_cli(level: str = "warning") -> None:
    """The other CLI commands (``evaluate``, ``fetch``, ``subscribe``): warnings such as the
    FHIR client's retries go to stderr through the escaping formatter, not Python's bare
    last-resort handler. Idempotent; records still propagate to any root handler."""
    tree = logging.getLogger("fhir_leuko")
    if not any(isinstance(h, StderrHandler) for h in tree.handlers):
        handler = StderrHandler(check_level(level).upper())
        handler.setFormatter(UtcFormatter(FORMAT))
        tree.addHandler(handler)

"""Log configuration for ``fhir-leuko serve``: uvicorn's own loggers, plus ours.

uvicorn configures only its ``uvicorn.*`` loggers. Without this, every ``fhir_leuko`` line
below WARNING went nowhere: the one line per CDS call (service, hookInstance, iss, jti, card
count, time taken), feedback counts, notifications received and the worker's write-backs.
Those lines carry identifiers of calls and resources, never patient data or tokens
(``docs/cds-hooks.md``, "Logs").

The level is the ``[service] log_level`` setting (``FHIR_LEUKO_LOG_LEVEL``), ``info`` by
default. Lines go to stderr with a UTC timestamp, for journald, a container runtime or a
log shipper to collect.
"""

from __future__ import annotations

import copy
import logging
import logging.config
import time
from typing import Any

from fhir_leuko.errors import ConfigError

LEVELS = ("critical", "error", "warning", "info", "debug")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """``2026-11-23T13:05:01.123Z INFO fhir_leuko.cdshooks.router: cds ...``."""

    @staticmethod
    def converter(secs: float | None = None) -> time.struct_time:
        return time.gmtime(secs)

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


def check_level(level: str) -> str:
    """The level, lower-cased; a :class:`ConfigError` naming the choices otherwise."""
    low = level.strip().lower()
    if low not in LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LEVELS)}, got {level!r:.40}")
    return low


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: uvicorn's defaults plus the ``fhir_leuko`` tree."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["fhir_leuko"] = {"()": f"{__name__}.UtcFormatter", "fmt": FORMAT}
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
    return cfg


def configure(level: str) -> dict[str, Any]:
    """Apply :func:`log_config` in this process (before the app is built, so its start-up
    warnings are formatted too) and return it for uvicorn to apply in worker processes."""
    cfg = log_config(level)
    logging.config.dictConfig(cfg)
    return cfg

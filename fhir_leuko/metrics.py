"""Prometheus metrics (``GET /metrics``) and readiness checks (``GET /readyz``).

Labels carry bounded vocabularies only: service ids, HTTP statuses, notification shapes, job
kinds, rejection reasons. Never a patient, a resource id, an issuer or a jti: a label value
becomes a time series kept for weeks, and ids in it would be patient data in the monitoring
system.

Under ``serve --workers N`` each server process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` before the processes start) and ``/metrics``
answers the sum over all of them, whichever process is asked. The queue's gauges are read from
the database at scrape time, so every replica reports the same, shared queue.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "CheckedRouter",
    "ReadinessCheck",
    "exposition",
    "jwt_rejection_reason",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

CDS_REQUESTS = Counter(
    "fhir_leuko_cds_requests",
    "CDS Hooks calls answered, by service, endpoint (discovery, hook, feedback) and HTTP status",
    ["service", "endpoint", "status"],
)
CDS_LATENCY = Histogram(
    "fhir_leuko_cds_request_duration_seconds",
    "Time to answer a CDS Hooks call, by service and endpoint",
    ["service", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
JWT_REJECTIONS = Counter(
    "fhir_leuko_jwt_rejections",
    "CDS client JWTs refused (401), by the check that failed",
    ["reason"],
)
NOTIFICATIONS = Counter(
    "fhir_leuko_notifications",
    "Subscription notifications received, by shape (unknown before parsing) and HTTP answer",
    ["shape", "answer"],
)
JOBS = Counter(
    "fhir_leuko_jobs",
    "Notification worker jobs run, by kind and outcome (done, retry, dead)",
    ["kind", "outcome"],
)
DEAD_LETTERS = Counter(
    "fhir_leuko_dead_letters",
    "Jobs given up and kept in the dead-letter table, by kind",
    ["kind"],
)
FHIR_ERRORS = Counter(
    "fhir_leuko_fhir_server_errors",
    "FHIR server failures seen, by HTTP status (none: no answer) and by who saw them",
    ["status", "source"],
)

# The failed check, from the one sentence AuthError carries; first match wins.
_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        ("missing", r"no Authorization header"),
        ("not_configured", r"no trusted CDS client"),
        ("replay", r"already used"),
        ("expired", r"has expired"),
        ("time", r"iat is in the future|not valid yet|exp is not after|lifetime"),
        ("audience", r"\baud\b"),
        ("tenant", r"tenant"),
        ("algorithm", r"\balg\b"),
        ("signature", r"signature"),
        ("issuer", r"issuer|jku|JWKS|no key|kid|key_ops"),
        ("malformed", r"Bearer|well-formed|payload|header|claim|jti"),
    )
)


def jwt_rejection_reason(message: str) -> str:
    """The bounded label for an AuthError's sentence (which may quote an iss or jti)."""
    for reason, pattern in _REASONS:
        if pattern.search(message):
            return reason
    return "other"


def fhir_error(status: int | None, source: str) -> None:
    FHIR_ERRORS.labels(status=str(status) if status else "none", source=source).inc()


# --------------------------------------------------------------------------- readiness

ReadinessCheck = Callable[[], "str | None"]
"""A named check returns ``None`` when fine, else one sentence saying what is wrong."""


@dataclass
class _Checks:
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    collectors: list[Collector] = field(default_factory=list)


class CheckedRouter(APIRouter):
    """An APIRouter that also brings readiness checks and scrape-time metrics to the app."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ops = _Checks()


class QueueCollector(Collector):
    """Queue depth by state, due backlog and worker threads alive, read at scrape time."""

    def __init__(
        self,
        stats: Callable[[], dict[str, int]],
        due: Callable[[], int],
        workers_alive: Callable[[], int],
    ) -> None:
        self._stats = stats
        self._due = due
        self._alive = workers_alive

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            stats = self._stats()
            due = self._due()
        except Exception:  # the database is down: no queue samples, /readyz says why
            stats, due = {}, -1
        jobs = GaugeMetricFamily(
            "fhir_leuko_queue_jobs", "Jobs in the shared queue by state", labels=["state"]
        )
        for state, count in sorted(stats.items()):
            jobs.add_metric([state], count)
        yield jobs
        if due >= 0:
            yield GaugeMetricFamily(
                "fhir_leuko_queue_due_jobs", "Queued jobs that are due now (the backlog)", due
            )
        yield GaugeMetricFamily(
            "fhir_leuko_worker_threads_alive",
            "Notification worker threads running in the process that answered",
            self._alive(),
        )


def exposition(collectors: Iterable[Collector]) -> bytes:
    """The text exposition: this process's (or, multiprocess, every process's) counters, then
    the scrape-time collectors of the app that answers."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    local = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        local.register(collector)
    return body + generate_latest(local)

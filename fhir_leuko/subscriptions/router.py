"""HTTP endpoints FHIR servers notify: ``/notify/{name}`` and ``/notify/{name}/{Type}/{id}``.

One configured endpoint (``[endpoints.NAME]``) per server. Every shape of
``docs/subscriptions.md`` §5 is accepted: classic R4 ping (empty POST), R4 with payload (HAPI
``PUT`` / ``DELETE`` on ``{endpoint}/Observation/{id}``), HAPI payload-search transactions,
Backport IG R4/R4B and R5 notification Bundles, Medplum's bare resource.

Order of work, and why:

1. the shared-secret header, in constant time, before the body is read (an unauthenticated
   caller must not make us parse anything);
2. the body, capped at ``service.max_body_bytes`` (413 above it);
3. the HMAC of the raw body bytes, when the endpoint has one (Medplum ``X-Signature``);
4. parse (400 + OperationOutcome for a shape we do not know);
5. store the work in the durable queue, then answer ``204 No Content``: accepted by HAPI's
   client (which chokes on other bodies), Medplum and the Backport IG alike. Evaluation runs
   afterwards, in the worker (``worker.py``), so servers never time out on us.

Never 404/405/412 to a notification: the prefix route answers any ``Type/id`` below the
endpoint, and ``If-Match`` is ignored. If the queue cannot store the work we answer 503, so
the server retries instead of believing us. Logs never contain headers, bodies or ids of
patients or resources.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request, Response

from fhir_leuko.config import Settings, SubscriptionEndpoint
from fhir_leuko.errors import AuthError, ConfigError, InputError
from fhir_leuko.metrics import NOTIFICATIONS, CheckedRouter, QueueCollector
from fhir_leuko.outcomes import BEARER_CHALLENGE, FHIR_JSON_MEDIA, outcome_response
from fhir_leuko.storage import StorageError
from fhir_leuko.subscriptions.notifications import (
    Notification,
    check_hmac,
    check_secret,
    parse_notification,
)
from fhir_leuko.subscriptions.queue import Queue
from fhir_leuko.subscriptions.worker import (
    WorkerThread,
    enqueue_catch_up,
    enqueue_change,
    enqueue_gap,
    is_relevant,
    open_queue,
    subscription_key,
)

__all__ = ["Accepted", "accept", "build_router", "check_endpoints"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_METHODS = ("POST", "PUT", "DELETE")
_OUTCOME_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array"}},
}
_ROUTE: dict[str, Any] = {
    "status_code": 204,
    "response_class": Response,
    "responses": {
        status: {
            "description": text,
            # fhir+json from us; json when the app's own handlers answer (unmatched paths).
            "content": {
                "application/fhir+json": {"schema": _OUTCOME_SCHEMA},
                "application/json": {"schema": _OUTCOME_SCHEMA},
            },
        }
        for status, text in (
            (400, "Not a notification shape we know"),
            (401, "Secret header or signature missing or wrong"),
            (404, "No endpoint of this name is configured"),
            (413, "Body larger than service.max_body_bytes"),
            (500, "The endpoint is not configured with a secret"),
            (503, "The notification could not be stored; the server should resend"),
        )
    },
}


@dataclass(frozen=True)
class Accepted:
    """What one notification became in the queue (for logs and tests)."""

    new_jobs: int
    duplicates: int
    ignored: int
    gap: bool


def check_endpoints(endpoints: Mapping[str, SubscriptionEndpoint]) -> None:
    """Refuse to start with an endpoint anyone could post to: each needs a secret header
    value or an HMAC secret (fail closed, like ``check_secret``)."""
    for name, ep in endpoints.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"endpoint name {name[:70]!r} must be 1-64 of A-Z a-z 0-9 _ -")
        if not ep.header_value and not ep.hmac_secret:
            raise ConfigError(
                f"[endpoints.{name}] needs header_value (the secret the Subscription's "
                "channel.header sends) or hmac_secret"
            )


def accept(queue: Queue, name: str, n: Notification, *, now: float, gap_grace_s: float) -> Accepted:
    """Turn a parsed notification into queued jobs (sync: run it in a worker thread).

    Each job is stored before its event number is recorded: if we crash in between, the
    server's resend finds the job already there, and the number is recorded then. The
    other order would mark the event seen with no work queued, losing it.
    """
    sub_key = subscription_key(name, n.subscription_id)
    new = dup = ignored = 0
    gap = False

    def note_gap(has_gap: bool) -> None:
        nonlocal gap
        if not has_gap:
            return
        state = queue.subscription_state(sub_key)
        if state is None:
            return
        through = max(state.highest_seen or 0, state.highest_reported or 0)
        enqueue_gap(queue, name, sub_key, through, now + gap_grace_s)
        gap = True

    if n.kind in ("handshake", "heartbeat", "query-status"):
        if n.events_since_start is not None:
            note_gap(queue.note_heartbeat(sub_key, n.events_since_start, now=now).has_gap)
        return Accepted(0, 0, 0, gap)

    if n.kind == "ping" or (n.kind in ("event", "query-event") and not n.events):
        searched = enqueue_catch_up(queue, name, sub_key, now)
        if n.events_since_start is not None:
            note_gap(queue.note_heartbeat(sub_key, n.events_since_start, now=now).has_gap)
        return Accepted(int(searched), int(not searched), 0, gap)

    last_gap = False
    fresh: bool | None
    for ev in n.events:
        event_key = f"evt:{sub_key}:{ev.event_number}" if ev.event_number is not None else None
        if ev.focus is None:  # "empty" content: only a search can say what changed
            fresh = enqueue_catch_up(queue, name, sub_key, now)
        elif n.kind != "deletion" and ev.resource is not None and not is_relevant(ev.resource):
            ignored += 1
            fresh = None
        else:
            fresh = enqueue_change(
                queue,
                name,
                ev.focus,
                version=ev.version_id,
                patient=ev.patient,
                resource=ev.resource,
                event_key=event_key,
                deleted=n.kind == "deletion",
                now=now,
            )
        if fresh is not None:
            new += int(fresh)
            dup += int(not fresh)
        if ev.event_number is not None:
            last_gap = queue.record_event(sub_key, ev.event_number, now=now).has_gap
    if n.events_since_start is not None and any(e.event_number is not None for e in n.events):
        last_gap = queue.note_heartbeat(sub_key, n.events_since_start, now=now).has_gap
    note_gap(last_gap)
    return Accepted(new, dup, ignored, gap)


def _outcome(status: int, code: str, text: str) -> Response:
    """A FHIR endpoint's error: an OperationOutcome in ``application/fhir+json``."""
    headers = BEARER_CHALLENGE if status == 401 else None
    return outcome_response(status, code, text, headers, media_type=FHIR_JSON_MEDIA)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _State:
    """The queue connection of the HTTP side and the worker thread, opened by the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue: Queue | None = None
        self.worker: WorkerThread | None = None

    def get_queue(self) -> Queue:
        if self.queue is None:  # served without the lifespan (a bare TestClient)
            self.queue = open_queue(self.settings)
        return self.queue

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    # Readiness (GET /readyz) and scrape-time metrics; called from worker threads.

    def check_queue(self) -> str | None:
        """The database answers and the backlog is under ``readyz_max_queue_depth``."""
        queue = self.get_queue()
        queue.ping()
        due = queue.due_count()
        bound = self.settings.service.readyz_max_queue_depth
        if due > bound:
            return f"{due} queued jobs are due, more than readyz_max_queue_depth ({bound})"
        return None

    def check_worker(self) -> str | None:
        worker = self.worker
        if worker is None or worker.alive < worker.concurrency:
            alive = 0 if worker is None else worker.alive
            return f"the notification worker is not running ({alive} threads alive)"
        return None

    def workers_alive(self) -> int:
        return 0 if self.worker is None else self.worker.alive


def build_router(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    worker_kwargs: Mapping[str, Any] | None = None,
) -> APIRouter:
    """The notification routes, plus a lifespan that opens the queue and starts the worker
    (``service.worker_enabled``) with the app and stops both with it.

    ``worker_kwargs`` go to the `Worker` (tests inject a client factory or a stage hook).
    """
    check_endpoints(settings.endpoints)
    state = _State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No endpoint configured: no queue file, no thread (the CDS service runs alone).
        if settings.endpoints:
            state.get_queue()
            if settings.service.worker_enabled:
                state.worker = WorkerThread(settings, **dict(worker_kwargs or {}))
                state.worker.start()
        try:
            yield
        finally:
            state.close()

    router = CheckedRouter(lifespan=lifespan, tags=["subscriptions"])
    if settings.endpoints:
        router.ops.readiness["queue"] = state.check_queue
        if settings.service.worker_enabled:
            router.ops.readiness["worker"] = state.check_worker
        router.ops.collectors.append(
            QueueCollector(
                lambda: state.get_queue().stats(),
                lambda: state.get_queue().due_count(),
                state.workers_alive,
            )
        )

    async def notify(request: Request, name: str, rest: str = "") -> Response:
        endpoint = settings.endpoints.get(name)
        if endpoint is None:
            return _outcome(404, "not-found", "no notification endpoint has this name")
        headers = dict(request.headers)
        try:
            if endpoint.header_value:
                check_secret(headers, {endpoint.header_name: endpoint.header_value})
            try:
                body = await _read_body(request, settings.service.max_body_bytes)
            except _TooLarge:
                return _outcome(
                    413,
                    "too-long",
                    f"notification body is larger than {settings.service.max_body_bytes} bytes",
                )
            if endpoint.hmac_secret:
                check_hmac(headers, body, endpoint.hmac_secret, endpoint.hmac_header)
            if not endpoint.header_value and not endpoint.hmac_secret:
                raise ConfigError("endpoint has no secret")
        except AuthError as err:
            logger.warning("notification to %s refused: %s", name, err)
            return _outcome(401, "login", "authentication failed")
        except ConfigError:
            logger.error("notification endpoint %s has no secret configured", name)
            return _outcome(500, "exception", "this endpoint is not configured")

        try:
            notification = parse_notification(request.method, rest, headers, body)
        except InputError as err:
            logger.warning("notification to %s not understood: %s", name, err)
            return _outcome(400, "structure", str(err))
        request.state.notification_shape = notification.shape

        queue = state.get_queue()
        try:
            accepted = await anyio.to_thread.run_sync(
                lambda: accept(
                    queue,
                    name,
                    notification,
                    now=clock(),
                    gap_grace_s=settings.service.gap_grace_s,
                )
            )
        except StorageError as err:
            logger.error("notification to %s not stored: %s", name, err)
            return _outcome(503, "transient", "the notification could not be stored; resend")
        logger.info(
            "notification %s/%s to %s: %d new, %d duplicate, %d ignored%s",
            notification.shape,
            notification.kind,
            name,
            accepted.new_jobs,
            accepted.duplicates,
            accepted.ignored,
            ", gap in event numbers" if accepted.gap else "",
        )
        return Response(status_code=204)

    async def counted(request: Request, name: str, rest: str = "") -> Response:
        response = await notify(request, name, rest)
        shape = getattr(request.state, "notification_shape", "unknown")
        NOTIFICATIONS.labels(shape=shape, answer=str(response.status_code)).inc()
        return response

    async def notify_root(request: Request, name: str) -> Response:
        return await counted(request, name)

    async def notify_below(request: Request, name: str, rest: str) -> Response:
        return await counted(request, name, rest)

    # One route per path serves all three methods, so a 405 names them all in Allow. OpenAPI
    # wants one operationId per method, which a multi-method route cannot give: the schema is
    # described by per-method twins registered after it, which requests never reach.
    for path, endpoint, suffix in (
        ("/notify/{name}", notify_root, ""),
        ("/notify/{name}/{rest:path}", notify_below, "_below"),
    ):
        router.add_api_route(
            path, endpoint, methods=list(_METHODS), include_in_schema=False, **_ROUTE
        )
        for method in _METHODS:
            router.add_api_route(
                path,
                endpoint,
                methods=[method],
                operation_id=f"notify_{method.lower()}{suffix}",
                summary=(
                    f"Receive a FHIR Subscription notification ({method})"
                    if not suffix
                    else f"Receive a rest-hook with payload ({method} {{endpoint}}/Type/id)"
                ),
                **_ROUTE,
            )
    return router

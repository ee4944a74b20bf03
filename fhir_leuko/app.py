"""The FastAPI application: routers, error shapes, body limit, CORS, health, metrics.

``create_app(settings)`` serves every router in :data:`ROUTER_BUILDERS` (the CDS Hooks
services and the Subscription notification endpoints). Another part is served by adding its
``build_router(settings) -> APIRouter`` to that tuple; a router that opens resources
(databases, HTTP clients) closes them in its own ``lifespan``, which FastAPI runs with the
app's.

Errors: every ``fhir_leuko.errors.LeukoError`` and every HTTP error raised by a route becomes
an OperationOutcome here (CDS Hooks 3.0 makes that a SHOULD; 2.0 allows any body); its body
is built by ``fhir_leuko.outcomes``, which the notification endpoints use for their own
``application/fhir+json`` answers. The status is the exception's ``http_status`` when it
declares one, else the type's default below. A bad JWT gets a bare 401 with no detail
(cds-hooks.org best practices); the reason is logged, never the token. Nothing logged here
contains a request body or header.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_leuko import __version__, metrics
from fhir_leuko.cdshooks import models
from fhir_leuko.cdshooks import router as cdshooks_router
from fhir_leuko.cdshooks.services import SERVICES
from fhir_leuko.config import Settings
from fhir_leuko.errors import AuthError, ConfigError, FhirServerError, InputError, LeukoError
from fhir_leuko.outcomes import BEARER_CHALLENGE, outcome_response
from fhir_leuko.subscriptions import router as subscriptions_router
from fhir_leuko.web import site

logger = logging.getLogger("fhir_leuko.app")

RouterBuilder = Callable[[Settings], Any]  # -> fastapi.APIRouter

#: The routers this app serves, in order.
ROUTER_BUILDERS: tuple[RouterBuilder, ...] = (
    cdshooks_router.build_router,
    subscriptions_router.build_router,
    site.build_router,
)

#: FHIR issue-type code and default HTTP status per error type, most specific first.
_DEFAULTS: tuple[tuple[type[LeukoError], int, str], ...] = (
    (AuthError, 401, "login"),
    (InputError, 400, "invalid"),
    (ConfigError, 500, "exception"),
    (FhirServerError, 502, "transient"),
    (LeukoError, 500, "exception"),
)
_CODE_FOR_STATUS = {
    400: "invalid",
    401: "login",
    404: "not-found",
    405: "not-supported",
    408: "timeout",
    412: "incomplete",
    413: "too-long",
    415: "not-supported",
    503: "transient",
}


class RequestTooLarge(InputError):
    """The body is over ``max_body_bytes``."""

    http_status = 413


class RequestTimeout(InputError):
    """The body did not arrive within ``body_timeout_s``."""

    http_status = 408


async def _leuko_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LeukoError)
    status, code = next((s, c) for t, s, c in _DEFAULTS if isinstance(exc, t))
    status = int(getattr(exc, "http_status", status))
    code = _CODE_FOR_STATUS.get(status, code)
    if isinstance(exc, AuthError):
        metrics.JWT_REJECTIONS.labels(reason=metrics.jwt_rejection_reason(str(exc))).inc()
        # The reason names the failed check and quoted iss/jti, never the token.
        logger.warning("401 on %s %s: %s", request.method, route_template(request.scope), exc)
        return outcome_response(401, "login", "Authentication failed", headers=BEARER_CHALLENGE)
    if isinstance(exc, FhirServerError):
        metrics.fhir_error(getattr(exc, "status", None), "cds")
    if status >= 500:
        logger.error(
            "%d on %s %s: %s",
            status,
            request.method,
            route_template(request.scope),
            type(exc).__name__,
        )
        return outcome_response(status, code, "The service could not answer this request")
    # The rest of an unread body must not be read as the next request on this connection.
    unread = {"Connection": "close"} if status in (408, 413) else None
    return outcome_response(status, code, str(exc), headers=unread)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_FOR_STATUS.get(
        exc.status_code, "exception" if exc.status_code >= 500 else "invalid"
    )
    return outcome_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return outcome_response(400, "invalid", "the request does not match the API")


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/notify/{name}/{rest:path}``), never the request
    path: a path can name a patient or a resource (``/notify/hapi/Observation/obs-1``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(no route)"


def _log_unexpected(scope: Scope, exc: BaseException) -> None:
    # Type and place only: an exception message or traceback may quote patient data.
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    logger.error(
        "500 on %s %s: %s%s",
        scope.get("method"),
        route_template(scope),
        type(exc).__name__,
        where,
    )


class Guard:
    """Body limits and last-resort error answer, as pure ASGI (cheap on every request).

    Bodies over ``limit`` bytes are refused before anyone parses them: a declared
    Content-Length at once, a chunked body as it arrives (the app's read fails with
    :class:`RequestTooLarge`). A body still arriving ``body_timeout`` seconds after the
    headers is answered 408 (:class:`RequestTimeout`), so a slow sender cannot hold a
    request open. A client that hangs up mid-body is nobody's error: no 500, no log line
    above debug. An exception no handler took becomes a 500 OperationOutcome and one log
    line with its type and place; it is not re-raised, because the server would then log
    the full traceback, whose messages may quote patient data.
    """

    def __init__(self, app: ASGIApp, limit: int, body_timeout: float = 0.0) -> None:
        self.app = app
        self.limit = limit
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    text = (
                        f"the request body is larger than {self.limit} bytes"
                        if declared > 0
                        else "the Content-Length header is not a number"
                    )
                    status = 413 if declared > 0 else 400
                    response = outcome_response(status, _CODE_FOR_STATUS[status], text)
                    await response(scope, receive, send)
                    return
        seen = 0
        # Only the body is timed: after it, a receive() waits for the client to hang up.
        # asyncio's own timeout: a fifth of the cost of anyio's cancel scope (measured).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout if self.body_timeout > 0 else None

        async def limited() -> Message:
            nonlocal seen, deadline
            if deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(
                        f"the request body did not arrive within {self.body_timeout:g} s"
                    ) from None
            if message["type"] == "http.request":
                if not message.get("more_body", False):
                    deadline = None
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestTooLarge(f"the request body is larger than {self.limit} bytes")
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except ClientDisconnect:
            logger.debug("client went away on %s %s", scope.get("method"), route_template(scope))
        except Exception as exc:
            _log_unexpected(scope, exc)
            if not started:
                response = outcome_response(
                    500, "exception", "The service could not answer this request"
                )
                await response(scope, receive, send)


class CdsMetrics:
    """Counts and times every CDS Hooks call by service, endpoint and final status (pure ASGI:
    it sees the status the error handlers chose). Other paths pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(cdshooks_router.SERVICES_PATH) or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        parts = path[len(cdshooks_router.SERVICES_PATH) :].strip("/").split("/")
        if parts == [""]:
            service, endpoint = "-", "discovery"
        else:
            # Only ids we serve become label values: anything else is one "unknown" series.
            service = parts[0] if parts[0] in SERVICES else "unknown"
            endpoint = "feedback" if parts[1:] == ["feedback"] else "hook"
        status = 500
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            metrics.CDS_REQUESTS.labels(service, endpoint, str(status)).inc()
            metrics.CDS_LATENCY.labels(service, endpoint).observe(time.perf_counter() - started)


_gc_tuned = False


def _tune_gc(gen0_threshold: int) -> None:
    """Once per process, when the server starts: freeze what start-up allocated, raise gen 0.

    Everything imported and built so far lives as long as the process, so ``gc.freeze()``
    keeps the collector from walking it again on every full collection; and a hook call's
    parsed prefetch (tens of thousands of acyclic objects, freed by reference counting)
    would otherwise trigger dozens of collections per request. Measured in
    benchmarks/http_bench.py: about 2x the hooks/s and a third of the p99.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def create_app(
    settings: Settings, *, routers: Sequence[RouterBuilder] = ROUTER_BUILDERS
) -> FastAPI:
    """The ASGI app for ``settings``."""
    svc = settings.service
    if svc.insecure_dev:
        logger.warning(
            "INSECURE DEV MODE: CDS Hooks JWTs are NOT verified; anyone who can reach %s "
            "can call the services. Never run this with real patient data.",
            svc.public_base_url,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _tune_gc(svc.gc_gen0_threshold)
        app.state.readiness_threads = anyio.CapacityLimiter(_READINESS_THREADS)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="fhir-leuko",
        version=__version__,
        summary="Leukopenia and neutropenia decision support over FHIR R4 (CDS Hooks 2.0)",
        docs_url=None,
        redoc_url=None,
    )
    readiness: dict[str, metrics.ReadinessCheck] = {}
    collectors: list[Collector] = []
    for build in routers:
        router = build(settings)
        if isinstance(router, metrics.CheckedRouter):
            readiness.update(router.ops.readiness)
            collectors.extend(router.ops.collectors)
        app.include_router(router)

    @app.get(
        "/healthz",
        tags=["operations"],
        response_model=None,
        responses={200: {"description": "The process is up"}},
    )
    async def healthz() -> Response:
        """Liveness only; needs no JWT and touches no data."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=None,
        responses={
            200: {"description": "Ready: database reachable, worker alive, queue not backed up"},
            503: {"description": "Not ready; the body names the failing checks"},
        },
    )
    async def readyz(request: Request) -> Response:
        """Readiness for a load balancer: every check of the configured parts passes."""
        results = await _run_checks(
            readiness,
            timeout_s=svc.readyz_timeout_s,
            # Set at start-up; an app driven without its lifespan gets a limiter per probe.
            limiter=getattr(request.app.state, "readiness_threads", None)
            or anyio.CapacityLimiter(_READINESS_THREADS),
        )
        ready = all(v == "ok" for v in results.values())
        body = {"status": "ready" if ready else "not ready", "checks": results}
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_model=None,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus_metrics() -> Response:
        """Counters, histograms and queue gauges; no patient data or ids in any label."""
        body = await anyio.to_thread.run_sync(metrics.exposition, collectors)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    handlers: tuple[
        tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]], ...
    ] = (
        (LeukoError, _leuko_error),
        (StarletteHTTPException, _http_error),
        (RequestValidationError, _validation_error),
    )
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)

    # Added last = outermost: CORS answers preflights before the body limit or any route,
    # and without a JWT, as browsers (the public sandbox) send none on OPTIONS.
    app.add_middleware(Guard, limit=svc.max_body_bytes, body_timeout=svc.body_timeout_s)
    app.add_middleware(CdsMetrics)
    if svc.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(svc.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            # Chrome's Private Network Access: the public sandbox calling a service on
            # localhost or an intranet needs this answer too (for the listed origins only).
            allow_private_network=True,
            max_age=600,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(models.openapi_schemas(cdshooks_router.REQUEST_MODELS))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


#: Threads for readiness checks, apart from the ones calls use: a probe whose check is stuck
#: on an unreachable database never takes a thread a CDS call or a notification needs.
_READINESS_THREADS = 8


async def _run_checks(
    checks: Mapping[str, metrics.ReadinessCheck],
    *,
    timeout_s: float,
    limiter: anyio.CapacityLimiter,
) -> dict[str, str]:
    """Every check at once, each in a thread; one that has not answered in ``timeout_s`` fails.

    A load balancer's probe must get its answer within its own time-out (commonly 2-5 s), and
    a database that is down makes a check wait ``db_timeout_s`` for a connection, once per
    check. So checks run side by side and the probe answers 503 at ``timeout_s`` at the
    latest, naming the check that did not answer; its thread is left to finish on its own.
    """
    results = {name: f"no answer within {timeout_s:g} s" for name in checks}

    async def run(name: str, check: metrics.ReadinessCheck) -> None:
        results[name] = await anyio.to_thread.run_sync(
            _answer, check, abandon_on_cancel=True, limiter=limiter
        )

    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as tg:
            for name, check in checks.items():
                tg.start_soon(run, name, check)
    return results


def _answer(check: metrics.ReadinessCheck) -> str:
    try:
        problem = check()
    except LeukoError as err:
        problem = str(err)
    except Exception as err:  # a check must answer, not raise: say only the type
        problem = f"check failed ({type(err).__name__})"
    return "ok" if problem is None else problem


def create_app_from_environment() -> FastAPI:
    """App factory for multi-process serving: each process loads the same settings from the
    environment (``FHIR_LEUKO_CONFIG`` and ``FHIR_LEUKO_*``)."""
    from fhir_leuko import serving
    from fhir_leuko.config import load_settings

    settings = load_settings()
    serving.apply(settings.service)  # this worker process's header deadline
    return create_app(settings)

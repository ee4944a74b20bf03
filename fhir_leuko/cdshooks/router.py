"""CDS Hooks 2.0 HTTP endpoints: discovery, service calls and feedback.

Each call: JWT first (so an unauthenticated caller costs us no parsing), then the body and the
request envelope, then the service's handler (``cdshooks.handlers``): the hook's context,
prefetch-or-fetch, the one evaluation (``fhir_leuko.service.evaluate``) and the cards.
Errors are raised as ``fhir_leuko.errors`` types carrying an ``http_status`` where it is not
the type's default; ``fhir_leuko.app`` turns every one of them into an OperationOutcome in
one place.

Bodies are read raw and parsed with orjson rather than through FastAPI's body models:
a 1,200-Observation prefetch must not pay for a second, deep validation, and our own
validation names the failing field precisely. The OpenAPI schema still describes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
import httpx
import orjson
from fastapi import APIRouter, FastAPI, Path, Request, Response

from fhir_leuko.cdshooks import models as m
from fhir_leuko.cdshooks.auth import (
    Claims,
    DatabaseReplayCache,
    IssuerTrust,
    JwtPolicy,
    JwtVerifier,
)
from fhir_leuko.cdshooks.cards import CardLinks
from fhir_leuko.cdshooks.feedback import Feedback, FeedbackStore, parse_feedback
from fhir_leuko.cdshooks.fetch import FetchPolicy, Gathered, gather
from fhir_leuko.cdshooks.handlers import REGISTRY, HookCall
from fhir_leuko.cdshooks.services import discovery
from fhir_leuko.config import Settings
from fhir_leuko.errors import AuthError, ConfigError, InputError
from fhir_leuko.fhirio.client import AsyncFhirClient
from fhir_leuko.metrics import CheckedRouter
from fhir_leuko.web.rules import rules_page
from fhir_leuko.web.site import public_base

JSON = dict[str, Any]
logger = logging.getLogger(__name__)

SERVICES_PATH = "/cds-services"
_JSON_TYPES = ("application/json", "application/fhir+json")
#: The path parameter, documented with the ids we serve (any other id answers 404).
ServiceId = Annotated[str, Path(json_schema_extra={"enum": list(REGISTRY)})]


class UnknownService(InputError):
    """No CDS service with this id."""

    http_status = 404


class UnsupportedMediaType(InputError):
    """The body is declared as something other than JSON."""

    http_status = 415


# --- Configuration -------------------------------------------------------------------------------


def jwt_policy(settings: Settings) -> JwtPolicy | None:
    """The verifier's policy from the ``[issuers]`` configuration (JWKS files read here).

    ``None`` when no CDS client is trusted: the service still starts (``make serve`` on a new
    machine), but refuses every authenticated call. It never fails open.
    """
    svc = settings.service
    issuers: dict[str, IssuerTrust] = {}
    for iss, cfg in settings.issuers.items():
        jwks: dict[str, Any] | None = None
        if cfg.jwks_file:
            try:
                jwks = orjson.loads(FilePath(cfg.jwks_file).read_bytes())
            except (OSError, orjson.JSONDecodeError) as err:
                raise ConfigError(
                    f"issuer {iss!r}: cannot read the JWKS file {cfg.jwks_file} "
                    f"({type(err).__name__})"
                ) from None
        issuers[iss] = IssuerTrust(jku_allowlist=cfg.jku_allowlist, jwks=jwks)
    if not issuers:
        return None
    return JwtPolicy(
        issuers=issuers,
        max_lifetime_s=svc.jwt_max_lifetime_s,
        clock_skew_s=svc.jwt_clock_skew_s,
    )


@dataclass
class _State:
    """What the endpoints share for the life of the app."""

    settings: Settings
    verifier: JwtVerifier | None  # None in insecure_dev, or when no client is trusted
    tenants: Mapping[str, frozenset[str]]
    store: FeedbackStore | None
    http: httpx.AsyncClient | None
    policy: FetchPolicy
    base: str  # public base URL, no trailing slash
    discovery_body: bytes
    row_titles: Mapping[str, str]
    replay: DatabaseReplayCache | None = None
    store_lock: threading.Lock = field(default_factory=threading.Lock)

    def card_links(self, request: Request) -> CardLinks:
        """Links for cards: the decision table and the trend app on this service."""
        return CardLinks(public_base(self.settings, request), self.row_titles)

    async def authenticate(self, request: Request, path: str) -> Claims | None:
        """Verify the client's JWT for the endpoint at ``path`` (its public URL is ``aud``)."""
        if self.verifier is None:
            if self.settings.service.insecure_dev:
                return None
            raise AuthError("no trusted CDS client is configured")
        claims = await self.verifier.verify(request.headers.get("authorization"), self.base + path)
        allowed = self.tenants.get(claims.iss)
        if allowed and claims.tenant not in allowed:
            raise AuthError(f"tenant {claims.tenant!r:.100} is not allowed for {claims.iss!r:.100}")
        return claims

    def feedback_store(self) -> FeedbackStore:
        """Opened on first use (blocking: call it from a worker thread)."""
        with self.store_lock:
            if self.store is None:
                svc = self.settings.service
                self.store = FeedbackStore(
                    svc.database_url or svc.feedback_db, busy_timeout_s=svc.db_timeout_s
                )
            return self.store

    def record_feedback(self, service_id: str, items: list[Feedback]) -> int:
        return self.feedback_store().record(service_id, items)

    def fhir_client(self, base_url: str, token: str | None) -> AsyncFhirClient:
        if self.http is None:
            self.http = httpx.AsyncClient(follow_redirects=False)
        budget = self.policy.timeout_s
        return AsyncFhirClient(
            base_url,
            auth=token,
            timeouts=budget,
            deadline=budget,
            max_retries=2,
            max_retry_after=budget,
            max_pages=self.policy.max_pages,
            client=self.http,
        )

    async def aclose(self) -> None:
        if self.verifier is not None:
            await self.verifier.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.store is not None:
            self.store.close()
        if self.replay is not None:
            self.replay.close()


def utc_now() -> datetime:
    """The evaluation time of a call (a function, so tests can fix the clock)."""
    return datetime.now(UTC)


# --- Request handling helpers --------------------------------------------------------------------


async def _json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";")[0].strip().lower() not in _JSON_TYPES:
        raise UnsupportedMediaType("the request body must be application/json")
    body = await request.body()
    if not body:
        raise InputError("the request body is empty; CDS Hooks requests are JSON objects")
    try:
        # A leading UTF-8 byte order mark is skipped (RFC 8259 8.1), as for notifications.
        doc = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as err:
        raise InputError(f"the request body is not valid JSON ({err.args[0]})") from None
    if not isinstance(doc, dict):
        raise InputError("the request body must be a JSON object")
    return doc


def _json_response(body: JSON | bytes) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content=content, media_type="application/json")


def _hook_request(doc: Any, service_id: str, hook: str) -> m.HookRequest:
    req = m.parse_model(m.HookRequest, doc)
    if req.hook != hook:
        raise InputError(f"service {service_id} answers the {hook} hook, not {req.hook!r:.60}")
    return req


# --- Router --------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": m.OperationOutcome, "description": text}
    for status, text in (
        (400, "Malformed JSON or a request that does not conform to CDS Hooks 2.0"),
        (401, "Missing or invalid JWT"),
        (404, "No such service"),
        (413, "Request body too large"),
        (415, "Body is not JSON"),
    )
}


def build_router(settings: Settings) -> APIRouter:
    """The CDS Hooks endpoints for ``settings``; resources opened here close with the app."""
    svc = settings.service
    policy = None if svc.insecure_dev else jwt_policy(settings)
    # Several server processes (or replicas) must share one replay cache, or a replayed token
    # could reach a process that has not seen its jti.
    shared = svc.workers > 1 or bool(svc.database_url)
    replay = (
        DatabaseReplayCache(svc.database_url or svc.replay_db, busy_timeout_s=svc.db_timeout_s)
        if policy is not None and shared
        else None
    )
    verifier = None if policy is None else JwtVerifier(policy, replay_cache=replay)
    if policy is None and not svc.insecure_dev:
        logger.warning(
            "No trusted CDS client is configured: every CDS Hooks call will be refused (401). "
            "Configure [issuers] (iss with jku_allowlist or jwks_file), or set "
            "FHIR_LEUKO_INSECURE_DEV=1 for local use only."
        )
    state = _State(
        settings=settings,
        verifier=verifier,
        tenants={iss: frozenset(c.tenants) for iss, c in settings.issuers.items() if c.tenants},
        store=None,
        http=None,
        policy=FetchPolicy(allowlist=svc.fhir_server_allowlist, timeout_s=svc.fetch_timeout_s),
        base=svc.public_base_url.rstrip("/"),
        discovery_body=orjson.dumps(m.wire(m.Discovery.model_validate(discovery()))),
        replay=replay,
        row_titles=rules_page(settings.thresholds).row_titles,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    router = CheckedRouter(lifespan=lifespan, tags=["CDS Hooks 2.0"])
    if replay is not None:
        router.ops.readiness["replay_cache"] = lambda: replay.ping()
    if svc.database_url:
        router.ops.readiness["feedback"] = lambda: state.feedback_store().ping()

    @router.get(
        SERVICES_PATH,
        summary="Discovery",
        response_model=None,
        responses={200: {"model": m.Discovery}, 401: _ERRORS[401]},
    )
    async def discover(request: Request) -> Response:
        """The services offered, with their prefetch templates."""
        if not svc.public_discovery:
            await state.authenticate(request, SERVICES_PATH)
        return _json_response(state.discovery_body)

    hook_errors = {
        **_ERRORS,
        412: {
            "model": m.OperationOutcome,
            "description": "Needed data was neither prefetched nor fetchable",
        },
    }

    @router.post(
        SERVICES_PATH + "/{service_id}",
        summary="Call a CDS service",
        response_model=None,
        responses={200: {"model": m.CdsResponse}, **hook_errors},
        openapi_extra=_body_schema("HookRequest"),
    )
    async def call(service_id: ServiceId, request: Request) -> Response:
        """Cards for one hook invocation."""
        started = time.perf_counter()
        claims = await state.authenticate(request, f"{SERVICES_PATH}/{service_id}")
        service = REGISTRY.get(service_id)
        if service is None:
            raise UnknownService(f"no CDS service {service_id!r:.80}")
        doc = await _json_body(request)
        req = _hook_request(doc, service_id, service.definition.hook)
        now = utc_now()

        async def gather_for(patient_id: str) -> Gathered:
            return await gather(
                service.definition,
                patient_id=patient_id,
                prefetch=req.prefetch,
                fhir_server=req.fhirServer,
                token=req.bearer_token,
                policy=state.policy,
                now=now,
                client_factory=state.fhir_client,
            )

        response = await service.handle(
            HookCall(
                definition=service.definition,
                request=req,
                now=now,
                thresholds=settings.thresholds,
                links=state.card_links(request),
                gather=gather_for,
            )
        )
        # Identifiers of the call only: no patient data, no token (best practices).
        logger.info(
            "cds %s hookInstance=%.64s iss=%s jti=%.64s cards=%d in %.1f ms",
            service_id,
            req.hookInstance,
            claims.iss if claims else "-",
            claims.jti if claims else "-",
            len(response.cards),
            (time.perf_counter() - started) * 1000,
        )
        return _json_response(m.wire_bytes(response))

    @router.post(
        SERVICES_PATH + "/{service_id}/feedback",
        summary="Feedback on cards",
        response_model=None,
        responses={200: {"description": "Stored (idempotent)"}, **_ERRORS},
        openapi_extra=_body_schema("FeedbackRequest"),
    )
    async def feedback(service_id: ServiceId, request: Request) -> Response:
        """Store accepted / overridden outcomes for audit; resending is harmless."""
        await state.authenticate(request, f"{SERVICES_PATH}/{service_id}/feedback")
        if service_id not in REGISTRY:
            raise UnknownService(f"no CDS service {service_id!r:.80}")
        items = parse_feedback(await _json_body(request))
        # In a worker thread: a locked file or a slow database must not stall the event loop
        # (every other call waits on it); past service.db_timeout_s it is a 503.
        added = await anyio.to_thread.run_sync(state.record_feedback, service_id, items)
        # Counts only: a userComment is free text and may hold PHI.
        logger.info("cds feedback %s: %d item(s), %d new", service_id, len(items), added)
        return Response(status_code=200)

    return router


def _body_schema(model_name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model_name}"}}
            },
        }
    }


#: Request models the OpenAPI document must carry under ``components/schemas``.
REQUEST_MODELS = (m.HookRequest, m.PatientViewContext, m.OrderSelectContext, m.FeedbackRequest)

"""The service's pages for people: the decision table (``/rules``) and the trend app (``/app/``).

- ``GET /rules``: the decision table, with the site's numbers (cards link to its rows).
- ``GET /app/``: the SMART on FHIR trend app (static files; its libraries are copied from
  npm by ``make app``). Without that build the page says so and how to build it.
- ``GET /app/config.json``: the app's SMART client id and scopes.
- ``POST /app/api/evaluate``: FHIR resources in, the assessment and the chart data out, from
  the one evaluation (``fhir_leuko.service.evaluate``). It reads nothing and stores nothing:
  the browser sends what it read from the FHIR server with the user's own authorisation.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from fhir_leuko.config import DERIVED_BASE_URL, Settings
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import codes, queries
from fhir_leuko.service import evaluate
from fhir_leuko.web.html import page
from fhir_leuko.web.rules import rules_page
from fhir_leuko.web.trend import (
    TREND_MONTHS,
    TREND_SPAN,
    assessment_json,
    build_trend,
    trend_json,
)

logger = logging.getLogger(__name__)
JSON = dict[str, Any]

STATIC = Path(__file__).resolve().parent / "static" / "app"
BUILT_MARKER = STATIC / "vendor" / "versions.json"
#: The SMART scopes the app asks for (App Launch 2.0 names): the CBCs and the patient for the
#: chart, and the reads the assessment uses beside it (as the CDS service's prefetch does).
APP_SCOPES = (
    "launch openid fhirUser patient/Patient.r patient/Observation.rs "
    "patient/MedicationRequest.rs patient/Condition.rs patient/ServiceRequest.rs"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
#: The pages load nothing from elsewhere; the app talks to the FHIR server the EHR names.
_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:"
_APP_CSP = (
    "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors *; base-uri 'self'"
)


def public_base(settings: Settings, request: Request) -> str:
    """This service's public URL, no trailing slash: the configured ``public_base_url``, or,
    when none was configured, the URL the request came in on."""
    svc = settings.service
    if svc.public_base_url and settings.origins.get("service.public_base_url") != DERIVED_BASE_URL:
        return svc.public_base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def _html(body: str, status: int = 200, csp: str = _PAGE_CSP) -> Response:
    return Response(
        body.encode("utf-8"),
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"},
    )


NOT_BUILT = page(
    "fhir-leuko trend app: not built",
    "<h1>The trend app is not built</h1>\n<p>Its libraries (fhirclient, uPlot) are installed "
    "from npm at build time. On the machine that runs the service, run <code>make app</code> "
    "(needs Node.js and npm), then reload this page.</p>\n"
    '<p>The decision table is at <a href="../rules">/rules</a>.</p>',
)


def _static(name: str) -> Response:
    """A file of the app folder, or 404 (no path outside it, no directory listing)."""
    target = (STATIC / name).resolve()
    if STATIC not in target.parents or not target.is_file() or target.suffix not in _TYPES:
        return Response(status_code=404)
    return Response(
        target.read_bytes(),
        media_type=_TYPES[target.suffix],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def _resources(doc: Any) -> list[JSON]:
    """The request's FHIR resources: ``{"resources": [...]}``."""
    items = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise InputError('send {"resources": [...]}: a list of FHIR resources')
    return items


_WINDOWED = {
    **{c: queries.CBC for c in codes.CBC_LOINC},
    **{c: queries.TEMPERATURES for c in codes.TEMPERATURE_LOINC},
    **{c: queries.VITAMIN_LEVELS for c in codes.B12_FOLATE_LOINC},
}


def _as_the_service_reads(resources: list[JSON], now: datetime) -> list[JSON]:
    """The resources a CDS call would evaluate: Observations within their query's window
    (the app reads 24 months of CBCs for the chart; the assessment uses what the hook uses)."""
    groups: dict[str, list[JSON]] = {}
    out: list[JSON] = []
    for r in resources:
        query = None
        if r.get("resourceType") == "Observation":
            code = r.get("code")
            for c in (code.get("coding") or ()) if isinstance(code, dict) else ():
                if isinstance(c, dict) and c.get("system") == codes.LOINC:
                    query = _WINDOWED.get(str(c.get("code")))
                    if query is not None:
                        break
        if query is None:
            out.append(r)
        else:
            groups.setdefault(query.key, []).append(r)
    for query in (queries.CBC, queries.TEMPERATURES, queries.VITAMIN_LEVELS):
        out += queries.within_window(groups.get(query.key, []), query, now)
    return out


def _bundle(resources: list[JSON]) -> JSON:
    entries = [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def app_config(client_id: str, now: datetime) -> JSON:
    """What the app needs to read a patient's data as the CDS service does."""
    since = (now - TREND_SPAN).date().isoformat()
    return {
        "clientId": client_id,
        "scope": APP_SCOPES,
        "months": TREND_MONTHS,
        "queries": [
            {
                "key": q.key,
                "url": q.template + (f"&date=ge{since}" if q is queries.CBC else ""),
                "returns": q.returns,
            }
            for q in queries.PATIENT_DATA
        ],
        "patientToken": queries.PATIENT_TOKEN,
    }


_HTML_DOC = {"content": {"text/html": {"schema": {"type": "string"}}}}
_ERROR_DOC = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
}
_EVALUATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["resources"],
                    "properties": {
                        "resources": {"type": "array", "items": {"type": "object"}},
                        "patient": {"type": "string"},
                    },
                }
            }
        },
    }
}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["pages"])
    thresholds = settings.thresholds
    client_id = settings.service.app_client_id

    @router.get(
        "/rules",
        response_model=None,
        summary="The decision table (HTML)",
        responses={200: {"description": "The page", **_HTML_DOC}},
    )
    async def rules() -> Response:
        """The decision table with this site's thresholds; one anchor per row and reference."""
        return _html(rules_page(thresholds).html)

    @router.get("/app", response_model=None, include_in_schema=False)
    async def app_root(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return Response(status_code=307, headers={"Location": f"app/{query}"})

    @router.get(
        "/app/",
        response_model=None,
        summary="The SMART on FHIR trend app",
        responses={
            200: {"description": "The app, or a page saying to run `make app`", **_HTML_DOC},
        },
    )
    async def app_index() -> Response:
        """SMART App Launch 2.0 (EHR launch with ``iss`` and ``launch``), or an open FHIR
        server with ``?iss=<FHIR base>&patient=<id>``."""
        if not BUILT_MARKER.is_file():
            # A page that says what to do (200: a card's link still leads somewhere useful).
            return _html(NOT_BUILT)
        return _html((STATIC / "index.html").read_text(encoding="utf-8"), csp=_APP_CSP)

    @router.get("/app/config.json", response_model=None, include_in_schema=False)
    async def app_settings() -> Response:
        body = app_config(client_id, datetime.now(UTC))
        return Response(orjson.dumps(body), media_type="application/json")

    # One path segment each: nothing outside the app's folder, and no overlap with api/.
    @router.get("/app/{name}", response_model=None, include_in_schema=False)
    async def app_file(name: str) -> Response:
        return _static(name)

    @router.get("/app/vendor/{name}", response_model=None, include_in_schema=False)
    async def app_vendor_file(name: str) -> Response:
        return _static(f"vendor/{name}")

    @router.post(
        "/app/api/evaluate",
        response_model=None,
        summary="Evaluate for the trend app",
        responses={
            200: {"description": "The assessment and the chart's data"},
            400: {"description": "Not FHIR JSON", **_ERROR_DOC},
            413: {"description": "Request body too large", **_ERROR_DOC},
        },
        openapi_extra=_EVALUATE_BODY,
    )
    async def app_evaluate(request: Request) -> Response:
        """FHIR resources (``{"resources": [...], "patient": id}``) in; the assessment and the
        chart's data out. Stateless: nothing is read from elsewhere or stored."""
        started = time.perf_counter()
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as err:
            raise InputError(f"the request body is not valid JSON ({err.args[0]})") from None
        patient = doc.get("patient") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and "patient" in doc and not isinstance(patient, str):
            raise InputError("patient must be a string (the Patient id)")
        resources = _resources(doc)
        now = datetime.now(UTC)
        a = evaluate(
            _bundle(_as_the_service_reads(resources, now)),
            now=now,
            thresholds=thresholds,
            patient_id=patient,
        )
        # The chart shows every draw the app read (24 months), with today's limits.
        everything = _bundle(resources)
        seen = evaluate(everything, now=now, thresholds=thresholds, patient_id=patient)
        base = public_base(settings, request)
        page_ = rules_page(thresholds)
        body = {
            "assessment": assessment_json(
                a, f"{base}/rules", page_.row_titles.get(str(a.row), f"Row {a.row}")
            ),
            "trend": trend_json(build_trend(a, everything, thresholds, draws=seen.draws)),
        }
        # Counts only: never an identifier or a value of the patient.
        logger.info(
            "app evaluate: %d resource(s) in %.1f ms",
            len(resources),
            (time.perf_counter() - started) * 1000,
        )
        return Response(orjson.dumps(body), media_type="application/json")

    return router

"""An in-memory FHIR R4 server in respx, for ``check-server``'s unit tests.

It does what fhir-leuko's searches and writes need, the way HAPI does (searchset with
``total``, self/next links, OperationOutcome errors, transactions with ``urn:uuid``
references and ``ifNoneExist``), and each capability can be switched off or broken so a test
can show that exactly that check notices:

``sort``         False: ``_sort`` is ignored (results in the order they were stored)
``newest_first`` with ``sort`` False: always newest first, whatever ``_sort`` says
``reject_sort``  True: any ``_sort`` is answered 400 (an unknown parameter, as HAPI does)
``identifier_search`` False: the ``identifier`` search parameter is ignored (matches all)
``paging``       False: ``_count`` is honoured but no ``next`` link is given
``transaction``  False: POST [base] answers 405 and the CapabilityStatement does not declare it
``token``        a bearer token every request but ``metadata`` needs (else 401)
``rate_limit``   how many requests to ``Observation`` answer 429 with ``Retry-After`` first
``html_errors``  True: 4xx answers are an HTML page, not an OperationOutcome
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import respx

from fhir_leuko.fhirio.ingest import parse_time

JSON = dict[str, Any]
BASE = "https://fhir.example.org/r4"
FHIR_JSON = {"Content-Type": "application/fhir+json;charset=UTF-8"}
HTML_PAGE = b"<html><head><title>Error</title></head><body><h1>Bad Request</h1></body></html>"


def outcome(code: str, text: str) -> JSON:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


@dataclass
class FakeFhirServer:
    sort: bool = True
    newest_first: bool = False
    reject_sort: bool = False
    identifier_search: bool = True
    paging: bool = True
    transaction: bool = True
    token: str | None = None
    rate_limit: int = 0
    retry_after: str = "3"
    html_errors: bool = False
    store: dict[str, dict[str, JSON]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    # -- wiring ----------------------------------------------------------------------------

    @contextmanager
    def mocked(self) -> Iterator[respx.MockRouter]:
        with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
            router.route(url__startswith=BASE).mock(side_effect=self.handle)
            yield router

    def add(self, resource: JSON) -> JSON:
        """Store a resource as given (its id kept, or a new one)."""
        stored = copy.deepcopy(resource)
        stored.setdefault("id", str(next(self._ids)))
        stored["meta"] = {**stored.get("meta", {}), "versionId": "1"}
        self.store.setdefault(stored["resourceType"], {})[stored["id"]] = stored
        return stored

    def all(self, rtype: str | None = None) -> list[JSON]:
        types = [rtype] if rtype else list(self.store)
        return [r for t in types for r in self.store.get(t, {}).values()]

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path[len(httpx.URL(BASE).path) :].strip("/")
        authorised = request.headers.get("Authorization") == f"Bearer {self.token}"
        if path != "metadata" and self.token is not None and not authorised:
            return self.error(401, "login", "Authentication required")
        if path.startswith("Observation") and self.rate_limit > 0:
            self.rate_limit -= 1
            return httpx.Response(
                429,
                headers={**FHIR_JSON, "Retry-After": self.retry_after},
                content=orjson.dumps(outcome("throttled", "Too many requests")),
            )
        parts = path.split("/") if path else []
        method = request.method
        if method == "GET" and parts == ["metadata"]:
            return self.ok(self.capability())
        if method == "GET" and len(parts) == 1:
            return self.search(parts[0], request)
        if method == "GET" and len(parts) == 2:
            found = self.store.get(parts[0], {}).get(parts[1])
            if found is None:
                return self.error(404, "not-found", f"Resource {parts[0]}/{parts[1]} is not known")
            return self.ok(found)
        if method == "POST" and not parts:
            return self.transact(orjson.loads(request.content))
        if method == "POST" and len(parts) == 1:
            return self.create(orjson.loads(request.content), request.headers.get("If-None-Exist"))
        if method == "DELETE" and len(parts) == 2:
            self.store.get(parts[0], {}).pop(parts[1], None)
            return httpx.Response(204)
        return self.error(400, "not-supported", f"{method} {path} is not supported")

    def ok(self, body: JSON, status: int = 200, **headers: str) -> httpx.Response:
        return httpx.Response(status, content=orjson.dumps(body), headers={**FHIR_JSON, **headers})

    def error(self, status: int, code: str, text: str) -> httpx.Response:
        if self.html_errors:
            return httpx.Response(
                status, content=HTML_PAGE, headers={"Content-Type": "text/html;charset=utf-8"}
            )
        return self.ok(outcome(code, text), status)

    def capability(self) -> JSON:
        types = ["Patient", "Observation", "MedicationRequest", "Condition", "ServiceRequest"]
        types += ["RiskAssessment", "DiagnosticReport", "Specimen", "Subscription"]
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "software": {"name": "Fake FHIR", "version": "1.0"},
            "rest": [
                {
                    "mode": "server",
                    "interaction": [{"code": "transaction"}] if self.transaction else [],
                    "resource": [
                        {"type": t, "conditionalCreate": True, "interaction": [{"code": "read"}]}
                        for t in types
                    ],
                }
            ],
        }

    # -- search ----------------------------------------------------------------------------

    def search(self, rtype: str, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        found = list(self.store.get(rtype, {}).values())
        for name, value in params.multi_items():
            if name in ("patient", "subject"):
                pid = value.split("/")[-1]
                found = [r for r in found if _subject(r) == pid]
            elif name == "code":
                found = [r for r in found if _matches_token(r.get("code"), value)]
            elif name == "clinical-status":
                found = [r for r in found if _matches_token(r.get("clinicalStatus"), value)]
            elif name == "status":
                found = [r for r in found if r.get("status") in value.split(",")]
            elif name == "_sort" and self.reject_sort:
                return self.error(400, "not-supported", "Unknown search parameter: _sort")
            elif name == "identifier" and self.identifier_search:
                found = [r for r in found if _has_identifier(r, value)]
            elif name == "_tag":
                found = [r for r in found if _matches_tag(r, value)]
            elif name == "date" and parse_time(value.lstrip("gelt")) is None:
                return self.error(400, "invalid", f"Invalid date/time format: {value}")
        sort = params.get("_sort")
        if self.newest_first and not self.sort:
            found.sort(key=_effective, reverse=True)
        elif sort and self.sort:
            key = sort.lstrip("-")
            if key != "date":
                return self.error(400, "not-supported", f"Unknown sort parameter {key}")
            found.sort(key=_effective, reverse=sort.startswith("-"))
        count = int(params.get("_count", "20"))
        offset = int(params.get("_offset", "0"))
        page = found[offset : offset + count]
        links = [{"relation": "self", "url": str(request.url)}]
        if self.paging and offset + count < len(found):
            links.append(
                {
                    "relation": "next",
                    "url": str(request.url.copy_set_param("_offset", offset + count)),
                }
            )
        bundle: JSON = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        return self.ok(bundle)

    # -- writes ----------------------------------------------------------------------------

    def _existing(self, rtype: str, criteria: str | None) -> list[JSON]:
        value = httpx.QueryParams(criteria or "").get("identifier")
        if not value:
            return []
        return [r for r in self.all(rtype) if _has_identifier(r, value)]

    def create(self, body: JSON, if_none_exist: str | None) -> httpx.Response:
        existing = self._existing(body["resourceType"], if_none_exist)
        if existing:
            return self.ok(existing[0], 200)
        body.pop("id", None)
        stored = self.add(body)
        location = f"{BASE}/{stored['resourceType']}/{stored['id']}/_history/1"
        return self.ok(stored, 201, Location=location)

    def transact(self, bundle: JSON) -> httpx.Response:
        if not self.transaction:
            return self.error(405, "not-supported", "Transactions are not supported")
        entries = bundle.get("entry") or []
        ids: dict[str, str] = {}
        plan: list[tuple[JSON, JSON | None]] = []
        for entry in entries:
            resource = copy.deepcopy(entry["resource"])
            request = entry["request"]
            existing = self._existing(resource["resourceType"], request.get("ifNoneExist"))
            if existing:
                ids[entry.get("fullUrl", "")] = f"{resource['resourceType']}/{existing[0]['id']}"
                plan.append((existing[0], None))
            else:
                resource["id"] = str(next(self._ids))
                ids[entry.get("fullUrl", "")] = f"{resource['resourceType']}/{resource['id']}"
                plan.append((resource, resource))
        responses = []
        for resource, new in plan:
            if new is not None:
                self.add(_rewrite(new, ids))
            status = "201 Created" if new is not None else "200 OK"
            location = f"{resource['resourceType']}/{resource['id']}/_history/1"
            responses.append({"response": {"status": status, "location": location}})
        return self.ok(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}
        )


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in ids:
            out["reference"] = ids[out["reference"]]
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def _subject(resource: JSON) -> str | None:
    for name in ("subject", "patient"):
        ref = (resource.get(name) or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/")[1]
    return None


def _matches_token(concept: Any, value: str) -> bool:
    codings = (concept or {}).get("coding") or [] if isinstance(concept, dict) else []
    for part in value.split(","):
        system, sep, code = part.rpartition("|")
        for c in codings:
            if c.get("code") == code and (not sep or not system or c.get("system") == system):
                return True
    return False


def _has_identifier(resource: JSON, value: str) -> bool:
    system, _, code = value.rpartition("|")
    return any(
        i.get("value") == code and (not system or i.get("system") == system)
        for i in resource.get("identifier") or []
    )


def _matches_tag(resource: JSON, value: str) -> bool:
    system, _, code = value.rpartition("|")
    return any(
        t.get("code") == code and t.get("system") == system
        for t in (resource.get("meta") or {}).get("tag") or []
    )


def _effective(resource: JSON) -> datetime:
    when = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
    return parse_time(when) or datetime(1900, 1, 1).astimezone()

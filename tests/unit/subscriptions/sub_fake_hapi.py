"""Just enough of a HAPI FHIR R4 server, in respx, for the Subscription worker's unit tests.

Reads and searches answer with the recorded-shape bodies of ``tests/fixtures/fhir_server/``
(searchset with ``total``, self/next links, ``entry.search.mode``; OperationOutcome errors).
The transaction endpoint behaves like HAPI's: a POST entry with ``ifNoneExist`` whose
identifier is already stored answers ``200 OK`` with the existing location, else ``201
Created``; ``urn:uuid`` references are rewritten to the new ids. Searches for our own
RiskAssessments and ServiceRequests return what was written, as a real server would.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import httpx
import orjson
import respx

from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.queries import any_code

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir_server"
BASE = "https://hapi.fhir.org/baseR4"
PATIENT_ID = "5793201"
HAPI_JSON = {"Content-Type": "application/fhir+json;charset=UTF-8"}
SEARCH_ID = "8d2b7c1e-5f1a-4a7e-9c3b-2f6e0d4a1b9c"
CBC_CODES = any_code(codes.LOINC, codes.CBC_LOINC)

JSON = dict[str, Any]


def fixture(name: str) -> JSON:
    loaded: JSON = orjson.loads((FIXTURES / name).read_bytes())
    return loaded


def fhir(body: JSON, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={**HAPI_JSON, **headers})


def searchset(resources: list[JSON], self_url: str) -> JSON:
    bundle: JSON = {
        "resourceType": "Bundle",
        "id": "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716",
        "meta": {"lastUpdated": "2026-02-10T10:03:17.601+00:00"},
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
    }
    if resources:
        bundle["entry"] = [
            {
                "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ]
    return bundle


class FakeHapi:
    """Routes on a respx router; ``stored`` holds what transactions created."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.stored: dict[str, list[JSON]] = {"RiskAssessment": [], "ServiceRequest": []}
        self.transactions: list[JSON] = []
        self.cbc_pages: dict[str, list[JSON]] = {
            PATIENT_ID: [
                fixture("hapi_r4_observation_searchset_page1.json"),
                fixture("hapi_r4_observation_searchset_page2.json"),
                fixture("hapi_r4_observation_searchset_page3.json"),
            ]
        }
        self.observations = {
            e["resource"]["id"]: e["resource"]
            for e in fixture("hapi_r4_observation_changed_since.json")["entry"]
        }
        self._ids = itertools.count(5793301)
        self.patient = router.get(url__regex=rf"^{BASE}/Patient/[^/?]+$").mock(
            side_effect=self._patient
        )
        self.observation_read = router.get(url__regex=rf"^{BASE}/Observation/[^/?]+$").mock(
            side_effect=self._observation
        )
        self.observation_search = router.get(f"{BASE}/Observation").mock(
            side_effect=self._observation_search
        )
        self.pages = router.get(f"{BASE}", params={"_getpages": SEARCH_ID}).mock(
            side_effect=self._page
        )
        self.other_searches = {
            rtype: router.get(f"{BASE}/{rtype}").mock(side_effect=self._search_stored)
            for rtype in (
                "MedicationRequest",
                "Condition",
                "ServiceRequest",
                "RiskAssessment",
                "DiagnosticReport",
            )
        }
        self.transaction = router.post(f"{BASE}").mock(side_effect=self._transaction)

    # ------------------------------------------------------------------ reads and searches

    def _patient(self, request: httpx.Request) -> httpx.Response:
        body = fixture("hapi_r4_patient_read.json")
        body["id"] = request.url.path.rsplit("/", 1)[-1]
        return fhir(body)

    def _observation(self, request: httpx.Request) -> httpx.Response:
        rid = request.url.path.rsplit("/", 1)[-1]
        if rid in self.observations:
            return fhir(self.observations[rid])
        return fhir(fixture("hapi_r4_operationoutcome_404.json"), 404)

    def _observation_search(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if "_lastUpdated" in params:
            return fhir(fixture("hapi_r4_observation_changed_since.json"))
        patient = params.get("patient", "")
        if params.get("code") == CBC_CODES and patient in self.cbc_pages:
            return fhir(self.cbc_pages[patient][0])
        return fhir(fixture("hapi_r4_searchset_empty.json"))

    def _page(self, request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["_getpagesoffset"])
        return fhir(self.cbc_pages[PATIENT_ID][offset // 2])

    def _search_stored(self, request: httpx.Request) -> httpx.Response:
        rtype = request.url.path.rsplit("/", 1)[-1]
        params = request.url.params
        wanted = params.get("subject") or f"Patient/{params.get('patient', '')}"
        found = [
            r for r in self.stored.get(rtype, []) if r.get("subject", {}).get("reference") == wanted
        ]
        if params.get("_sort") == "-date":
            found.sort(key=lambda r: r.get("occurrenceDateTime", ""), reverse=True)
        return fhir(searchset(found, str(request.url)))

    # ------------------------------------------------------------------ transaction

    def _transaction(self, request: httpx.Request) -> httpx.Response:
        bundle = orjson.loads(request.content)
        self.transactions.append(bundle)
        locations: dict[str, str] = {}
        responses: list[JSON] = []
        pending: list[JSON] = []
        for entry in bundle["entry"]:
            resource = copy.deepcopy(entry["resource"])
            rtype = resource["resourceType"]
            system, value = entry["request"]["ifNoneExist"].split("=", 1)[1].split("|", 1)
            existing = next(
                (
                    r
                    for r in self.stored[rtype]
                    if any(i == {"system": system, "value": value} for i in r["identifier"])
                ),
                None,
            )
            if existing is not None:
                location = f"{rtype}/{existing['id']}/_history/1"
                status = "200 OK"
            else:
                resource["id"] = str(next(self._ids))
                resource["meta"] = {**resource.get("meta", {}), "versionId": "1"}
                pending.append(resource)
                location = f"{rtype}/{resource['id']}/_history/1"
                status = "201 Created"
            locations[entry["fullUrl"]] = location.rsplit("/_history", 1)[0]
            responses.append(
                {
                    "response": {
                        "status": status,
                        "location": location,
                        "etag": "1",
                        "lastModified": "2026-02-10T10:15:02.417+00:00",
                    }
                }
            )
        for resource in pending:  # urn:uuid -> the ids just assigned (or the existing ones)
            for ref in resource.get("supportingInfo", []):
                ref["reference"] = locations.get(ref["reference"], ref["reference"])
            self.stored[resource["resourceType"]].append(resource)
        return fhir(
            {
                "resourceType": "Bundle",
                "id": "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d",
                "type": "transaction-response",
                "link": [{"relation": "self", "url": BASE}],
                "entry": responses,
            }
        )

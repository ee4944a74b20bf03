"""Prefetch missing: we fetch from fhirServer (respx-mocked), page, retry, give up in time, 412."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from cds_conformance import assert_conformant
from fastapi.testclient import TestClient

from fhir_leuko.cdshooks.fetch import normalise_base, server_allowed
from fhir_leuko.cdshooks.services import PATIENT_VIEW
from fhir_leuko.config import Settings
from tests.builders import NOW, TEMP, at, bundle, cbc, med, obs, patient

FHIR = "https://ehr.example.org/fhir/R4"
PV = "/cds-services/leukopenia-patient-view"
TOKEN = "fhir-access-token-for-cds"
EMPTY = {"resourceType": "Bundle", "type": "searchset", "total": 0}


def request(**prefetch: Any) -> dict[str, Any]:
    """A call that prefetches only what is given, with a token for fhirServer."""
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": FHIR,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "fhir-leuko",
        },
        "context": {"userId": "Practitioner/dr1", "patientId": "p1"},
        **({"prefetch": prefetch} if prefetch else {}),
    }


def cbc_only(cbc_search: Any, *, fetch: tuple[str, ...] = ()) -> dict[str, Any]:
    """A call prefetching the patient and this CBC search, every optional key as null, except
    the keys in ``fetch``: left out, so the service fetches them."""
    optional = {q.key: None for q in PATIENT_VIEW.prefetch if not q.required}
    for key in fetch:
        del optional[key]
    return request(patient=patient(), cbc=cbc_search, **optional)


def searchset(*resources: Any, next_url: str | None = None) -> dict[str, Any]:
    b = bundle(*resources, type_="searchset")
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return b


@pytest.fixture
def cds_client(
    monkeypatch: pytest.MonkeyPatch,
    app_settings: Callable[..., Settings],
    app_client: Callable[..., TestClient],
) -> TestClient:
    monkeypatch.setattr("fhir_leuko.cdshooks.router.utc_now", lambda: NOW)
    return app_client(app_settings(fhir_server_allowlist=(FHIR,), fetch_timeout_s=0.5))


@pytest.fixture
def fhir() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=FHIR, assert_all_called=False) as router:
        yield router


def serve_everything_else(fhir: respx.MockRouter) -> None:
    """Empty answers for the searches a test does not care about.

    respx tries routes in the order they were added, and a route with the same pattern
    replaces the earlier one: add specific Observation routes first, then this, then
    replacements for the other searches.
    """
    fhir.get("/Patient/p1").respond(json=patient())
    for kind in (
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "Condition",
        "ServiceRequest",
    ):
        fhir.get(f"/{kind}").respond(json=EMPTY)


def cbc_route(fhir: respx.MockRouter) -> respx.Route:
    """The CBC search: the one whose code list holds the WBC code 6690-2."""
    return fhir.get(url__regex=r"/Observation\?.*6690-2")


# --- Allowlist -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "allowed"),
    [
        (FHIR, True),
        (FHIR + "/", True),
        ("HTTPS://EHR.example.org:443/fhir/R4", True),
        (FHIR + "/tenant-a", True),
        ("https://ehr.example.org/fhir/R4x", False),
        ("https://ehr.example.org/fhir", False),
        ("http://ehr.example.org/fhir/R4", False),
        ("https://user@ehr.example.org/fhir/R4", False),
        ("https://ehr.example.org.evil.example/fhir/R4", False),
        ("https://169.254.169.254/latest", False),
    ],
)
def test_allowlist(server: str, allowed: bool) -> None:
    assert server_allowed(server, (FHIR,)) is allowed


def test_normalise_base() -> None:
    assert normalise_base("https://Ehr.Example.org:443/fhir/") == "https://ehr.example.org/fhir"
    assert normalise_base("ftp://x/y") is None


# --- Fetching what was not prefetched ------------------------------------------------------------


def test_everything_fetched_with_the_bearer_token(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    cbc_route(fhir).respond(json=searchset(cbc(1.2, 0.4)))
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200, r.text
    assert_conformant(r.json())
    assert r.json()["cards"][0]["indicator"] == "critical"
    assert {c.request.headers["Authorization"] for c in fhir.calls} == {f"Bearer {TOKEN}"}
    paths = {c.request.url.path.rsplit("/", 1)[-1] for c in fhir.calls}
    assert paths == {
        "p1",
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "Condition",
        "ServiceRequest",
    }


def test_only_missing_keys_are_fetched(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    meds = fhir.get("/MedicationRequest").respond(json=searchset(med("clozapine", "2626")))
    r = cds_client.post(
        PV,
        json=cbc_only(searchset(cbc(2.0, 1.2)), fetch=("medications",)),
    )
    assert r.status_code == 200
    assert meds.call_count == 1 and len(fhir.calls) == 1
    assert any("clozapine" in c["summary"] for c in r.json()["cards"])


def test_operation_outcome_in_prefetch_is_fetched_instead(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    route = cbc_route(fhir).respond(json=searchset(cbc(1.2, 0.4)))
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    r = cds_client.post(
        PV,
        json=cbc_only(outcome),
    )
    assert r.status_code == 200 and route.call_count == 1


def test_search_pages_are_followed(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    page2 = f"{FHIR}/Observation?_getpages=abc&_page=2"
    fhir.get("/Observation", params={"_getpages": "abc"}).respond(
        json=searchset(cbc(1.9, 0.8, when=at(0)))
    )
    cbc_route(fhir).respond(json=searchset(cbc(3.0, 1.6, when=at(10)), next_url=page2))
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200
    assert "ANC 0.8" in r.json()["cards"][0]["summary"]  # the newest draw was on page 2


def test_paging_stops_once_a_page_is_older_than_the_window(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    old = f"{FHIR}/Observation?_getpages=old"
    older = fhir.get("/Observation", params={"_getpages": "older"}).respond(json=EMPTY)
    fhir.get("/Observation", params={"_getpages": "old"}).respond(
        json=searchset(cbc(1.0, 0.2, when=at(800)), next_url=f"{FHIR}/Observation?_getpages=older")
    )
    cbc_route(fhir).respond(json=searchset(cbc(5.0, 2.5, when=at(0)), next_url=old))
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200
    assert r.json() == {"cards": []}  # the 800-day-old neutropenia is outside the 24 months
    assert older.call_count == 0


def test_prefetch_next_link_is_followed_on_fhir_server(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    page2 = fhir.get("/Observation", params={"page": "2"}).respond(
        json=searchset(cbc(1.1, 0.3, when=at(0)))
    )
    first = searchset(cbc(4.5, 2.0, when=at(5)), next_url=f"{FHIR}/Observation?page=2")
    r = cds_client.post(
        PV,
        json=cbc_only(first),
    )
    assert page2.call_count == 1
    assert r.json()["cards"][0]["indicator"] == "critical"


def test_prefetch_next_link_elsewhere_is_not_followed_and_said(cds_client: TestClient) -> None:
    first = searchset(cbc(1.1, 0.3), next_url="http://169.254.169.254/latest/meta-data")
    with respx.mock(assert_all_called=False) as net:
        r = cds_client.post(
            PV,
            json=cbc_only(first),
        )
    assert not net.calls
    assert "Only the first page of prefetch key 'cbc'" in r.json()["cards"][0]["detail"]


# --- Failures ------------------------------------------------------------------------------------


def test_401_on_a_required_key_is_412(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    cbc_route(fhir).respond(
        401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "token expired"}],
        },
    )
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 412
    text = r.json()["issue"][0]["diagnostics"]
    assert "'cbc' was not prefetched" in text and "401" in text
    assert TOKEN not in text


def test_401_on_an_optional_key_still_gives_cards_that_say_so(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    cbc_route(fhir).respond(json=searchset(cbc(1.2, 0.4)))
    serve_everything_else(fhir)
    fhir.get("/MedicationRequest").respond(403)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200
    detail = r.json()["cards"][0]["detail"]
    assert "Not available: active medications" in detail and "403" in detail
    # The RiskAssessment records it too.
    notes = r.json()["systemActions"][0]["resource"]["note"]
    assert any("active medications" in n["text"] for n in notes)


def test_404_patient_is_412(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    fhir.get("/Patient/p1").respond(404)
    for kind in (
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "Condition",
        "ServiceRequest",
    ):
        fhir.get(f"/{kind}").respond(json=EMPTY)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 412
    assert "'patient'" in r.json()["issue"][0]["diagnostics"]


def test_429_with_retry_after_is_retried(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    route = cbc_route(fhir)
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, json=searchset(cbc(1.2, 0.4))),
    ]
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200
    assert route.call_count == 2


def test_429_asking_longer_than_our_budget_is_412_at_once(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    cbc_route(fhir).respond(429, headers={"Retry-After": "30"})
    serve_everything_else(fhir)
    started = time.monotonic()
    r = cds_client.post(PV, json=request())
    assert r.status_code == 412
    assert time.monotonic() - started < 1.0


def test_network_timeout_is_412(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    cbc_route(fhir).mock(side_effect=httpx.ConnectTimeout("timed out"))
    serve_everything_else(fhir)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 412


def test_a_slow_server_is_cut_off_at_the_budget(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=EMPTY)

    cbc_route(fhir).mock(side_effect=slow)
    serve_everything_else(fhir)
    started = time.monotonic()
    r = cds_client.post(PV, json=request())
    elapsed = time.monotonic() - started
    assert r.status_code == 412
    assert elapsed < 2.0, f"the 0.5 s budget was not kept ({elapsed:.2f} s)"


def test_a_slow_optional_key_does_not_hold_up_the_cards(
    cds_client: TestClient, fhir: respx.MockRouter
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=EMPTY)

    cbc_route(fhir).respond(json=searchset(cbc(1.2, 0.4)))
    serve_everything_else(fhir)
    fhir.get("/Condition").mock(side_effect=slow)
    r = cds_client.post(PV, json=request())
    assert r.status_code == 200
    assert "Not available: active conditions" in r.json()["cards"][0]["detail"]


def test_server_answering_html_is_412(cds_client: TestClient, fhir: respx.MockRouter) -> None:
    cbc_route(fhir).respond(200, text="<html>login</html>", headers={"Content-Type": "text/html"})
    serve_everything_else(fhir)
    assert cds_client.post(PV, json=request()).status_code == 412


# --- Time windows (no date tokens in CDS Hooks 2.0) ---------------------------------------------


def test_old_fever_is_outside_the_48_hour_window(cds_client: TestClient) -> None:
    base = {
        "patient": patient(),
        "cbc": searchset(cbc(2.0, 0.8, when=at(3))),
        "vitaminLevels": None,
        "medications": None,
        "conditions": None,
        "openOrders": None,
    }
    recent = cds_client.post(
        PV, json=request(**base, temperatures=searchset(obs(TEMP, 38.9, at(0, 3))))
    ).json()
    stale = cds_client.post(
        PV, json=request(**base, temperatures=searchset(obs(TEMP, 38.9, at(3, 0))))
    ).json()
    assert "Febrile neutropenia" in recent["cards"][0]["summary"]
    assert "Febrile" not in stale["cards"][0]["summary"]


def test_cbc_older_than_24_months_is_not_used(cds_client: TestClient) -> None:
    r = cds_client.post(
        PV,
        json=cbc_only(searchset(cbc(1.0, 0.2, when=at(760)))),
    )
    assert r.json() == {"cards": []}


def test_cbc_of_20_months_ago_is_still_read(cds_client: TestClient) -> None:
    # 24-month trend window (clinical-rules.md v2): the former 12 months dropped this draw.
    r = cds_client.post(
        PV,
        json=cbc_only(searchset(cbc(1.0, 0.2, when=at(600)))),
    )
    assert r.status_code == 200 and r.json()["cards"]

"""Our FhirClient against a real FHIR server (Medplum's router, in memory, on 127.0.0.1).

Checks the assumptions the rest of fhir-leuko builds on: searches sort and page the way we
ask, next links are followed, conditional transactions are idempotent, errors are typed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fhirserver.harness import fhir_server, fresh_fhir_server  # noqa: F401
from sub_e2e_support import observation

from fhir_leuko.errors import FatalFhirServerError
from fhir_leuko.fhirio.client import AsyncFhirClient, FhirClient

pytestmark = pytest.mark.integration

LOINC = "http://loinc.org"
ANC = "751-8"
WBC = "6690-2"
TEST_IDS = "urn:fhir-leuko:test"


@pytest.fixture
def client(fresh_fhir_server: str) -> Iterator[FhirClient]:  # noqa: F811
    # trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic.
    with httpx.Client(trust_env=False) as http, FhirClient(fresh_fhir_server, client=http) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_search_sorts_newest_first_and_follows_next_links(client: FhirClient) -> None:
    patient = client.create({"resourceType": "Patient", "name": [{"family": "Testpatient"}]})
    draws = ["2026-02-01T08:00:00Z", "2026-02-03T08:00:00Z", "2026-02-05T08:00:00Z"]
    for when in draws:
        client.create(observation(patient["id"], WBC, 3.1, when))
        client.create(observation(patient["id"], ANC, 1.2, when))
    params = {
        "patient": patient["id"],
        "code": f"{LOINC}|{WBC},{LOINC}|{ANC}",
        "_sort": "-date",
        "_count": 2,
    }

    pages = list(client.search_bundle_pages("Observation", params))
    found = client.search("Observation", params)

    assert [len(page.get("entry", [])) for page in pages] == [2, 2, 2]
    assert pages[0]["total"] == 6
    assert all(e["search"]["mode"] == "match" for p in pages for e in p["entry"])
    dates = [o["effectiveDateTime"] for o in found]
    assert dates == sorted(dates, reverse=True)
    assert len({o["id"] for o in found}) == 6


def test_search_limit_stops_paging_early(client: FhirClient) -> None:
    patient = client.create({"resourceType": "Patient"})
    for day in range(1, 6):
        client.create(observation(patient["id"], WBC, 3.0, f"2026-03-0{day}"))

    latest = client.search(
        "Observation", {"patient": patient["id"], "_sort": "-date", "_count": 2}, limit=3
    )

    assert [o["effectiveDateTime"] for o in latest] == ["2026-03-05", "2026-03-04", "2026-03-03"]


def test_conditional_transaction_twice_creates_nothing_the_second_time(
    client: FhirClient,
) -> None:
    patient = client.create({"resourceType": "Patient"})
    identifier = {"system": TEST_IDS, "value": f"risk-{patient['id']}-anc-2026-02-05"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:4b1d1f40-6a61-4c0c-9c55-000000000001",
                "resource": {
                    "resourceType": "RiskAssessment",
                    "status": "final",
                    "identifier": [identifier],
                    "subject": {"reference": f"Patient/{patient['id']}"},
                },
                "request": {
                    "method": "POST",
                    "url": "RiskAssessment",
                    "ifNoneExist": f"identifier={TEST_IDS}|{identifier['value']}",
                },
            },
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "proposal",
                    "identifier": [{"system": TEST_IDS, "value": f"repeat-cbc-{patient['id']}"}],
                    "code": {"coding": [{"system": LOINC, "code": "57021-8"}]},
                    "subject": {"reference": f"Patient/{patient['id']}"},
                    "reasonReference": [
                        {"reference": "urn:uuid:4b1d1f40-6a61-4c0c-9c55-000000000001"}
                    ],
                },
                "request": {
                    "method": "POST",
                    "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={TEST_IDS}|repeat-cbc-{patient['id']}",
                },
            },
        ],
    }

    first = client.transaction(bundle)
    second = client.transaction(bundle)

    assert [e["response"]["status"][:3] for e in first["entry"]] == ["201", "201"]
    assert [e["response"]["status"][:3] for e in second["entry"]] == ["200", "200"]
    locations = [e["response"]["location"] for e in first["entry"]]
    assert [e["response"]["location"] for e in second["entry"]] == locations
    assert len(client.search("RiskAssessment", {"patient": patient["id"]})) == 1
    requests = client.search("ServiceRequest", {"patient": patient["id"]})
    assert len(requests) == 1
    # The urn:uuid reference was resolved to the new RiskAssessment.
    assert requests[0]["reasonReference"][0]["reference"] == locations[0].split("/_history")[0]


def test_a_failing_transaction_leaves_nothing_behind(client: FhirClient) -> None:
    # The router alone keeps the entries written before the failing one; the shell undoes
    # them, as a real server's transaction would.
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": TEST_IDS, "value": "rolled-back"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "not-there"},
                "request": {"method": "PUT", "url": "Patient/not-there", "ifMatch": 'W/"1"'},
            },
        ],
    }

    with pytest.raises(FatalFhirServerError) as caught:
        client.transaction(bundle)

    assert caught.value.status is not None and 400 <= caught.value.status < 500
    assert client.search("Patient", {"identifier": f"{TEST_IDS}|rolled-back"}) == []


def test_conditional_create_header_returns_the_existing_resource(client: FhirClient) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": TEST_IDS, "value": "p-1"}]}

    first = client.create(patient, if_none_exist={"identifier": f"{TEST_IDS}|p-1"})
    second = client.create(patient, if_none_exist={"identifier": f"{TEST_IDS}|p-1"})

    assert second["id"] == first["id"]


def test_read_of_a_missing_id_is_fatal_404(client: FhirClient) -> None:
    with pytest.raises(FatalFhirServerError) as caught:
        client.read("Patient", "does-not-exist")

    assert caught.value.status == 404
    assert caught.value.outcome is not None


def test_update_then_read_round_trips(client: FhirClient) -> None:
    created = client.create({"resourceType": "Patient", "active": True})

    client.update({**created, "active": False})

    assert client.read("Patient", created["id"])["active"] is False


def test_unknown_search_parameter_is_fatal_400(client: FhirClient) -> None:
    with pytest.raises(FatalFhirServerError) as caught:
        client.search("Observation", {"not-a-parameter": "x"})

    assert caught.value.status == 400
    assert "not-a-parameter" in str(caught.value)


@pytest.mark.anyio
async def test_async_client_pages_the_same_way(fresh_fhir_server: str) -> None:  # noqa: F811
    async with (
        httpx.AsyncClient(trust_env=False) as http,
        AsyncFhirClient(fresh_fhir_server, client=http) as client,
    ):
        patient = await client.create({"resourceType": "Patient"})
        for day in range(1, 6):
            await client.create(observation(patient["id"], ANC, 0.9, f"2026-04-0{day}"))

        found = await client.search(
            "Observation", {"patient": patient["id"], "_sort": "-date", "_count": 2}
        )
        pages = [p async for p in client.search_bundle_pages("Observation", {"_count": 2})]

    assert [o["effectiveDateTime"][-2:] for o in found] == ["05", "04", "03", "02", "01"]
    assert len(pages) == 3

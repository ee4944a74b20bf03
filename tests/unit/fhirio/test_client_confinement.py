"""The FHIR client sends its token only under the configured base URL, and logs no ids.

A server on the allowlist may share its host with other applications (``/admin``, another
tenant's ``/fhir2``); a ``next`` link or a URL it hands us must not take our bearer token there.
Nothing here touches the network: respx intercepts every request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
import respx

from fhir_leuko.errors import FatalFhirServerError
from fhir_leuko.fhirio.client import AsyncFhirClient, FhirClient

BASE = "https://ehr.example.org/fhir/r4"
TOKEN = "secret-token-7c1"


def searchset(next_url: str | None) -> httpx.Response:
    bundle: dict[str, object] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return httpx.Response(200, json=bundle, headers={"Content-Type": "application/fhir+json"})


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.mark.parametrize(
    "next_url",
    [
        "https://ehr.example.org/admin/export?page=2",
        "https://ehr.example.org/fhir/r4-other/Observation?page=2",
        "https://ehr.example.org/fhir/Observation?page=2",
        "/admin?page=2",
        "../../admin?page=2",
        "https://ehr.example.org/fhir/r4/%2e%2e/%2e%2e/admin?page=2",
        "https://ehr.example.org/fhir/r4/..%2f..%2fadmin?page=2",
        "https://ehr.example.org/fhir/r4/.%2E/x",
    ],
)
def test_a_next_link_outside_the_base_path_is_not_followed(
    mock: respx.MockRouter, next_url: str
) -> None:
    mock.get(f"{BASE}/Observation").mock(return_value=searchset(next_url))
    elsewhere = mock.route(host="ehr.example.org").mock(return_value=searchset(None))

    with FhirClient(BASE, auth=TOKEN) as client, pytest.raises(FatalFhirServerError) as caught:
        client.search("Observation", {"code": "751-8"})

    assert elsewhere.call_count == 0
    message = str(caught.value)
    assert "outside the FHIR base https://ehr.example.org/fhir/r4" in message
    assert "admin" not in message and "page=2" not in message


def test_a_next_link_under_the_base_is_followed_with_the_token(mock: respx.MockRouter) -> None:
    first = mock.get(f"{BASE}/Observation", params={"code": "751-8"}).mock(
        return_value=searchset(f"{BASE}?_getpages=abc&_getpagesoffset=2")
    )
    second = mock.get(BASE, params={"_getpages": "abc"}).mock(return_value=searchset(None))

    with FhirClient(BASE, auth=TOKEN) as client:
        client.search("Observation", {"code": "751-8"})

    assert first.call_count == 1 and second.call_count == 1
    assert second.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_get_url_outside_the_base_path_is_refused_without_sending(
    mock: respx.MockRouter,
) -> None:
    admin = mock.get("https://ehr.example.org/admin/users")
    with FhirClient(BASE, auth=TOKEN) as client, pytest.raises(FatalFhirServerError):
        client.get_url("https://ehr.example.org/admin/users")
    assert admin.call_count == 0


@pytest.mark.anyio
async def test_the_async_client_stays_under_the_base_too(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/Observation").mock(return_value=searchset("/admin?page=2"))
    admin = mock.get("https://ehr.example.org/admin")

    async with AsyncFhirClient(BASE, auth=TOKEN) as client:
        with pytest.raises(FatalFhirServerError, match="outside the FHIR base"):
            await client.search("Observation", {"code": "751-8"})

    assert admin.call_count == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_retry_warning_names_the_route_not_the_patient(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    patient_id = "pt-4f9e2c71"
    mock.get(f"{BASE}/Patient/{patient_id}").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(
                200,
                json={"resourceType": "Patient", "id": patient_id},
                headers={"Content-Type": "application/fhir+json"},
            ),
        ]
    )
    caplog.set_level(logging.DEBUG, logger="fhir_leuko")

    with FhirClient(BASE, auth=TOKEN, sleep=lambda _: None) as client:
        client.read("Patient", patient_id)

    lines = [r.getMessage() for r in caplog.records]
    assert any("FHIR GET Patient/{id}: 429; retry 1/" in line for line in lines), lines
    assert not any(patient_id in line for line in lines), lines


@pytest.mark.parametrize(
    ("label", "route"),
    [
        ("GET Patient/123", "GET Patient/{id}"),
        ("GET Observation/obs-1/_history/4", "GET Observation/{id}/_history/{id}"),
        ("GET Patient/p1/$everything", "GET Patient/{id}/$everything"),
        ("search Observation", "search Observation"),
        ("POST [base]", "POST [base]"),
        ("GET Patient/Patient", "GET Patient/{id}"),
        ("GET tenant-7/Patient/Smith", "GET {id}/Patient/{id}"),
    ],
)
def test_a_label_becomes_a_route_without_ids(label: str, route: str) -> None:
    from fhir_leuko.fhirio.client import loggable

    assert loggable(label) == route


@pytest.mark.parametrize(
    "server",
    [
        "https://ehr.example.org/fhir/r4/%2e%2e/admin",
        "https://ehr.example.org/fhir/r4/%2E%2E%2Fadmin",
        "https://ehr.example.org/fhir/r4/..%2fadmin",
        "https://ehr.example.org/fhir/r4/.%2e/.%2e/internal",
    ],
)
def test_an_encoded_step_up_does_not_pass_the_fhir_server_allowlist(server: str) -> None:
    from fhir_leuko.cdshooks.fetch import server_allowed

    assert not server_allowed(server, (BASE,))
    assert server_allowed(BASE + "/tenant-a", (BASE,))  # below the base is still fine

"""The client raises errors by FHIR meaning (as fhir-py's ResourceNotFound); each meaning is
still Temporary or Fatal, so retry decisions by those two types are unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
import respx

from fhir_leuko.errors import (
    FatalFhirServerError,
    FhirBadRequest,
    FhirForbidden,
    FhirNotFound,
    FhirNotSupported,
    FhirRateLimited,
    FhirServerError,
    FhirUnauthorized,
    TemporaryFhirServerError,
    fhir_error_for_status,
)
from fhir_leuko.fhirio.client import AsyncFhirClient, FhirClient

BASE = "https://fhir.example.org/r4"
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing", "diagnostics": "said the server"}],
}


def answer(status: int) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(OUTCOME), headers={"Content-Type": "application/fhir+json"}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("status", "meaning", "family"),
    [
        (400, FhirBadRequest, FatalFhirServerError),
        (401, FhirUnauthorized, FatalFhirServerError),
        (403, FhirForbidden, FatalFhirServerError),
        (404, FhirNotFound, FatalFhirServerError),
        (405, FhirNotSupported, FatalFhirServerError),
        (410, FhirNotFound, FatalFhirServerError),
        (422, FatalFhirServerError, FatalFhirServerError),
        (501, FhirNotSupported, FatalFhirServerError),
    ],
)
def test_a_refusal_is_raised_by_meaning_at_once(
    mock: respx.MockRouter, status: int, meaning: type[FhirServerError], family: type
) -> None:
    route = mock.get(f"{BASE}/Patient/p1").mock(return_value=answer(status))
    clock = Clock()
    with (
        FhirClient(BASE, sleep=clock.sleep, clock=clock, max_retries=2) as client,
        pytest.raises(family) as caught,
    ):
        client.read("Patient", "p1")
    assert type(caught.value) is meaning
    assert caught.value.status == status
    assert caught.value.outcome == OUTCOME
    assert "said the server" in str(caught.value)
    assert route.call_count == 1 and clock.sleeps == []  # not retried


def test_a_rate_limit_still_rate_limited_after_the_retries(mock: respx.MockRouter) -> None:
    route = mock.get(f"{BASE}/Patient/p1").mock(return_value=answer(429))
    clock = Clock()
    with (
        FhirClient(BASE, sleep=clock.sleep, clock=clock, max_retries=2, jitter=lambda: 0.5) as c,
        pytest.raises(FhirRateLimited) as caught,
    ):
        c.read("Patient", "p1")
    assert isinstance(caught.value, TemporaryFhirServerError)
    assert caught.value.status == 429
    assert route.call_count == 3 and len(clock.sleeps) == 2


def test_a_server_error_stays_temporary_and_plain(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/Patient/p1").mock(return_value=answer(503))
    clock = Clock()
    with (
        FhirClient(BASE, sleep=clock.sleep, clock=clock, max_retries=1, jitter=lambda: 0.5) as c,
        pytest.raises(TemporaryFhirServerError) as caught,
    ):
        c.read("Patient", "p1")
    assert type(caught.value) is TemporaryFhirServerError
    assert caught.value.status == 503


@pytest.mark.anyio
async def test_the_async_client_raises_the_same_meaning(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/Patient/gone").mock(return_value=answer(410))
    clock = Clock()
    async with AsyncFhirClient(BASE, sleep=clock.asleep, clock=clock) as client:
        with pytest.raises(FhirNotFound) as caught:
            await client.read("Patient", "gone")
    assert caught.value.status == 410


def test_status_without_a_meaning_falls_in_its_family() -> None:
    assert type(fhir_error_for_status(408, "m")) is TemporaryFhirServerError
    assert type(fhir_error_for_status(502, "m")) is TemporaryFhirServerError
    assert type(fhir_error_for_status(409, "m")) is FatalFhirServerError

"""Read-only checks against the public FHIR sandboxes (HAPI's R4 server, the SMART sandbox).

Off by default (``-m 'not live'`` in pyproject); run with ``pytest -m live tests/live``. They
need the internet and depend on other people's data, so they check what must hold for any
patient: our queries are accepted, pages are followed, and a patient's data evaluates. They
never write (no ``--write-back``): public servers are shared, and the data is not ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from fhir_leuko.cli import main
from fhir_leuko.clinical.model import Assessment
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import codes, queries
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.fhirio.server import fetch_patient_data
from fhir_leuko.service import evaluate

pytestmark = pytest.mark.live

SANDBOXES = {
    "hapi": os.environ.get("FHIR_LEUKO_LIVE_HAPI", "https://hapi.fhir.org/baseR4"),
    "smart": os.environ.get("FHIR_LEUKO_LIVE_SMART", "https://launch.smarthealthit.org/v/r4/fhir"),
}


@pytest.fixture(params=sorted(SANDBOXES))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FhirClient]]:
    base = SANDBOXES[request.param]
    with FhirClient(base, timeouts=30.0, max_retries=2, max_pages=5) as client:
        yield base, client


def _patient_with_a_cbc(client: FhirClient) -> str:
    """Some patient who has a WBC or ANC result on the server."""
    found = client.search(
        "Observation",
        [("code", queries.any_code(codes.LOINC, ("6690-2", "751-8"))), ("_count", "20")],
        limit=20,
    )
    for obs in found:
        ref = (obs.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/"):
            return str(ref.split("/", 1)[1])
    pytest.skip("the sandbox holds no WBC/ANC result with a Patient subject today")


def test_the_prefetch_queries_are_accepted_and_the_patient_evaluates(
    server: tuple[str, FhirClient],
) -> None:
    _, client = server
    patient = _patient_with_a_cbc(client)
    now = datetime.now(UTC)

    data = fetch_patient_data(client, patient, now)

    assert any(r.get("resourceType") == "Patient" for r in data)
    try:
        assessment = evaluate(data, now=now, patient_id=patient)
    except InputError as err:  # other people's data may be unusable; say why, don't fail
        pytest.skip(f"sandbox data for this patient is not evaluable: {err}")
    assert isinstance(assessment, Assessment)


def test_catch_up_search_is_accepted(server: tuple[str, FhirClient]) -> None:
    _, client = server
    page = next(
        client.search_bundle_pages(
            "Observation", queries.changed_observations("2020-01-01T00:00:00Z", page_size=5)
        )
    )

    assert page["resourceType"] == "Bundle" and page["type"] == "searchset"


def test_cli_fetch_without_write_back(
    server: tuple[str, FhirClient], capsys: pytest.CaptureFixture[str]
) -> None:
    base, client = server
    patient = _patient_with_a_cbc(client)

    code = main(["fetch", "--fhir-base", base, "--patient", patient, "--format", "text"])

    assert code in (0, 2), capsys.readouterr().err  # 2: the sandbox's data was not usable

"""Property-based run over our own OpenAPI schema: no input makes the service answer 5xx.

Schemathesis generates requests from ``/openapi.json`` (valid ones and, in its negative
phase, invalid ones) and checks every answer: never a server error, and a status, content
type and body that the schema documents. Bounded so that it finishes in about a minute on
two cores. No network: fhirServer bases are not allowlisted, so fetch paths answer 412.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is not installed (pip install 'schemathesis~=4.32')",
)

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from fhir_leuko.app import create_app  # noqa: E402
from fhir_leuko.config import ServiceSettings, Settings  # noqa: E402

# Removed when the test process exits (the app is built at import, for parametrize).
_TMP = tempfile.TemporaryDirectory(prefix="fhir-leuko-schemathesis-")
_DB = Path(_TMP.name) / "feedback.sqlite3"
APP = create_app(Settings(service=ServiceSettings(insecure_dev=True, feedback_db=str(_DB))))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_makes_the_service_fail(case: schemathesis.Case) -> None:
    # Every check but one: JSON Schema cannot state our cross-field rules (the hook must
    # match the service, selections must name draftOrders entries, a patient-bound token
    # must match context.patientId), so schema-valid requests may rightly get a 400.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])

"""The one evaluation every entry point shares: FHIR JSON in, Assessment and FHIR out.

The CDS Hooks service, the Subscription worker and the CLI all call :func:`evaluate`; none
of them holds a copy of any rule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_leuko.clinical.model import Assessment
from fhir_leuko.clinical.rules import assess
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.fhirio import emit
from fhir_leuko.fhirio.ingest import ingest, load_json


def evaluate(
    data: bytes | str | Any,
    *,
    now: datetime | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    patient_id: str | None = None,
    fhir_base: str | None = None,
) -> Assessment:
    """Evaluate FHIR input (raw JSON bytes/str, or already-parsed JSON) for one patient.

    ``patient_id``: the patient evaluated; other patients' resources are left out and
    reported. ``fhir_base``: the server the data came from (absolute subject references on
    another server are not this patient's).
    """
    doc = load_json(data) if isinstance(data, bytes | str) else data
    # One instant, one answer: a clock read at another offset (`--now ...-07:00`, a server in
    # local time) must not move a date in the report or a card window.
    when = (now or datetime.now(UTC)).astimezone(UTC)
    labs = ingest(doc, patient_id=patient_id, thresholds=thresholds, fhir_base=fhir_base)
    return assess(labs, when, thresholds)


def evaluate_to_bundle(
    data: bytes | str | Any,
    *,
    now: datetime | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    patient_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate and return the output Bundle (type collection) as R4 JSON."""
    return emit.bundle(evaluate(data, now=now, thresholds=thresholds, patient_id=patient_id))

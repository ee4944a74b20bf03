"""Small builders for FHIR test data that looks like what real servers send."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

# The tests' frozen clock: 2026-03-10T12:00:00Z, read at a non-UTC offset (India, +05:30) as
# a server's local clock would give it, so that no rule or card window can pass by comparing
# wall-clock fields instead of instants. at() writes its instants at this offset too.
IST = timezone(timedelta(hours=5, minutes=30))
NOW = datetime(2026, 3, 10, 17, 30, tzinfo=IST)
NOW_UTC = NOW.astimezone(UTC)
_ids = itertools.count(1)

WBC, ANC, NEUT_PCT, BAND_PCT = "6690-2", "751-8", "770-8", "764-1"
HB, PLT, MCV, TEMP, B12, FOLATE = "718-7", "777-3", "787-2", "8310-5", "2132-9", "2284-8"

UNITS = {
    WBC: "10*3/uL",
    ANC: "10*3/uL",
    NEUT_PCT: "%",
    BAND_PCT: "%",
    HB: "g/dL",
    PLT: "10*3/uL",
    MCV: "fL",
    TEMP: "Cel",
    B12: "pg/mL",
    FOLATE: "ng/mL",
}


def at(days_before: float = 0.0, hours_before: float = 0.0) -> str:
    """A FHIR instant `days_before` days before NOW (minus the hours)."""
    t = NOW - timedelta(days=days_before, hours=hours_before) - timedelta(hours=2)
    return t.isoformat().replace("+00:00", "Z")


def obs(
    code: str,
    value: float | None,
    when: str | None = None,
    *,
    unit: str | None = None,
    ucum: str | None = "same",
    status: str = "final",
    oid: str | None = None,
    low: float | None = None,
    patient: str = "p1",
    specimen: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    unit = unit if unit is not None else UNITS.get(code, "1")
    o: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid or f"o{next(_ids)}",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs" if code == TEMP else "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when or at(),
    }
    if value is not None:
        q: dict[str, Any] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"}
        q["code"] = unit if ucum == "same" else ucum
        if q["code"] is None:
            del q["code"]
        o["valueQuantity"] = q
    if low is not None:
        o["referenceRange"] = [{"low": {"value": low, "unit": unit, "code": unit}}]
    if specimen:
        o["specimen"] = {"reference": specimen}
    o.update(extra)
    return o


def patient(birth: str = "1970-05-01", gender: str = "female", pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender}


def cbc(
    wbc: float | None,
    anc: float | None = None,
    *,
    when: str | None = None,
    neut_pct: float | None = None,
    hb: float | None = None,
    plt: float | None = None,
    mcv: float | None = None,
    status: str = "final",
) -> list[dict[str, Any]]:
    """One draw: the given analytes at the same time."""
    when = when or at()
    out = []
    for code, v in ((WBC, wbc), (ANC, anc), (NEUT_PCT, neut_pct), (HB, hb), (PLT, plt), (MCV, mcv)):
        if v is not None:
            out.append(obs(code, v, when, status=status))
    return out


def med(name: str, rxnorm: str | None = None, status: str = "active") -> dict[str, Any]:
    concept: dict[str, Any] = {"text": name}
    if rxnorm:
        concept["coding"] = [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": rxnorm,
                "display": name,
            }
        ]
    return {
        "resourceType": "MedicationRequest",
        "id": f"m{next(_ids)}",
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": concept,
    }


def condition(
    text: str, code: tuple[str, str] | None = None, onset: str | None = None
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"c{next(_ids)}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }
    if code:
        c["code"]["coding"] = [{"system": code[0], "code": code[1]}]
    if onset:
        c["onsetDateTime"] = onset
    return c


def order(
    system: str, code: str, priority: str = "routine", status: str = "active"
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{next(_ids)}",
        "status": status,
        "intent": "order",
        "priority": priority,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def bundle(*items: Any, type_: str = "collection") -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for it in items:
        flat.extend(it if isinstance(it, list) else [it])
    return {"resourceType": "Bundle", "type": type_, "entry": [{"resource": r} for r in flat]}

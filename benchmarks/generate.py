"""Realistic CBC prefetch payloads for benchmarks.

`make_prefetch_bundle(1200, seed)` gives a searchset Bundle shaped like a FHIR server's answer
to the CDS prefetch (newest first, fullUrl, search.mode): 5 years of monthly CBCs with a full
differential, 20 Observations a draw, of which the engine reads about half (RBC, HCT, MCH,
MCHC, RDW, monocytes, eosinophils and basophils are there because real CBCs carry them).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

BASE = "https://fhir.example.org/r4"
# (LOINC, unit, mean, sd) for one automated CBC with differential.
PANEL: tuple[tuple[str, str, float, float], ...] = (
    ("6690-2", "10*3/uL", 4.2, 0.6),  # WBC
    ("789-8", "10*6/uL", 4.6, 0.3),  # RBC (not read)
    ("718-7", "g/dL", 13.1, 0.8),  # Hb
    ("4544-3", "%", 39.0, 2.0),  # HCT (not read)
    ("787-2", "fL", 89.0, 3.0),  # MCV
    ("785-6", "pg", 29.5, 1.0),  # MCH (not read)
    ("786-4", "g/dL", 33.5, 0.8),  # MCHC (not read)
    ("788-0", "%", 13.2, 0.7),  # RDW (not read)
    ("777-3", "10*3/uL", 230.0, 40.0),  # platelets
    ("770-8", "%", 52.0, 6.0),  # neutrophils %
    ("751-8", "10*3/uL", 2.2, 0.5),  # ANC
    ("736-9", "%", 35.0, 5.0),  # lymphocytes %
    ("731-0", "10*3/uL", 1.5, 0.3),  # lymphocytes #
    ("5905-5", "%", 8.0, 1.5),  # monocytes % (not read)
    ("742-7", "10*3/uL", 0.35, 0.08),  # monocytes # (not read)
    ("713-8", "%", 3.0, 1.0),  # eosinophils % (not read)
    ("711-2", "10*3/uL", 0.12, 0.05),  # eosinophils # (not read)
    ("706-2", "%", 0.6, 0.2),  # basophils % (not read)
    ("704-7", "10*3/uL", 0.03, 0.01),  # basophils # (not read)
    ("764-1", "%", 1.0, 0.5),  # bands %
)


def observation(
    i: int, code: str, unit: str, value: float, when: datetime, patient: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "meta": {"versionId": "1", "lastUpdated": when.isoformat().replace("+00:00", "Z")},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": code},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "issued": (when + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        "referenceRange": [
            {
                "low": {
                    "value": round(value * 0.8, 1),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
                "high": {
                    "value": round(value * 1.6, 1),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
        ],
    }


def make_prefetch_bundle(
    n_observations: int = 1200, seed: int = 7, patient: str = "bench-1", end: datetime | None = None
) -> dict[str, Any]:
    """A searchset of about ``n_observations`` CBC Observations, monthly draws, newest first."""
    rng = random.Random(seed)
    end = end or datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    per_draw = len(PANEL)
    draws = max(1, n_observations // per_draw)
    entries: list[dict[str, Any]] = []
    i = 0
    for d in range(draws):
        when = end - timedelta(days=30 * d, minutes=rng.randint(0, 50))
        for code, unit, mean, sd in PANEL:
            value = round(max(0.01, rng.gauss(mean, sd)), 2)
            o = observation(i, code, unit, value, when, patient)
            entries.append(
                {
                    "fullUrl": f"{BASE}/Observation/{o['id']}",
                    "resource": o,
                    "search": {"mode": "match"},
                }
            )
            i += 1
            if i >= n_observations:
                break
    return {
        "resourceType": "Bundle",
        "id": f"bench-{seed}",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{BASE}/Observation?patient={patient}&_sort=-date"}],
        "entry": entries,
    }


def make_patient(patient: str = "bench-1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient, "birthDate": "1968-07-14", "gender": "female"}

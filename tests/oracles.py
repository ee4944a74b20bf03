"""Expectations typed by hand from the project's code lists (finding and action codes,
systems), shared by the tests that check the engine's output (samples) and the published
terminology (profiles) against them.

Kept apart from ``fhir_leuko.fhirio.codes`` on purpose: a test that read its expectations from
the code under test could not fail.
"""

from __future__ import annotations

BASE = "http://fhir-leuko.org/fhir"
FINDING_SYSTEM = f"{BASE}/CodeSystem/leukopenia-finding"
ACTION_SYSTEM = f"{BASE}/CodeSystem/leukopenia-action"
RISK_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"

EXPECTED_FINDINGS = frozenset(
    {
        "leukopenia",
        "neutropenia-mild",
        "neutropenia-moderate",
        "neutropenia-severe",
        "neutropenia-profound",
        "neutropenia-unknown",
        "febrile-neutropenia",
        "presumed-febrile-neutropenia",
        "fever",
        "wbc-below-3",
        "bicytopenia",
        "pancytopenia",
        "macrocytosis",
        "progressive-decline",
        "stable",
        "persistent",
        "high-risk-medication",
        "duffy-null",
        "red-flag-condition",
        "preliminary-data",
        "paediatric-limits",
        "anaemia",
        "thrombocytopenia",
    }
)
EXPECTED_ACTIONS = frozenset(
    {
        "repeat-cbc",
        "vitamin-b12",
        "folate",
        "peripheral-smear",
        "haematology-referral",
        "urgent-evaluation",
    }
)

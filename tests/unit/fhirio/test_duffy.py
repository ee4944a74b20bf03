"""Duffy-null documented (clinical-rules.md v2): the phenotype Fy(a-b-) recorded as a fact.

Not Duffy-null: one antigen negative and the other positive, anything negated or uncertain,
a refuted / entered-in-error / resolved record. When in doubt: not Duffy-null. Never from race.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.fhirio.ingest import duffy_null_stated, ingest
from tests.builders import at, bundle, cbc, condition, patient

NULL = [
    "Duffy-null",
    "Duffy null phenotype",
    "Duffy-null phenotype (Fy(a-b-))",
    "Fy(a-b-)",
    "Fy(a\u2212b\u2212)",  # unicode minus signs
    "Fy (a- b-)",
    "Duffy phenotype: Fy(a\u2013b\u2013)",  # en dashes
    "Duffy Fya negative, Fyb negative",
    "Fya: negative; Fyb: negative",
    "Duffy null-associated neutrophil count",
    "DUFFY NULL",
]
NOT_NULL = [
    "Duffy Fya negative, Fyb positive",
    "Fy(a-b+)",
    "Fy(a\u2212b+)",
    "Fy(a+b-)",
    "Duffy Fya negative",  # the other antigen not stated
    "Duffy-null status not yet tested",
    "Duffy status: not tested",
    "Duffy null: no",
    "Duffy-null?",
    "? Duffy null",
    "Possible Duffy-null phenotype",
    "Rule out Duffy null",
    "Duffy null - to be confirmed",
    "Duffy-null: negative",
    "Duffy antigen typing pending",
    "Anti-Fya antibody",
    "Duffy negative",  # which antigen? when in doubt: not
    "Duffy phenotype unknown",
    "African ancestry",  # never inferred from race
    "Black or African American",
    "benign ethnic neutropenia",
]


@pytest.mark.parametrize("text", NULL)
def test_duffy_null_wording(text: str) -> None:
    assert duffy_null_stated(text)


@pytest.mark.parametrize("text", NOT_NULL)
def test_not_duffy_null_wording(text: str) -> None:
    assert not duffy_null_stated(text)


def duffy_kinds(*resources: Any) -> list[str]:
    labs = ingest(bundle(patient(), cbc(3.0, 1.3), *resources), patient_id="p1")
    return [c.kind for c in labs.conditions if c.kind == "duffy-null"]


@pytest.mark.parametrize("text", NULL)
def test_a_duffy_null_condition(text: str) -> None:
    assert duffy_kinds(condition(text)) == ["duffy-null"]


@pytest.mark.parametrize("text", NOT_NULL)
def test_a_condition_that_is_not_duffy_null(text: str) -> None:
    assert duffy_kinds(condition(text)) == []


@pytest.mark.parametrize(
    ("status", "verification"),
    [
        ("resolved", None),
        ("inactive", None),
        ("active", "refuted"),
        ("active", "entered-in-error"),
        ("active", "unconfirmed"),
        ("active", "provisional"),
        ("active", "differential"),
    ],
)
def test_a_duffy_null_record_that_is_not_a_fact(status: str, verification: str | None) -> None:
    c = condition("Duffy-null phenotype")
    c["clinicalStatus"]["coding"][0]["code"] = status
    if verification:
        c["verificationStatus"] = {"coding": [{"code": verification}]}
    assert duffy_kinds(c) == []


def phenotype_obs(value: Any, status: str = "final", code_text: str = "Duffy phenotype") -> Any:
    o: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "duffy1",
        "status": status,
        "code": {"text": code_text},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": at(300),
    }
    if isinstance(value, str):
        o["valueString"] = value
    else:
        o["valueCodeableConcept"] = value
    return o


@pytest.mark.parametrize("value", ["Fy(a-b-)", "Fy(a\u2212b\u2212)", "Duffy null"])
def test_a_duffy_phenotype_observation(value: str) -> None:
    assert duffy_kinds(phenotype_obs(value)) == ["duffy-null"]


@pytest.mark.parametrize("value", ["Fy(a-b+)", "negative", "not tested", "pending", "Fy(a+b+)"])
def test_a_duffy_observation_that_is_not_null(value: str) -> None:
    assert duffy_kinds(phenotype_obs(value)) == []


def test_a_duffy_null_observation_answered_negative_is_not_null() -> None:
    assert duffy_kinds(phenotype_obs({"text": "Negative"}, code_text="Duffy-null phenotype")) == []


@pytest.mark.parametrize("status", ["preliminary", "entered-in-error", "cancelled", "registered"])
def test_a_duffy_observation_that_is_not_final(status: str) -> None:
    assert duffy_kinds(phenotype_obs("Fy(a-b-)", status=status)) == []


def antigen_obs(antigen: str, value: str, days_before: float = 300, oid: str = "") -> Any:
    o = phenotype_obs(value, code_text=f"Fy {antigen} Ag [Presence] on Red Blood Cells")
    o["id"] = oid or f"fy{antigen}-{days_before}"
    o["effectiveDateTime"] = at(days_before)
    return o


def test_separate_antigen_typings_both_negative_are_duffy_null() -> None:
    assert duffy_kinds(antigen_obs("a", "Negative"), antigen_obs("b", "Negative")) == ["duffy-null"]


@pytest.mark.parametrize(
    ("fya", "fyb"), [("Negative", "Positive"), ("Positive", "Negative"), ("Positive", "Positive")]
)
def test_separate_antigen_typings_with_one_positive_are_not(fya: str, fyb: str) -> None:
    assert duffy_kinds(antigen_obs("a", fya), antigen_obs("b", fyb)) == []


def test_one_antigen_typing_alone_is_not_duffy_null() -> None:
    assert duffy_kinds(antigen_obs("a", "Negative")) == []


def test_the_latest_typing_of_an_antigen_counts() -> None:
    older_neg = antigen_obs("b", "Negative", days_before=400)
    newer_pos = antigen_obs("b", "Positive", days_before=10)
    assert duffy_kinds(antigen_obs("a", "Negative"), older_neg, newer_pos) == []


def test_an_uncertain_antigen_typing_is_not_used() -> None:
    assert duffy_kinds(antigen_obs("a", "Negative"), antigen_obs("b", "Weak positive?")) == []


def coded_antigen_obs(antigen: str, text: str, display: str, code_name: str) -> Any:
    """A blood bank's typing as an EHR sends it: the value's text and its SNOMED display."""
    o = antigen_obs(antigen, "unused")
    del o["valueString"]
    o["code"] = {"coding": [{"system": "http://loinc.org", "display": code_name}]}
    o["valueCodeableConcept"] = {
        "coding": [{"system": "http://snomed.info/sct", "display": display}],
        "text": text,
    }
    return o


def test_typings_whose_text_and_display_both_say_negative_are_duffy_null() -> None:
    # LOINC names the antigens with a superscript: "Fy sup(a) Ag [Presence] on Red Blood Cells".
    fya = coded_antigen_obs(
        "a", "Negative", "Negative", "Fy sup(a) Ag [Presence] on Red Blood Cells"
    )
    fyb = coded_antigen_obs(
        "b", "Negative", "Negative", "Fy sup(b) Ag [Presence] on Red Blood Cells"
    )
    assert duffy_kinds(fya, fyb) == ["duffy-null"]


def test_a_typing_whose_text_and_display_disagree_is_not_used() -> None:
    fya = coded_antigen_obs("a", "Negative", "Negative", "Fy sup(a) Ag")
    fyb = coded_antigen_obs("b", "Negative", "Positive", "Fy sup(b) Ag")
    assert duffy_kinds(fya, fyb) == []

"""The FHIR reference helpers: strict parsing for keys, lenient matching within an input."""

from __future__ import annotations

import pytest

from fhir_leuko.fhirio.ingest import medication_concept
from fhir_leuko.fhirio.refs import (
    Reference,
    key_of,
    label_of,
    parse_reference,
    relative,
    split_base,
    subject_patient,
    type_and_id,
)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Patient/1", Reference("Patient", "1")),
        ("https://x.org/fhir/Patient/1", Reference("Patient", "1", "https://x.org/fhir")),
        (
            "https://x.org/fhir/Observation/o-1/_history/7",
            Reference("Observation", "o-1", "https://x.org/fhir", "7"),
        ),
        ("Observation/o-1/_history/bad!", Reference("Observation", "o-1")),
        ("Patient/1?_format=json", Reference("Patient", "1")),
        ("urn:uuid:2d2c6d38-6c40-4f3c-9a5e-0d1d6b1c2f11", None),
        ("#med1", None),
        ("patient/1", None),
        ("Patient/has space", None),
        ("", None),
    ],
)
def test_parse_reference(ref: str, expected: Reference | None) -> None:
    assert parse_reference(ref) == expected


def test_lenient_reading_keeps_what_the_sender_wrote() -> None:
    # An id outside the R4 grammar still matches its own resource within one input.
    assert relative("https://x/fhir/Observation/a_b/_history/2") == "Observation/a_b"
    assert relative("lonely") == "lonely"
    assert split_base("https://x/fhir/Patient/1/_history/2") == ("https://x/fhir", "Patient/1")
    assert split_base("Patient/1") == (None, "Patient/1")


def test_resource_keys_and_labels() -> None:
    assert key_of({"resourceType": "Patient", "id": "p1"}) == "Patient/p1"
    assert key_of({"resourceType": "Patient", "id": "../x"}) is None
    assert label_of({"resourceType": "Observation", "_fullUrl": "urn:uuid:1"}) == "urn:uuid:1"
    assert label_of({"resourceType": "Observation"}) == "Observation/(no id)"
    obs = {"resourceType": "Observation", "subject": {"reference": "https://x/Patient/p2"}}
    assert subject_patient(obs) == "Patient/p2"
    assert (
        subject_patient({"resourceType": "Observation", "subject": {"reference": "Group/g"}})
        is None
    )


def test_medication_concept_reads_each_kind_of_reference() -> None:
    code = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2626"}]}
    contained = {
        "medicationReference": {"reference": "#m"},
        "contained": [{"resourceType": "Medication", "id": "m", "code": code}],
    }
    assert medication_concept(contained) == code
    elsewhere = {"medicationReference": {"reference": "Medication/m"}}
    assert medication_concept(elsewhere) is None
    assert medication_concept(elsewhere, {"Medication/m": {"code": code}}.get) == code
    display_only = {"medicationReference": {"display": "clozapine"}}
    assert medication_concept(display_only) == {"text": "clozapine"}
    assert medication_concept({"medicationCodeableConcept": code}) == code


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Observation/1/_history/2", ("Observation", "1")),
        ("https://x/fhir/Patient/p_1/", ("Patient", "p_1")),
        ("Patient/", None),
        ("lonely", None),
    ],
)
def test_type_and_id(ref: str, expected: tuple[str, str] | None) -> None:
    assert type_and_id(ref) == expected

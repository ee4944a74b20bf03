"""Every unusable CBC value is named with its analyte and its value as sent (rules 1.3, 1.8)."""

from __future__ import annotations

import pytest

from fhir_leuko.clinical.model import CBC_ANALYTES, Analyte
from fhir_leuko.fhirio.ingest import ingest
from tests.builders import ANC, HB, WBC, bundle, obs, patient


@pytest.mark.parametrize(
    ("code", "value", "unit", "issue", "sent"),
    [
        (WBC, 4.0, "g/L", "unknown-unit", "4.0 g/L"),
        (ANC, 0.3, "xyz", "unknown-unit", "0.3 xyz"),
        (HB, 12.0, "G/L", "unknown-unit", "12.0 G/L"),
        (WBC, 3400, "10*3/uL", "implausible-value", "3400 10*3/uL"),
    ],
)
def test_an_unusable_value_is_reported_with_analyte_and_value_as_sent(
    code: str, value: float, unit: str, issue: str, sent: str
) -> None:
    labs = ingest(bundle(patient(), obs(code, value, unit=unit)), patient_id="p1")
    assert labs.results == ()
    (i,) = [i for i in labs.issues if i.code == issue]
    assert i.analyte in CBC_ANALYTES and i.sent == sent
    assert i.ref is not None and i.ref in i.message and sent in i.message


def test_meditech_thousands_per_cubic_millimetre() -> None:
    labs = ingest(bundle(patient(), obs(WBC, 2.9, unit="K/mm3", ucum=None)), patient_id="p1")
    assert [(r.analyte, r.value) for r in labs.results] == [(Analyte.WBC, 2.9)]


def test_ucum_and_display_that_disagree_are_named() -> None:
    labs = ingest(bundle(patient(), obs(WBC, 4.0, unit="g/L", ucum="G/L")), patient_id="p1")
    (i,) = labs.issues
    assert i.code == "unit-conflict" and i.analyte is Analyte.WBC and i.sent == "4.0 g/L"

"""A temperature charted under a local code only (no LOINC 8310-5).

The codes decide what a result is (clinical-rules.md 1.3; the code list reads body temperature
by LOINC 8310-5), so such a reading is not read as a temperature. But a febrile one in the fever
window is named in the output, so that a fever charted under an unmapped code is never silently
lost; a normal one, or one outside the window, is not mentioned.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.clinical.model import Row
from fhir_leuko.service import evaluate
from tests.builders import NOW, at, bundle, cbc, patient


def local_temp(value: float, unit: str, code: str | None, when: str, name: str = "Temp") -> Any:
    q: dict[str, Any] = {"value": value, "unit": unit}
    if code is not None:
        q["system"], q["code"] = "http://unitsofmeasure.org", code
    return {
        "resourceType": "Observation",
        "id": f"t{value}{unit}",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": "urn:oid:1.2.840.114350.1", "code": "6"}], "text": name},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": q,
    }


def uncoded(a: Any) -> list[str]:
    return [i.message for i in a.issues if i.code == "uncoded-temperature"]


@pytest.mark.parametrize(
    ("value", "unit", "code", "celsius"),
    [(38.9, "Cel", "Cel", "38.9"), (102.1, "degF", None, "38.9"), (38.4, "C", None, "38.4")],
)
def test_a_febrile_reading_under_a_local_code_is_named_not_read(
    value: float, unit: str, code: str | None, celsius: str
) -> None:
    a = evaluate(bundle(patient(), cbc(2.9, 0.8), local_temp(value, unit, code, at())), now=NOW)
    assert a.row == Row.MODERATE_NEUTROPENIA  # not row 1: the reading is not a coded temperature
    (message,) = uncoded(a)
    assert f"{celsius} °C" in message and "8310-5" in message and "not counted" in message


def test_a_normal_or_old_reading_is_not_mentioned() -> None:
    normal = local_temp(36.8, "Cel", "Cel", at())
    old = local_temp(39.2, "Cel", "Cel", at(days_before=3))
    a = evaluate(bundle(patient(), cbc(2.9, 0.8), normal, old), now=NOW)
    assert uncoded(a) == []


def test_a_bare_c_or_f_unit_needs_a_name_that_says_temperature() -> None:
    other = local_temp(38.9, "C", None, at(), name="Complement C3")
    a = evaluate(bundle(patient(), cbc(2.9, 0.8), other), now=NOW)
    assert uncoded(a) == []

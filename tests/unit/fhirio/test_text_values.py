"""Text values and comparators (clinical-rules.md 1.7 v2), written from the rule.

valueString, or a JSON string in valueQuantity.value, holding one number with an optional
comparator is read as that quantity in the analyte's reporting unit (10^9/L for counts, %
for percentages) when the result has no unit, and as a comparator quantity otherwise; it is
reported as a data issue. Anything else in text is not read (and is reported).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.clinical.model import Analyte, DataIssue, PatientLabs, comparator_value
from fhir_leuko.fhirio.ingest import ingest, parse_text_value
from tests.builders import ANC, NEUT_PCT, WBC, bundle, obs, patient


def text_obs(code: str, text: str) -> dict[str, Any]:
    o = obs(code, None)
    o["valueString"] = text
    return o


def read(o: dict[str, Any]) -> PatientLabs:
    return ingest(bundle(patient(), o), patient_id="p1")


def only_issue(labs: PatientLabs, code: str) -> DataIssue:
    found = [i for i in labs.issues if i.code == code]
    assert len(found) == 1, labs.issues
    return found[0]


@pytest.mark.parametrize(
    ("text", "comparator", "bound"),
    [
        ("<0.1", "<", 0.1),
        ("< 0.1", "<", 0.1),
        ("<=0.5", "<=", 0.5),
        (">12", ">", 12.0),
        ("0.8", None, 0.8),
        (" 1.25 ", None, 1.25),
        ("\u22640.5", "<=", 0.5),
    ],
)
def test_a_text_count_without_unit_is_read_in_10e9_per_litre(
    text: str, comparator: str | None, bound: float
) -> None:
    labs = read(text_obs(ANC, text))
    (r,) = labs.results
    assert r.analyte is Analyte.ANC
    assert r.comparator == comparator
    assert r.value == comparator_value(bound, comparator)
    issue = only_issue(labs, "text-value")
    assert issue.analyte is Analyte.ANC and issue.sent == text.strip()
    assert issue.severity in ("information", "warning")


def test_less_than_is_just_below_its_bound() -> None:
    (r,) = read(text_obs(ANC, "<0.1")).results
    assert r.value < 0.1 and round(r.value, 6) == 0.1  # below 0.1, shown as 0.1
    assert r.shown == "<0.1"


def test_a_text_percent_is_read_in_percent() -> None:
    (r,) = read(text_obs(NEUT_PCT, "35")).results
    assert r.analyte is Analyte.NEUTROPHIL_PERCENT and r.value == 35.0


def test_a_json_string_in_value_quantity_is_read_with_its_unit() -> None:
    o = obs(ANC, None)
    o["valueQuantity"] = {"value": "<100", "unit": "/uL", "code": "/uL"}
    labs = read(o)
    (r,) = labs.results
    assert r.comparator == "<" and r.value == comparator_value(0.1, "<")
    issue = only_issue(labs, "text-value")
    assert issue.sent == "<100 /uL" and issue.severity == "information"


def test_a_plain_number_string_with_a_unit() -> None:
    o = obs(WBC, None)
    o["valueQuantity"] = {"value": "2.4", "unit": "10*3/uL", "code": "10*3/uL"}
    (r,) = read(o).results
    assert r.value == 2.4 and r.comparator is None


def test_the_fhir_comparator_is_read_the_same_way() -> None:
    o = obs(ANC, 0.5)
    o["valueQuantity"]["comparator"] = "<"
    labs = read(o)
    (r,) = labs.results
    assert r.comparator == "<" and r.value == comparator_value(0.5, "<") and r.value < 0.5
    issue = only_issue(labs, "comparator-value")
    assert issue.analyte is Analyte.ANC and issue.sent == "<0.5 10*3/uL"


def test_text_and_comparator_that_agree_are_read() -> None:
    o = obs(ANC, None)
    o["valueQuantity"] = {"value": "<0.5", "comparator": "<", "unit": "10*3/uL"}
    (r,) = read(o).results
    assert r.comparator == "<"


def test_text_and_comparator_that_disagree_are_not_guessed() -> None:
    o = obs(ANC, None)
    o["valueQuantity"] = {"value": "<0.5", "comparator": ">", "unit": "10*3/uL"}
    labs = read(o)
    assert labs.results == ()
    assert only_issue(labs, "unparseable-value").analyte is Analyte.ANC


@pytest.mark.parametrize("comparator", ["ad", "~", "=", "less than"])
def test_a_comparator_that_is_not_fhir_is_not_guessed(comparator: str) -> None:
    o = obs(ANC, 0.5)
    o["valueQuantity"]["comparator"] = comparator
    labs = read(o)
    assert labs.results == ()
    assert only_issue(labs, "unparseable-value").sent is not None


@pytest.mark.parametrize(
    "text",
    [
        "3,400",
        "see comment",
        "1.2.3",
        "NaN",
        "Infinity",
        "-Infinity",
        "",
        "  ",
        "<",
        "1e3",
        "0.1-0.3",
        "approx 2",
        "<0.1 x10^9/L",
        "TNTC",
    ],
)
def test_anything_else_in_text_is_not_read_and_is_named(text: str) -> None:
    labs = read(text_obs(ANC, text))
    assert labs.results == ()
    issue = only_issue(labs, "unparseable-value")
    assert issue.analyte is Analyte.ANC
    assert issue.sent == text.strip()
    assert issue.ref is not None and issue.ref in issue.message


def test_a_text_value_outside_any_plausible_range_is_not_used() -> None:
    # "3400" with no unit would be 3,400 x 10^9/L: flagged, never rescaled (codes.md).
    labs = read(text_obs(WBC, "3400"))
    assert labs.results == ()
    issue = only_issue(labs, "implausible-value")
    assert issue.analyte is Analyte.WBC and issue.sent == "3400"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("<0.1", ("<", 0.1)), ("0.8", (None, 0.8)), (">= 2", (">=", 2.0)), (".5", (None, 0.5))],
)
def test_parse_text_value(text: str, parsed: tuple[str | None, float]) -> None:
    assert parse_text_value(text) == parsed


@pytest.mark.parametrize(
    "text", ["3,400", "NaN", "inf", "1.2.3", "-1", "+2", "<<1", "\u0661\u0662"]
)
def test_parse_text_value_refuses(text: str) -> None:
    assert parse_text_value(text) is None

"""Odd data never crashes the evaluation: it yields an assessment or a clear InputError."""

from __future__ import annotations

import contextlib
import math
from datetime import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import emit
from fhir_leuko.fhirio.ingest import ingest
from fhir_leuko.service import evaluate
from tests.builders import NOW, bundle, cbc, obs, patient

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(),  # also beyond any float (a Python caller can pass one)
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["final", "amended", "10*3/uL", "2026-03-10", "Cel"]),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "status",
    "code",
    "subject",
    "effectiveDateTime",
    "valueQuantity",
    "valueString",
    "referenceRange",
    "component",
    "specimen",
    "dataAbsentReason",
    "effectivePeriod",
    "issued",
    "id",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(FIELDS), junk), max_size=4),
    st.sampled_from(["6690-2", "751-8", "770-8", "8310-5", "2132-9"]),
)
def test_mangled_observations_never_crash(mangles: list[tuple[str, Any]], code: str) -> None:
    o = obs(code, 2.0)
    for field, value in mangles:
        o[field] = value
    try:
        a = evaluate(bundle(patient(), cbc(3.0, 1.2), o), now=NOW)
    except InputError:
        return
    emit.bundle(a)  # and the output can always be built


@settings(max_examples=200, deadline=None)
@given(junk)
def test_arbitrary_json_is_an_assessment_or_an_input_error(doc: Any) -> None:
    with contextlib.suppress(InputError):
        evaluate(doc, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "Patient",
            "MedicationRequest",
            "MedicationStatement",
            "Condition",
            "ServiceRequest",
            "DiagnosticReport",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "status",
                "birthDate",
                "gender",
                "code",
                "medicationCodeableConcept",
                "medicationReference",
                "clinicalStatus",
                "verificationStatus",
                "priority",
                "result",
                "onsetDateTime",
                "contained",
            ]
        ),
        junk,
        max_size=5,
    ),
)
def test_mangled_context_resources_never_crash(rt: str, fields: dict[str, Any]) -> None:
    res = {"resourceType": rt, **fields}
    with contextlib.suppress(InputError):
        evaluate(bundle(patient(), cbc(3.0, 1.2), res), now=NOW)


def test_an_integer_beyond_any_float_is_not_a_number_and_not_a_crash() -> None:
    a = evaluate(bundle(patient(), cbc(1.0, 0.4), obs("6690-2", 10**400, oid="huge")), now=NOW)
    assert any(i.code == "unparseable-value" and i.ref == "Observation/huge" for i in a.issues)


# --- v2: text values, comparators, future times, urn:uuid links --------------------------------
# Never a crash, and every CBC value that could not be used is reported with its analyte and
# its value as sent (clinical-rules.md 1.3, 1.7, 1.8).


def _accounted_for(labs: Any, ref: str) -> bool:
    """The value at ``ref`` was read, or an issue names it with its analyte and value."""
    if any(r.ref == ref for r in labs.results):
        return True
    return any(
        i.ref == ref and i.analyte is not None and i.sent is not None and ref in i.message
        for i in labs.issues
    )


text_values = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            "<0.1",
            "< 0.1",
            "<=0.5",
            ">12",
            "0.8",
            "3,400",
            "see comment",
            "1.2.3",
            "NaN",
            "Infinity",
            "-0",
            "1e309",
            "\u2264 .5",
            "<",
            ">=",
            "0x10",
            "\u0661\u0662",
            " 7 ",
        ]
    ),
    st.builds(
        lambda c, v: f"{c}{v}",
        st.sampled_from(["", "<", "<=", ">", ">=", "~"]),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
)
comparators = st.one_of(st.none(), st.sampled_from(["<", "<=", ">", ">=", "ad", ""]), junk)
units = st.one_of(
    st.none(),
    st.sampled_from(["10*3/uL", "/uL", "g/L", "G/L", "K/mm3", "%", "x10*9/L", "cells/mcL", "xyz"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["6690-2", "751-8", "770-8", "718-7", "777-3"]),
    text_values,
    st.booleans(),
    comparators,
    units,
)
def test_text_values_and_comparators_are_read_or_reported(
    code: str, text: str, in_quantity: bool, comparator: Any, unit: str | None
) -> None:
    o = obs(code, None, oid="t1")
    if in_quantity:
        q: dict[str, Any] = {"value": text}
        if unit is not None:
            q["unit"] = unit
            q["code"] = unit
        if comparator is not None:
            q["comparator"] = comparator
        o["valueQuantity"] = q
    else:
        o["valueString"] = text
    labs = ingest(bundle(patient(), o), patient_id="p1")
    assert _accounted_for(labs, "Observation/t1")
    for r in labs.results:
        assert math.isfinite(r.value) and r.comparator in (None, "<", "<=", ">", ">=")
    emit.bundle(evaluate(bundle(patient(), o), now=NOW))


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
    ),
    st.sampled_from(["6690-2", "751-8", "8310-5"]),
    st.floats(min_value=0.0, max_value=45.0),
)
def test_any_time_past_or_future_never_crashes(when: datetime, code: str, value: float) -> None:
    o = obs(code, value, when.isoformat(), oid="f1")
    labs = ingest(bundle(patient(), o), patient_id="p1")
    assert _accounted_for(labs, "Observation/f1") or code == "8310-5"
    emit.bundle(evaluate(bundle(patient(), cbc(3.0, 1.1), o), now=NOW))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["6690-2", "751-8", "770-8"]),
            st.booleans(),  # has an id
            st.booleans(),  # has its own effective time
            st.booleans(),  # listed by the report
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([None, "2026-03-10T07:00:00Z", "not a time", "2027-01-01"]),
    st.lists(
        st.sampled_from(["urn:uuid:nowhere", "#r1", "Observation/", "", "urn:oid:1.2"]), max_size=3
    ),
    st.sampled_from(["final", "entered-in-error", "partial", None]),
)
def test_urn_uuid_links_never_crash_and_every_value_is_accounted_for(
    members: list[tuple[str, bool, bool, bool]],
    report_time: str | None,
    junk_refs: list[str],
    report_status: str | None,
) -> None:
    entries: list[dict[str, Any]] = [{"fullUrl": "urn:uuid:pat", "resource": patient()}]
    listed: list[str] = []
    refs: list[str] = []
    for i, (code, has_id, timed, in_report) in enumerate(members):
        o = obs(code, 1.5, oid=f"u{i}")
        if not timed:
            del o["effectiveDateTime"]
        o["subject"] = {"reference": "urn:uuid:pat"}
        full = f"urn:uuid:00000000-0000-0000-0000-{i:012d}"
        if not has_id:
            del o["id"]
        entries.append({"fullUrl": full, "resource": o})
        refs.append(f"Observation/u{i}" if has_id else full)
        if in_report:
            listed.append(full)
    dr: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": "dr",
        "code": {"text": "CBC"},
        "subject": {"reference": "urn:uuid:pat"},
        "result": [{"reference": r} for r in listed + junk_refs],
    }
    if report_status is not None:
        dr["status"] = report_status
    if report_time is not None:
        dr["effectiveDateTime"] = report_time
    entries.append({"fullUrl": "urn:uuid:dr", "resource": dr})
    doc = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    labs = ingest(doc)
    assert labs.patient_id == "p1"
    for ref in refs:
        assert _accounted_for(labs, ref), ref
    emit.bundle(evaluate(doc, now=NOW))

"""Odd data never crashes the evaluation: it yields an assessment or a clear InputError."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import emit
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

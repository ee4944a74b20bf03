"""Emitted FHIR: valid R4(B), only published codes, deterministic, nothing for a normal CBC."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.clinical.model import Action
from fhir_leuko.fhirio import codes, emit
from fhir_leuko.fhirio.profiles import codes_of
from fhir_leuko.service import evaluate, evaluate_to_bundle
from tests.builders import NOW, TEMP, at, bundle, cbc, med, obs, patient

SCENARIOS = [
    [cbc(1.2, 0.4), obs(TEMP, 38.6, at())],
    [cbc(1.5, 0.3)],
    [cbc(2.5, 1.2, hb=9.0, plt=90)],
    [cbc(2.9, 0.8), med("clozapine", "2626")],
    [cbc(3.5, 1.6, hb=11.0, mcv=104)],
    [cbc(6.5)],
    [cbc(3.6, 2.0, status="preliminary")],
]


def outputs() -> list[dict[str, Any]]:
    return [evaluate_to_bundle(bundle(patient(), *s), now=NOW) for s in SCENARIOS]


def codings(obj: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        if "system" in obj and "code" in obj:
            found.append(obj)
        for v in obj.values():
            found += codings(v)
    elif isinstance(obj, list):
        for v in obj:
            found += codings(v)
    return found


def test_every_emitted_resource_validates_against_r4b_models() -> None:
    for out in outputs():
        emit.validate(out)
        for e in out["entry"]:
            emit.validate(e["resource"])


def test_project_codes_are_all_defined_in_our_codesystems() -> None:
    defined = {
        codes.FINDING_SYSTEM: codes_of(codes.FINDING_SYSTEM),
        codes.ACTION_SYSTEM: codes_of(codes.ACTION_SYSTEM),
    }
    seen = 0
    for out in outputs():
        for c in codings(out):
            if c["system"] in defined:
                assert c["code"] in defined[c["system"]], c
                seen += 1
    assert seen > 20


def test_code_tables_match_the_published_codesystems() -> None:
    assert {a.value for a in Action} == codes_of(codes.ACTION_SYSTEM)
    assert set(codes.FINDING_DISPLAY) == codes_of(codes.FINDING_SYSTEM)


def test_service_request_contract() -> None:
    out = evaluate_to_bundle(bundle(patient(), cbc(1.5, 0.3)), now=NOW)
    ra = out["entry"][0]["resource"]
    srs = [e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    assert ra["resourceType"] == "RiskAssessment"
    assert ra["prediction"][0]["qualitativeRisk"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/risk-probability",
        "code": "high",
        "display": "High likelihood",
    }
    assert ra["basis"] and all(b["reference"].startswith("Observation/") for b in ra["basis"])
    for sr in srs:
        assert (sr["status"], sr["intent"]) == ("draft", "proposal")
        systems = {c["system"] for c in sr["code"]["coding"]}
        assert codes.ACTION_SYSTEM in systems and len(systems) == 2
        assert sr["priority"] == "asap"
        assert sr["supportingInfo"][0]["reference"] == f"urn:uuid:{ra['id']}"
        assert sr["supportingInfo"][0]["identifier"] == ra["identifier"][0]
        assert sr["occurrencePeriod"]["start"] <= sr["occurrencePeriod"]["end"]


def test_output_is_deterministic_for_the_same_input_and_now() -> None:
    doc = bundle(patient(), cbc(2.9, 0.8))
    assert evaluate_to_bundle(doc, now=NOW) == evaluate_to_bundle(doc, now=NOW)


def test_identifier_depends_on_patient_action_and_index_cbc() -> None:
    a1 = evaluate(bundle(patient(pid="p1"), cbc(2.9, 0.8, when=at(1))), now=NOW)
    a2 = evaluate(bundle(patient(pid="p1"), cbc(2.9, 0.8, when=at(2))), now=NOW)
    ids1 = {emit.service_request_identifier(a1, r) for r in a1.recommendations}
    ids2 = {emit.service_request_identifier(a2, r) for r in a2.recommendations}
    assert len(ids1) == len(a1.recommendations) and ids1.isdisjoint(ids2)


def test_normal_cbc_emits_nothing() -> None:
    out = evaluate_to_bundle(bundle(patient(), cbc(6.5, 3.8)), now=NOW)
    assert out == {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": "2026-03-10T12:00:00Z",
    }


def test_data_issues_travel_in_an_operation_outcome() -> None:
    out = evaluate_to_bundle(bundle(patient(), obs("6690-2", 2.0, unit="bananas")), now=NOW)
    oo = out["entry"][-1]["resource"]
    assert oo["resourceType"] == "OperationOutcome"
    assert "bananas" in oo["issue"][0]["diagnostics"]
    emit.validate(oo)


def test_preliminary_data_gives_a_preliminary_risk_assessment() -> None:
    out = evaluate_to_bundle(bundle(patient(), cbc(3.6, 2.0, status="preliminary")), now=NOW)
    assert out["entry"][0]["resource"]["status"] == "preliminary"


def test_a_normal_risk_assessment_is_valid_when_one_is_needed() -> None:
    # The Subscription worker writes one to supersede an earlier abnormal assessment.
    ra = emit.risk_assessment(evaluate(bundle(patient(), cbc(6.5, 3.8)), now=NOW))
    emit.validate(ra)
    assert ra["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "negligible"
    assert ra["reasonCode"] and ra["mitigation"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.uuids())
def test_uuid5_is_the_rfc4122_name_based_uuid(name: str, namespace: uuid.UUID) -> None:
    assert emit.uuid5(namespace, name) == str(uuid.uuid5(namespace, name))

"""Ingest: Bundle shapes, statuses, duplicates, draws, ANC derivation, reported issues."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.clinical.model import Analyte, Risk
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio.ingest import ingest, resources_of
from fhir_leuko.service import evaluate
from tests.builders import ANC, BAND_PCT, NEUT_PCT, NOW, WBC, at, bundle, cbc, obs, order, patient


def issue_codes(doc: Any) -> set[str]:
    return {i.code for i in evaluate(doc, now=NOW).issues}


@pytest.mark.parametrize(
    "type_", ["collection", "searchset", "transaction", "batch-response", "history"]
)
def test_bundle_of_any_type_is_read(type_: str) -> None:
    a = evaluate(bundle(patient(), cbc(1.5, 0.3), type_=type_), now=NOW)
    assert a.risk is Risk.HIGH


def test_bare_list_and_nested_prefetch_bundles() -> None:
    doc = [patient(), bundle(cbc(1.5, 0.3), type_="searchset"), None, bundle(type_="searchset")]
    assert evaluate(doc, now=NOW).risk is Risk.HIGH


def test_batch_response_entries_without_resources_are_skipped() -> None:
    b = bundle(patient(), cbc(1.5, 0.3))
    b["entry"].append({"response": {"status": "404 Not Found"}})
    assert len(resources_of(b)) == 3


@pytest.mark.parametrize("doc", [{"a": 1}, 42, ["text"], {"resourceType": 5}])
def test_non_fhir_input_is_a_clear_error(doc: Any) -> None:
    with pytest.raises(InputError, match="not FHIR"):
        evaluate(doc, now=NOW)


def test_invalid_json_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        evaluate(b"{nope", now=NOW)


def test_two_patients_in_one_input_is_an_error() -> None:
    with pytest.raises(InputError, match="more than one patient"):
        evaluate(bundle(obs(WBC, 3.0, patient="a"), obs(WBC, 3.0, patient="b")), now=NOW)


@pytest.mark.parametrize("status", ["registered", "cancelled", "entered-in-error", "unknown"])
def test_unused_statuses_are_ignored(status: str) -> None:
    a = evaluate(
        bundle(patient(), cbc(6.0, 3.0, when=at(5)), cbc(1.0, 0.05, status=status)), now=NOW
    )
    assert a.risk is Risk.NEGLIGIBLE
    assert "ignored-status" in {i.code for i in a.issues}


def test_amended_result_supersedes_final_at_the_same_time() -> None:
    when = at()
    a = evaluate(
        bundle(
            patient(),
            obs(WBC, 2.1, when),
            obs(ANC, 0.3, when),
            obs(ANC, 1.9, when, status="amended"),
        ),
        now=NOW,
    )
    assert a.index_draw is not None and a.index_draw.anc == 1.9
    assert any(h.rule == "status-precedence" for h in a.trace)


def test_identical_duplicates_count_once_and_not_as_a_trend() -> None:
    when = at()
    labs = ingest(bundle(patient(), obs(WBC, 3.5, when), obs(WBC, 3.5, when), obs(WBC, 3.5, when)))
    assert len(labs.results) == 3
    a = evaluate(bundle(patient(), obs(WBC, 3.5, when), obs(WBC, 3.5, when)), now=NOW)
    assert len(a.draws) == 1
    assert any(h.rule == "duplicate" for h in a.trace)


def test_conflicting_same_time_results_keep_the_worse_and_say_so() -> None:
    when = at()
    a = evaluate(
        bundle(patient(), obs(WBC, 5.0, when), obs(ANC, 0.4, when), obs(ANC, 2.5, when)), now=NOW
    )
    assert a.index_draw is not None and a.index_draw.anc == 0.4
    assert "conflicting-results" in {i.code for i in a.issues}


def test_data_absent_reason_is_not_a_zero() -> None:
    o = obs(ANC, None)
    o["dataAbsentReason"] = {"coding": [{"code": "error"}]}
    a = evaluate(bundle(patient(), obs(WBC, 5.0), o), now=NOW)
    assert a.index_draw is not None and a.index_draw.anc is None
    assert "data-absent" in {i.code for i in a.issues}


def test_unknown_unit_is_reported_and_value_not_used() -> None:
    a = evaluate(bundle(patient(), obs(WBC, 2.0, unit="bananas")), now=NOW)
    assert a.index_draw is None
    assert any("bananas" in i.message for i in a.issues)


def test_implausible_magnitude_is_flagged_not_rescaled() -> None:
    a = evaluate(bundle(patient(), obs(WBC, 3400, unit="10*3/uL"), obs(ANC, 2.0)), now=NOW)
    assert a.wbc is None
    assert "implausible-value" in {i.code for i in a.issues}


def test_unparseable_value_is_reported() -> None:
    o = obs(WBC, None)
    o["valueString"] = "see comment"
    assert "unparseable-value" in issue_codes(bundle(patient(), o))


def test_comma_in_a_string_value_is_not_guessed() -> None:
    o = obs(WBC, None)
    o["valueString"] = "3,400"
    assert "unparseable-value" in issue_codes(bundle(patient(), o))


def test_results_within_an_hour_are_one_draw_and_anc_is_derived() -> None:
    a = evaluate(
        bundle(
            patient(),
            obs(WBC, 3.4, at(hours_before=0.5)),
            obs(NEUT_PCT, 35.5, at()),
            obs(BAND_PCT, 0.0, at()),
        ),
        now=NOW,
    )
    d = a.index_draw
    assert d is not None and d.anc_derived and d.anc == 1.21  # 1.207 rounded to 0.01


def test_bands_are_added_to_neutrophils() -> None:
    a = evaluate(
        bundle(patient(), obs(WBC, 2.0, at()), obs(NEUT_PCT, 40, at()), obs(BAND_PCT, 10, at())),
        now=NOW,
    )
    assert a.index_draw is not None and a.index_draw.anc == 1.0


def test_anc_is_never_derived_across_draws() -> None:
    a = evaluate(
        bundle(patient(), obs(WBC, 3.4, at(hours_before=3)), obs(NEUT_PCT, 35.0, at())), now=NOW
    )
    assert a.index_draw is not None and a.index_draw.anc is None


def test_different_specimens_close_in_time_are_different_draws() -> None:
    a = evaluate(
        bundle(
            patient(),
            obs(WBC, 3.4, at(hours_before=0.2), specimen="Specimen/1"),
            obs(NEUT_PCT, 35.0, at(), specimen="Specimen/2"),
        ),
        now=NOW,
    )
    assert a.index_draw is not None and a.index_draw.anc is None


def test_component_observation_panel_is_read() -> None:
    panel = {
        "resourceType": "Observation",
        "id": "panel",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "57021-8"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": at(),
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": WBC}]},
                "valueQuantity": {"value": 1.4, "unit": "10*3/uL", "code": "10*3/uL"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": ANC}]},
                "valueQuantity": {"value": 0.3, "unit": "10*3/uL", "code": "10*3/uL"},
            },
        ],
    }
    a = evaluate(bundle(patient(), panel), now=NOW)
    assert a.risk is Risk.HIGH and a.index_draw is not None and a.index_draw.anc == 0.3


def test_comparator_less_than_puts_the_value_below_the_tier() -> None:
    o = obs(ANC, 0.1)
    o["valueQuantity"]["comparator"] = "<"
    a = evaluate(bundle(patient(), obs(WBC, 1.0), o), now=NOW)
    assert a.grade.value == "profound"


def test_display_strings_are_never_matched_for_lab_codes() -> None:
    o = obs(WBC, 2.0)
    o["code"] = {
        "coding": [{"system": "http://example.org/local", "code": "WBC", "display": "WBC"}],
        "text": "White blood cells",
    }
    labs = ingest(bundle(patient(), o))
    assert labs.results == ()


def test_patient_and_sex_are_read() -> None:
    labs = ingest(bundle(patient(birth="2001-02-03", gender="male"), obs(WBC, 5.0)))
    assert labs.patient_id == "p1" and labs.sex == "male" and str(labs.birth_date) == "2001-02-03"
    assert labs.results[0].analyte is Analyte.WBC


def test_missing_birth_date_is_reported_as_ambiguity() -> None:
    p = patient()
    del p["birthDate"]
    assert "no-birth-date" in issue_codes(bundle(p, cbc(3.5, 2.0)))


def test_results_up_to_24h_ahead_may_raise_and_are_reported() -> None:
    # v2 1.6: 12 h ahead (a time-zone error?) is used, as a provisional result.
    a = evaluate(bundle(patient(), cbc(1.0, 0.2, when="2026-03-11T00:00:00Z")), now=NOW)
    assert a.index_draw is not None and a.risk.value == "high"
    assert "future-time-provisional" in {i.code for i in a.issues}


def test_results_more_than_24h_ahead_are_not_used_but_named() -> None:
    a = evaluate(bundle(patient(), cbc(1.0, 0.2, when="2026-03-13T00:00:00Z")), now=NOW)
    assert a.index_draw is None and not a.assessable
    assert "future-time" in {i.code for i in a.issues} and "0.2" in a.headline


def test_another_patients_demographics_are_never_used() -> None:
    # A child's Patient resource beside an adult's labs: the child limits must not apply.
    labs = ingest(bundle(patient(birth="2022-01-01", pid="child"), obs(WBC, 5.0)), patient_id="p1")
    assert labs.birth_date is None
    assert "other-patient" in {i.code for i in labs.issues}


def test_unreadable_medication_is_reported_not_skipped() -> None:
    mr = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/not-here"},
    }
    a = evaluate(bundle(patient(), cbc(3.6, 2.0), mr), now=NOW)
    assert "unresolved-medication" in {i.code for i in a.issues}


def test_our_own_draft_proposals_are_not_open_orders() -> None:
    # A proposal fhir-leuko wrote back earlier must not change the next assessment of the same
    # data; an order a clinician placed (intent order, active) still counts.
    from fhir_leuko.fhirio import codes

    ours = order("http://loinc.org", "57021-8", status="draft")
    ours.update(
        intent="proposal", identifier=[{"system": codes.SR_IDENTIFIER_SYSTEM, "value": "x"}]
    )
    placed = order("http://loinc.org", "57021-8", status="active")
    assert ingest(bundle(patient(), obs(WBC, 3.0), ours)).open_orders == ()
    assert len(ingest(bundle(patient(), obs(WBC, 3.0), placed)).open_orders) == 1

"""One test (or more) per row of the decision table in docs/clinical-rules.md section 3."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fhir_leuko.clinical.model import Action, Assessment, NeutropeniaGrade, Priority, Risk
from fhir_leuko.service import evaluate
from tests.builders import (
    ANC,
    B12,
    FOLATE,
    NEUT_PCT,
    NOW,
    TEMP,
    WBC,
    at,
    bundle,
    cbc,
    condition,
    med,
    obs,
    order,
    patient,
)


def run(*items: object, now=NOW) -> Assessment:  # type: ignore[no-untyped-def]
    return evaluate(bundle(patient(), *items), now=now)


def actions(a: Assessment) -> dict[Action, Priority]:
    return {r.action: r.priority for r in a.recommendations}


# --- Tier boundaries: the lower bound belongs to the tier ----------------------------------------


@pytest.mark.parametrize(
    ("anc", "grade"),
    [
        (1.5, NeutropeniaGrade.NONE),
        (1.49, NeutropeniaGrade.MILD),
        (1.0, NeutropeniaGrade.MILD),
        (0.99, NeutropeniaGrade.MODERATE),
        (0.5, NeutropeniaGrade.MODERATE),
        (0.49, NeutropeniaGrade.SEVERE),
        (0.1, NeutropeniaGrade.SEVERE),
        (0.09, NeutropeniaGrade.PROFOUND),
        (0.0, NeutropeniaGrade.PROFOUND),
    ],
)
def test_anc_tier_boundaries(anc: float, grade: NeutropeniaGrade) -> None:
    assert run(cbc(5.0, anc)).grade is grade


def test_anc_exactly_one_is_mild_not_moderate() -> None:
    a = run(cbc(5.0, 1.0))
    assert a.grade is NeutropeniaGrade.MILD
    assert "neutropenia-mild" in a.finding_codes


def test_derived_anc_of_exactly_1_5_is_not_neutropenia() -> None:
    # 5.0 x 30 % must be exactly 1.50, not 1.4999...
    a = run(obs(WBC, 5.0, at()), obs(NEUT_PCT, 30.0, at()))
    assert a.index_draw is not None and a.index_draw.anc == 1.5 and a.index_draw.anc_derived
    assert a.grade is NeutropeniaGrade.NONE
    assert not a.actionable


# --- Row 1: febrile neutropenia ------------------------------------------------------------------


def test_row1_febrile_neutropenia_is_high_risk_with_stat_evaluation() -> None:
    a = run(cbc(1.2, 0.4), obs(TEMP, 38.6, at(hours_before=1)))
    assert (a.row, a.risk) == ("1", Risk.HIGH)
    assert actions(a) == {Action.URGENT_EVALUATION: Priority.STAT}
    assert {"febrile-neutropenia", "fever", "neutropenia-severe"} <= set(a.finding_codes)


def test_row1_two_readings_of_38_0_an_hour_apart_count_as_fever() -> None:
    a = run(cbc(1.8, 0.8), obs(TEMP, 38.0, at(hours_before=3)), obs(TEMP, 38.1, at(hours_before=1)))
    assert a.row == "1"


def test_two_readings_of_38_0_less_than_an_hour_apart_are_not_fever() -> None:
    a = run(
        cbc(1.8, 0.8), obs(TEMP, 38.0, at(hours_before=1)), obs(TEMP, 38.1, at(hours_before=0.5))
    )
    assert "fever" not in a.finding_codes
    assert a.row == "4"


def test_fahrenheit_fever_is_converted() -> None:
    a = run(cbc(1.8, 0.8), obs(TEMP, 101.3, at(), unit="[degF]"))  # 38.5 C
    assert a.row == "1"


def test_fever_more_than_24h_before_the_index_cbc_does_not_count() -> None:
    a = run(cbc(1.8, 0.8, when=at()), obs(TEMP, 39.0, at(days_before=2)))
    assert "fever" not in a.finding_codes


def test_unknown_anc_with_wbc_below_1_and_fever_is_presumed_febrile_neutropenia() -> None:
    # Row 1b (v2): fever, ANC unknown and WBC < 1.0: treat now, repeat CBC with diff stat.
    a = run(cbc(0.8), obs(TEMP, 38.5, at()))
    assert a.row == "1b" and a.risk is Risk.HIGH
    assert actions(a) == {Action.URGENT_EVALUATION: Priority.STAT, Action.REPEAT_CBC: Priority.STAT}


# --- Row 2: severe / profound, afebrile ----------------------------------------------------------


@pytest.mark.parametrize("anc", [0.49, 0.1, 0.05])
def test_row2_severe_or_profound_afebrile(anc: float) -> None:
    a = run(cbc(1.5, anc))
    assert (a.row, a.risk) == ("2", Risk.HIGH)
    assert actions(a) == {
        Action.REPEAT_CBC: Priority.ASAP,
        Action.PERIPHERAL_SMEAR: Priority.ASAP,
        Action.HAEMATOLOGY_REFERRAL: Priority.ASAP,
    }
    repeat = next(r for r in a.recommendations if r.action is Action.REPEAT_CBC)
    assert a.index_draw is not None
    assert repeat.end - a.index_draw.time == timedelta(days=1)  # 0-1 d from the index CBC
    assert repeat.start == NOW  # an order never starts in the past


def test_unknown_anc_with_wbc_of_0_4_is_at_least_severe() -> None:
    a = run(cbc(0.4))
    assert a.grade is NeutropeniaGrade.UNKNOWN
    assert a.decision_grade is NeutropeniaGrade.SEVERE
    assert a.row == "2" and a.risk is Risk.HIGH


# --- Row 3: pancytopenia ---


def test_row3_pancytopenia() -> None:
    a = run(cbc(2.5, 1.2, hb=9.0, plt=90))
    assert (a.row, a.risk) == ("3", Risk.HIGH)
    assert "pancytopenia" in a.finding_codes
    assert actions(a) == {
        Action.REPEAT_CBC: Priority.ASAP,
        Action.PERIPHERAL_SMEAR: Priority.ASAP,
        Action.HAEMATOLOGY_REFERRAL: Priority.ASAP,
        Action.VITAMIN_B12: Priority.ASAP,
        Action.FOLATE: Priority.ASAP,
    }


# --- Row 4: moderate -----------------------------------------------------------------------------


def test_row4_moderate_neutropenia() -> None:
    a = run(cbc(2.9, 0.8))
    assert (a.row, a.risk) == ("4", Risk.MODERATE)
    assert actions(a) == {
        Action.REPEAT_CBC: Priority.URGENT,
        Action.PERIPHERAL_SMEAR: Priority.URGENT,
        Action.HAEMATOLOGY_REFERRAL: Priority.URGENT,
    }
    repeat = next(r for r in a.recommendations if r.action is Action.REPEAT_CBC)
    assert repeat.start.date() > a.index_draw.time.date()  # type: ignore[union-attr]


def test_row4_moderate_on_clozapine_is_high_and_repeats_within_a_day() -> None:
    a = run(cbc(2.9, 0.8), med("clozapine 100 MG Oral Tablet", "197535"))
    assert (a.row, a.risk) == ("4", Risk.HIGH)
    repeat = next(r for r in a.recommendations if r.action is Action.REPEAT_CBC)
    assert a.index_draw is not None
    assert repeat.end - a.index_draw.time == timedelta(days=1)  # 0-1 d from the index CBC
    assert repeat.start == NOW  # an order never starts in the past
    assert a.medications[0].name == "clozapine"
    assert "name 'clozapine'" in a.medications[0].matched_by


# --- Row 5: Duffy-null ---------------------------------------------------------------------------


def test_row5_duffy_null_with_anc_1_3_needs_no_workup() -> None:
    a = run(cbc(3.6, 1.3), condition("Duffy null phenotype Fy(a-b-)"))
    assert (a.row, a.risk) == ("5", Risk.LOW)
    assert a.recommendations == ()
    assert "duffy-null" in a.finding_codes


def test_duffy_null_is_not_inferred_from_race() -> None:
    p = patient()
    p["extension"] = [
        {
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "text", "valueString": "Black or African American"}],
        }
    ]
    a = evaluate(bundle(p, cbc(3.6, 1.3)), now=NOW)
    assert a.row != "5"


def test_duffy_null_with_fever_still_gets_evaluated() -> None:
    a = run(cbc(3.6, 1.3), condition("Duffy null phenotype Fy(a-b-)"), obs(TEMP, 38.4, at()))
    assert a.row == "6"


# --- Row 6: fever with leukopenia / mild neutropenia ---------------------------------------------


def test_row6_fever_with_mild_neutropenia_is_same_day_evaluation() -> None:
    a = run(cbc(3.1, 1.2), obs(TEMP, 38.4, at()))
    assert (a.row, a.risk) == ("6", Risk.MODERATE)
    assert actions(a) == {Action.URGENT_EVALUATION: Priority.URGENT}


# --- Row 7: red flags ----------------------------------------------------------------------------


def test_row7_wbc_below_3() -> None:
    a = run(cbc(2.8, 1.6))
    assert (a.row, a.risk) == ("7", Risk.MODERATE)
    assert actions(a) == {
        Action.REPEAT_CBC: Priority.ROUTINE,
        Action.PERIPHERAL_SMEAR: Priority.ROUTINE,
    }
    assert "wbc-below-3" in a.finding_codes


def test_row7_bicytopenia_with_macrocytosis_proposes_b12_folate_and_referral() -> None:
    a = run(cbc(3.5, 1.6, hb=11.0, mcv=104))
    assert a.row == "7"
    assert {"bicytopenia", "macrocytosis", "anaemia"} <= set(a.finding_codes)
    assert set(actions(a)) == {
        Action.REPEAT_CBC,
        Action.PERIPHERAL_SMEAR,
        Action.VITAMIN_B12,
        Action.FOLATE,
        Action.HAEMATOLOGY_REFERRAL,
    }


def test_row7_b12_and_folate_recently_normal_are_not_proposed() -> None:
    a = run(
        cbc(3.5, 1.6, hb=11.0, mcv=104),
        obs(B12, 420, at(days_before=30)),
        obs(FOLATE, 9.1, at(days_before=30)),
    )
    assert Action.VITAMIN_B12 not in actions(a) and Action.FOLATE not in actions(a)
    assert any("Vitamin B12 level not proposed" in n for n in a.not_proposed)


def test_row7_b12_in_pmol_per_litre_is_converted() -> None:
    # 300 pmol/L x 1.355 = 406.5 pg/mL: normal.
    a = run(
        cbc(3.5, 1.6, hb=11.0, mcv=104),
        obs(B12, 300, at(days_before=10), unit="pmol/L"),
        obs(FOLATE, 20, at(days_before=10), unit="nmol/L"),
    )
    assert Action.VITAMIN_B12 not in actions(a) and Action.FOLATE not in actions(a)


def test_row7_progressive_decline() -> None:
    a = run(cbc(4.6, 2.5, when=at(60)), cbc(4.1, 2.2, when=at(30)), cbc(3.7, 2.0))
    assert a.row == "7"
    assert "progressive-decline" in a.finding_codes
    assert Action.HAEMATOLOGY_REFERRAL in actions(a)


def test_row7_mild_neutropenia_on_clozapine_repeats_within_a_day() -> None:
    a = run(cbc(3.8, 1.3), med("Clozapine", "2626"))
    assert a.row == "7"
    repeat = next(r for r in a.recommendations if r.action is Action.REPEAT_CBC)
    assert a.index_draw is not None
    assert repeat.end - a.index_draw.time == timedelta(days=1)  # 0-1 d from the index CBC
    assert repeat.start == NOW  # an order never starts in the past
    assert a.medications[0].matched_by == "RxNorm ingredient 2626"


def test_corticosteroids_are_not_high_risk() -> None:
    a = run(cbc(3.8, 1.6), med("prednisone 20 MG Oral Tablet", "312617"))
    assert a.row == "10"
    assert a.medications == ()


# --- Row 8: persistent ---------------------------------------------------------------------------


def test_row8_persistent_mild_neutropenia() -> None:
    a = run(cbc(4.2, 1.3, when=at(120)), cbc(4.3, 1.2, when=at(60)), cbc(4.1, 1.3))
    assert (a.row, a.risk) == ("8", Risk.MODERATE)
    assert "persistent" in a.finding_codes
    acts = actions(a)
    assert Action.REPEAT_CBC not in acts
    assert {Action.VITAMIN_B12, Action.FOLATE, Action.PERIPHERAL_SMEAR} <= set(acts)
    referral = next(r for r in a.recommendations if r.action is Action.HAEMATOLOGY_REFERRAL)
    assert referral.optional


def test_persistence_needs_more_than_90_days() -> None:
    a = run(cbc(4.2, 1.3, when=at(80)), cbc(4.3, 1.2, when=at(40)), cbc(4.1, 1.3))
    assert a.row == "10"


# --- Row 9: stable -------------------------------------------------------------------------------


def test_row9_stable_chronic_leukopenia_is_reassuring() -> None:
    a = run(cbc(3.6, 1.8, when=at(270)), cbc(3.8, 1.9, when=at(120)), cbc(3.7, 1.8))
    assert (a.row, a.risk) == ("9", Risk.LOW)
    assert a.recommendations == ()
    assert "stable" in a.finding_codes


# --- Row 10: otherwise ---------------------------------------------------------------------------


def test_row10_seed_002_example() -> None:
    # WBC 3.4 x 10^9/L (normal 4.5-11.0), ANC 1207/mm3, against the lab's own range.
    a = run(obs(WBC, 3.4, at(), unit="10*9/L", low=4.5), obs(ANC, 1207, at(), unit="/mm3"))
    assert (a.row, a.risk) == ("10", Risk.LOW)
    assert {"leukopenia", "neutropenia-mild"} <= set(a.finding_codes)
    repeat = a.recommendations[0]
    assert repeat.action is Action.REPEAT_CBC and repeat.priority is Priority.ROUTINE
    assert (repeat.start - a.index_draw.time).days == 7  # type: ignore[union-attr]
    assert (repeat.end - a.index_draw.time).days == 14  # type: ignore[union-attr]


def test_row10_leukopenia_with_normal_anc_repeats_in_4_to_6_weeks() -> None:
    a = run(cbc(3.6, 2.0))
    assert a.row == "10"
    r = a.recommendations[0]
    assert ((r.start - a.index_draw.time).days, (r.end - a.index_draw.time).days) == (28, 42)  # type: ignore[union-attr]


def test_row10_child_uses_paediatric_limits_and_viral_window() -> None:
    p = patient(birth="2022-01-15")
    a = evaluate(
        bundle(p, cbc(5.0, 2.0), condition("Viral upper respiratory infection", onset=at(10))),
        now=NOW,
    )
    assert a.row == "10"
    assert "paediatric-limits" in a.finding_codes and "leukopenia" in a.finding_codes
    r = a.recommendations[0]
    assert ((r.start - a.index_draw.time).days, (r.end - a.index_draw.time).days) == (21, 28)  # type: ignore[union-attr]


def test_adult_with_wbc_5_0_is_normal() -> None:
    assert not run(cbc(5.0, 2.5)).actionable


def test_infant_anc_limit_is_1_0() -> None:
    a = evaluate(bundle(patient(birth="2025-10-01"), cbc(7.0, 1.2)), now=NOW)
    assert a.grade is NeutropeniaGrade.NONE


# --- Row 11 / 12 ---------------------------------------------------------------------------------


def test_row11_no_differential_with_normal_wbc_is_a_normal_count() -> None:
    # v2: a normal WBC without a differential is a normal count; nothing is proposed.
    a = run(cbc(6.5))
    assert (a.row, a.risk) == ("11", Risk.NEGLIGIBLE)
    assert a.recommendations == () and not a.actionable
    assert any(i.code == "no-differential" for i in a.issues)


def test_row12_normal_cbc_emits_nothing() -> None:
    a = run(cbc(6.5, 3.8, hb=14.0, plt=250))
    assert (a.row, a.risk) == ("12", Risk.NEGLIGIBLE)
    assert not a.actionable and a.recommendations == ()


# --- Never propose what is open -------------------------------------------------------------------


def test_open_repeat_cbc_is_not_proposed_again() -> None:
    a = run(cbc(3.6, 2.0), order("http://loinc.org", "57021-8"))
    assert a.recommendations == ()
    assert any("already open" in n for n in a.not_proposed)


def test_open_routine_order_is_not_duplicated_but_flagged_for_expediting() -> None:
    # Never propose what is open (section 3); a less urgent open order is named loudly.
    a = run(cbc(1.5, 0.3), order("http://loinc.org", "57021-8", priority="routine"))
    assert Action.REPEAT_CBC not in actions(a)
    assert any("expedite the open order" in n and "asap" in n for n in a.not_proposed)


def test_completed_order_does_not_count_as_open() -> None:
    a = run(cbc(3.6, 2.0), order("http://loinc.org", "57021-8", status="completed"))
    assert actions(a) == {Action.REPEAT_CBC: Priority.ROUTINE}


# --- Preliminary ---------------------------------------------------------------------------------


def test_preliminary_result_marks_the_assessment_preliminary() -> None:
    a = run(cbc(2.9, 0.8, status="preliminary"))
    assert a.preliminary and "preliminary-data" in a.finding_codes


def test_preliminary_result_never_suppresses_an_alert_from_final_results() -> None:
    a = run(cbc(1.5, 0.3, when=at(1)), cbc(6.0, 3.5, status="preliminary"))
    assert a.risk is Risk.HIGH
    assert any(h.rule == "provisional-cannot-suppress" for h in a.trace)


def test_every_rule_in_the_trace_cites_a_source() -> None:
    a = run(cbc(2.5, 1.2, hb=9.0, plt=90), med("methotrexate", "6851"))
    assert a.trace and all(h.source for h in a.trace)
    assert all(f.source for f in a.findings)
    assert all(r.source for r in a.recommendations)


def test_mitigation_names_infection_warning_signs_and_medications() -> None:
    a = run(
        cbc(3.8, 1.3),
        med("Bactrim DS", None),
        med("sulfamethoxazole 800 MG / trimethoprim 160 MG", None),
    )
    text = " ".join(a.mitigation)
    assert "fever above 38.0 °C" in text and "sulfamethoxazole/trimethoprim" in text

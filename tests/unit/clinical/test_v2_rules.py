"""One test (or more) per (v2) item of the decision table, on the pure core.

Each expectation was written from the decision table (version 2) before the engine ran: the
inputs are plain values (PatientLabs), so these tests pin the rules, whatever reads the FHIR.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from fhir_leuko.clinical.model import (
    Action,
    Analyte,
    Assessment,
    ClinicalCondition,
    DataIssue,
    Medication,
    NeutropeniaGrade,
    PatientLabs,
    Priority,
    Result,
    Risk,
    Row,
    comparator_value,
)
from fhir_leuko.clinical.rules import assess
from fhir_leuko.fhirio import emit

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
_n = iter(range(1, 10_000))


def at(days: float = 0.0, hours: float = 0.0) -> datetime:
    """`days`/`hours` before NOW (negative: after), two hours before NOW at 0."""
    return NOW - timedelta(days=days, hours=hours) - timedelta(hours=2)


def r(analyte: Analyte, value: float, when: datetime, **kw: object) -> Result:
    return Result(analyte, value, when, f"Observation/o{next(_n)}", **kw)  # type: ignore[arg-type]


def draw(
    wbc: float | None,
    anc: float | None = None,
    when: datetime | None = None,
    *,
    hb: float | None = None,
    plt: float | None = None,
    mcv: float | None = None,
    status: str = "final",
) -> list[Result]:
    when = when or at()
    out = []
    for analyte, v in (
        (Analyte.WBC, wbc),
        (Analyte.ANC, anc),
        (Analyte.HAEMOGLOBIN, hb),
        (Analyte.PLATELETS, plt),
        (Analyte.MCV, mcv),
    ):
        if v is not None:
            out.append(r(analyte, v, when, status=status))
    return out


def temp(c: float, when: datetime | None = None) -> Result:
    return r(Analyte.BODY_TEMPERATURE, c, when or at())


def run(
    *results: Result | list[Result],
    birth: date = date(1970, 5, 1),
    sex: str | None = "female",
    meds: tuple[Medication, ...] = (),
    conditions: tuple[ClinicalCondition, ...] = (),
    issues: tuple[DataIssue, ...] = (),
    now: datetime = NOW,
) -> Assessment:
    flat: list[Result] = []
    for x in results:
        flat.extend(x if isinstance(x, list) else [x])
    labs = PatientLabs(
        patient_id="p1",
        birth_date=birth,
        sex=sex,
        results=tuple(flat),
        medications=meds,
        conditions=conditions,
        issues=issues,
    )
    return assess(labs, now)


def actions(a: Assessment) -> dict[Action, Priority]:
    return {rec.action: rec.priority for rec in a.recommendations}


def window_days(a: Assessment, action: Action) -> tuple[float, float]:
    rec = next(x for x in a.recommendations if x.action is action)
    return ((rec.start - NOW) / timedelta(days=1), (rec.end - NOW) / timedelta(days=1))


DOCETAXEL = Medication("docetaxel", "MedicationRequest/m1", "name 'docetaxel'", True)
CLOZAPINE = Medication("clozapine", "MedicationRequest/m2", "RxNorm ingredient 2626")


def cond(kind: str, display: str) -> ClinicalCondition:
    return ClinicalCondition(kind, display, f"Condition/c{next(_n)}", "test")


# --- 1.2 draws, not results -------------------------------------------------------------------


def test_one_draw_resent_later_in_another_unit_is_one_serial_point() -> None:
    # Two WBC draws 200 days apart plus the latest draw re-sent 15 minutes later (in /uL, so
    # the same value after normalisation): two draws, so not "stable" (>= 3 draws needed).
    a = run(
        draw(3.5, 2.0, at(200)),
        draw(3.5, 2.0, at(0, 0.25)),
        draw(3.5, 2.0, at(0)),
    )
    assert len(a.draws) == 2
    assert "stable" not in a.finding_codes
    assert a.row == Row.LOW_OTHERWISE
    assert any(h.rule == "duplicate" for h in a.trace)


def test_three_real_draws_over_200_days_are_stable() -> None:
    a = run(draw(3.5, 2.0, at(200)), draw(3.6, 2.0, at(100)), draw(3.5, 2.0, at(0)))
    assert a.row == Row.STABLE_CHRONIC_LEUKOPENIA and a.risk is Risk.LOW


# --- 1.6 future-stamped results ----------------------------------------------------------------


def test_febrile_neutropenia_stamped_3h_ahead_still_raises() -> None:
    ahead = NOW + timedelta(hours=3)
    a = run(draw(1.1, 0.3, ahead), temp(38.9, ahead))
    assert a.row == Row.FEBRILE_NEUTROPENIA and a.risk is Risk.HIGH
    assert actions(a) == {Action.URGENT_EVALUATION: Priority.STAT}
    assert "preliminary-data" in a.finding_codes and a.preliminary
    assert any(i.code == "future-time-provisional" and i.sent == "0.3" for i in a.issues)


def test_result_stamped_3_days_ahead_is_not_used_but_named() -> None:
    a = run(draw(1.1, 0.3, NOW + timedelta(days=3)))
    assert a.row == Row.NOT_ASSESSABLE and a.actionable
    assert "ANC '0.3'" in a.headline and "not a normal count" in a.headline


def test_far_future_critical_value_is_named_over_a_normal_headline() -> None:
    a = run(draw(6.0, 3.5, at(1)), draw(1.1, 0.3, NOW + timedelta(days=3)))
    assert a.risk is Risk.NEGLIGIBLE and a.actionable
    assert a.headline.startswith("NOT USED") and "0.3" in a.headline


def test_a_future_stamped_normal_count_never_suppresses_a_final_severe_one() -> None:
    a = run(draw(1.5, 0.3, at(1)), draw(6.0, 3.5, NOW + timedelta(hours=3)))
    assert a.risk is Risk.HIGH and a.row == Row.SEVERE_AFEBRILE
    assert any(h.rule == "provisional-cannot-suppress" for h in a.trace)


# --- 1.7 comparator values -----------------------------------------------------------------------


def test_anc_below_0_1_is_profound() -> None:
    anc = r(Analyte.ANC, comparator_value(0.1, "<"), at(), comparator="<")
    a = run(r(Analyte.WBC, 1.0, at()), anc)
    assert a.grade is NeutropeniaGrade.PROFOUND and a.row == Row.SEVERE_AFEBRILE
    assert "<0.1" in " ".join(f.text for f in a.findings)


# --- 1.8 unusable is not normal --------------------------------------------------------------


def test_only_unusable_cbc_values_is_not_assessable_never_normal() -> None:
    bad = DataIssue(
        "unknown-unit",
        "Observation/x: unit 'xyz' is not understood for WBC",
        "Observation/x",
        analyte=Analyte.WBC,
        sent="3.1 xyz",
    )
    a = run(issues=(bad,))
    assert a.row == Row.NOT_ASSESSABLE and not a.assessable and a.actionable
    assert "3.1 xyz" in a.headline and "normal" not in a.headline.replace("not a normal", "")
    out = emit.bundle(a)
    oo = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "OperationOutcome"
    )
    assert oo["issue"][0]["details"]["text"] == "not-assessable"
    ra = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "RiskAssessment"
    )
    assert "qualitativeRisk" not in ra["prediction"][0]  # no risk claimed


def absent(analyte: Analyte) -> DataIssue:
    """What the reader reports for a result sent with a dataAbsentReason (1.1)."""
    return DataIssue(
        "data-absent",
        f"Observation/{analyte.value} has a dataAbsentReason 'error': not a result",
        f"Observation/{analyte.value}",
        "information",
        analyte=analyte,
        sent="(data absent: error)",
    )


def test_a_result_sent_as_absent_is_no_result_not_an_unusable_one() -> None:
    # 1.1: "A result with dataAbsentReason or no value is not a result (never zero)"; row 11
    # proposes nothing, so a normal WBC whose differential the lab could not count shows no
    # card. The data issue still names what was absent.
    a = run(*draw(5.2, hb=13.0), issues=(absent(Analyte.ANC), absent(Analyte.PLATELETS)))
    assert a.row == Row.ANC_UNKNOWN_NORMAL_WBC and a.assessable
    assert not a.actionable and a.unusable == ()
    assert "NOT USED" not in a.headline
    assert {i.code for i in a.issues} >= {"data-absent"}


def test_an_absent_result_beside_a_low_count_changes_nothing() -> None:
    a = run(*draw(2.6), issues=(absent(Analyte.ANC),))
    assert a.row == Row.LOW_WITH_CONCERN and a.actionable and a.unusable == ()


def test_neutrophil_percent_without_any_wbc_is_not_assessable() -> None:
    a = run(r(Analyte.NEUTROPHIL_PERCENT, 48.0, at()))
    assert a.row == Row.NOT_ASSESSABLE


# --- Section 2: 24-month window, decline on WBC or ANC with a minimum fall ------------------------


def test_decline_whose_first_draw_is_18_months_back_counts() -> None:
    a = run(draw(5.0, 3.0, at(540)), draw(4.0, 2.4, at(270)), draw(3.2, 1.8, at(0)))
    assert "progressive-decline" in a.finding_codes
    assert a.row == Row.LOW_WITH_CONCERN
    assert {Action.PERIPHERAL_SMEAR, Action.HAEMATOLOGY_REFERRAL, Action.VITAMIN_B12} <= set(
        actions(a)
    )


def test_anc_falling_while_wbc_holds_is_a_decline() -> None:
    a = run(draw(4.6, 2.6, at(60)), draw(4.5, 1.9, at(30)), draw(4.5, 1.2, at(0)))
    assert "progressive-decline" in a.finding_codes and "stable" not in a.finding_codes
    assert a.row == Row.LOW_WITH_CONCERN


def test_anc_noise_is_not_a_decline() -> None:
    a = run(draw(4.6, 1.35, at(60)), draw(4.5, 1.30, at(30)), draw(4.5, 1.28, at(0)))
    assert "progressive-decline" not in a.finding_codes


def test_wbc_falling_by_less_than_0_5_is_not_a_decline() -> None:
    a = run(draw(3.9, 2.0, at(60)), draw(3.8, 2.0, at(30)), draw(3.7, 2.0, at(0)))
    assert "progressive-decline" not in a.finding_codes


# --- Section 2: paediatric and WHO limits, macrocytosis at any age -------------------------------


def test_macrocytosis_counts_in_a_child() -> None:
    a = run(draw(4.0, 2.0, mcv=104), birth=date(2016, 1, 1))
    assert "macrocytosis" in a.finding_codes and a.row == Row.LOW_WITH_CONCERN


@pytest.mark.parametrize(("wbc", "leukopenia"), [(4.8, False), (4.4, True)])
def test_teenager_wbc_limit_is_4_5(wbc: float, leukopenia: bool) -> None:
    a = run(draw(wbc, 2.5), birth=date(2011, 1, 1))
    assert ("leukopenia" in a.finding_codes) is leukopenia


def test_toddler_wbc_limit_is_6_0_and_5_year_old_5_5() -> None:
    assert "leukopenia" in run(draw(5.8, 2.0), birth=date(2025, 1, 1)).finding_codes
    assert "leukopenia" not in run(draw(5.8, 2.0), birth=date(2021, 1, 1)).finding_codes


@pytest.mark.parametrize(
    ("birth", "grade"),
    [
        (date(2026, 3, 1), NeutropeniaGrade.MILD),  # 9 days old: limit 1.5, never 1.0
        (date(2025, 9, 1), NeutropeniaGrade.NONE),  # 6 months: limit 1.0
        (date(2024, 9, 1), NeutropeniaGrade.MILD),  # 18 months: limit 1.5
    ],
)
def test_infant_anc_limits(birth: date, grade: NeutropeniaGrade) -> None:
    assert run(draw(9.0, 1.2), birth=birth).grade is grade


@pytest.mark.parametrize(
    ("pregnant", "row"), [(False, Row.LOW_WITH_CONCERN), (True, Row.LOW_OTHERWISE)]
)
def test_who_anaemia_limit_is_11_in_pregnancy(pregnant: bool, row: Row) -> None:
    conditions = (cond("pregnancy", "Pregnancy"),) if pregnant else ()
    a = run(draw(3.5, 2.0, hb=11.5), conditions=conditions)
    assert ("anaemia" in a.finding_codes) is not pregnant
    assert a.row == row


def test_who_anaemia_limit_for_a_child_of_8_is_11_5() -> None:
    a = run(draw(4.2, 2.0, hb=11.3), birth=date(2018, 1, 1))
    assert "anaemia" in a.finding_codes and "bicytopenia" in a.finding_codes


# --- Row 5 (Duffy-null) and red-flag conditions --------------------------------------------------


def test_duffy_null_documented_with_anc_1_3_needs_no_workup() -> None:
    a = run(draw(3.5, 1.3), conditions=(cond("duffy-null", "Duffy null phenotype"),))
    assert a.row == Row.DUFFY_NULL and a.risk is Risk.LOW and a.recommendations == ()


def test_duffy_null_with_wbc_below_3_is_not_row_5() -> None:
    a = run(draw(2.8, 1.3), conditions=(cond("duffy-null", "Duffy null phenotype"),))
    assert a.row == Row.LOW_WITH_CONCERN and Action.PERIPHERAL_SMEAR in actions(a)


def test_duffy_null_with_a_red_flag_is_not_row_5() -> None:
    a = run(
        draw(3.5, 1.3),
        conditions=(cond("duffy-null", "Duffy null"), cond("red-flag", "splenomegaly")),
    )
    assert a.row != Row.DUFFY_NULL and a.risk is Risk.MODERATE


def test_splenomegaly_with_mild_leukopenia_asks_for_smear_and_referral() -> None:
    a = run(draw(3.6, 2.0), conditions=(cond("red-flag", "splenomegaly"),))
    assert a.row == Row.LOW_WITH_CONCERN and a.risk is Risk.MODERATE
    assert actions(a)[Action.PERIPHERAL_SMEAR] is Priority.ROUTINE
    assert actions(a)[Action.HAEMATOLOGY_REFERRAL] is Priority.ROUTINE
    assert "red-flag-condition" in a.finding_codes


def test_red_flag_makes_stable_chronic_leukopenia_not_reassuring() -> None:
    a = run(
        draw(3.5, 2.0, at(200)),
        draw(3.6, 2.0, at(100)),
        draw(3.5, 2.0, at(0)),
        conditions=(cond("red-flag", "lymphadenopathy"),),
    )
    assert a.row != Row.STABLE_CHRONIC_LEUKOPENIA and a.risk is Risk.MODERATE
    assert "reassuring" not in a.headline.lower()
    assert Action.HAEMATOLOGY_REFERRAL in actions(a)


# --- Row 1b presumed febrile neutropenia ---------------------------------------------------


def test_fever_on_docetaxel_with_wbc_1_8_and_no_differential_is_row_1b() -> None:
    a = run(r(Analyte.WBC, 1.8, at()), temp(38.5), meds=(DOCETAXEL,))
    assert a.row == Row.PRESUMED_FEBRILE_NEUTROPENIA and a.risk is Risk.HIGH
    assert actions(a) == {Action.URGENT_EVALUATION: Priority.STAT, Action.REPEAT_CBC: Priority.STAT}
    start, end = window_days(a, Action.REPEAT_CBC)
    assert start == 0 and end <= 0  # now
    assert "oncology protocol" in " ".join(a.mitigation)
    assert "consider holding" not in " ".join(a.mitigation)


def test_chemotherapy_condition_alone_is_chemotherapy_context() -> None:
    a = run(
        r(Analyte.WBC, 3.5, at()),
        temp(38.4),
        conditions=(cond("chemotherapy", "Receiving antineoplastic chemotherapy"),),
    )
    assert a.row == Row.PRESUMED_FEBRILE_NEUTROPENIA


def test_fever_with_wbc_1_8_no_differential_and_no_chemotherapy_is_not_row_1b() -> None:
    a = run(r(Analyte.WBC, 1.8, at()), temp(38.5))
    assert a.row == Row.LOW_WITH_FEVER and a.risk is Risk.MODERATE
    assert actions(a)[Action.URGENT_EVALUATION] is Priority.URGENT
    # WBC < 3.0 with the ANC unknown: the differential within 0-2 days, asap.
    assert actions(a)[Action.REPEAT_CBC] is Priority.ASAP
    assert window_days(a, Action.REPEAT_CBC)[1] <= 2


# --- Section 3a modifiers -------------------------------------------------------------------


def test_pancytopenia_with_fever_adds_urgent_evaluation() -> None:
    a = run(draw(2.1, 1.6, hb=9.0, plt=80), temp(38.9))
    assert a.row == Row.PANCYTOPENIA and a.risk is Risk.HIGH
    assert actions(a)[Action.URGENT_EVALUATION] is Priority.URGENT
    assert a.headline.startswith("FEVER")


def test_fever_with_a_normal_wbc_and_unknown_anc_is_evaluated() -> None:
    a = run(r(Analyte.WBC, 6.0, at()), temp(38.6))
    assert a.row == Row.ANC_UNKNOWN_NORMAL_WBC and a.risk is Risk.MODERATE
    # ... and a differential today, which rules febrile neutropenia in or out.
    assert actions(a) == {
        Action.URGENT_EVALUATION: Priority.URGENT,
        Action.REPEAT_CBC: Priority.URGENT,
    }


# --- ANC-unknown windows, rows 7, 10 and 11 ------------------------------------------------------


def test_leukopenia_with_unknown_anc_repeats_with_differential_within_a_week() -> None:
    a = run(r(Analyte.WBC, 3.5, at()))
    assert a.row == Row.LOW_OTHERWISE
    assert actions(a) == {Action.REPEAT_CBC: Priority.ROUTINE}
    start, end = window_days(a, Action.REPEAT_CBC)
    assert start == 0 and end <= 7


@pytest.mark.parametrize(
    "extra",
    [
        {"wbc": 2.5},
        {"conditions": (cond("red-flag", "weight loss"),)},
        {"conditions": (cond("chemotherapy", "On chemotherapy"),)},
    ],
)
def test_unknown_anc_with_a_concern_repeats_asap_within_2_days(extra: dict[str, object]) -> None:
    wbc = extra.pop("wbc", 3.5)
    a = run(r(Analyte.WBC, wbc, at()), **extra)  # type: ignore[arg-type]
    assert actions(a)[Action.REPEAT_CBC] is Priority.ASAP
    start, end = window_days(a, Action.REPEAT_CBC)
    assert start == 0 and end <= 2


def test_clozapine_mild_neutropenia_keeps_its_0_1_day_window() -> None:
    a = run(draw(3.8, 1.3), meds=(CLOZAPINE,))
    assert a.row == Row.LOW_WITH_CONCERN
    assert window_days(a, Action.REPEAT_CBC)[1] <= 1


def test_no_order_window_starts_in_the_past() -> None:
    a = run(draw(3.3, 1.4, at(3)))
    assert all(rec.start >= NOW for rec in a.recommendations)


def test_a_patient_of_unknown_sex_is_held_to_the_womens_haemoglobin_limit_and_told_so() -> None:
    # WHO 2011 anaemia row: < 12.0 g/dL for women or sex unknown; the output says which.
    a = run(*draw(3.5, 2.0, hb=12.5), sex=None)
    assert "anaemia" not in a.finding_codes
    issue = next(i for i in a.issues if i.code == "no-sex")
    assert "12.0" in issue.message and "13.0" in issue.message
    assert not any(i.code == "no-sex" for i in run(*draw(3.5, 2.0, hb=12.5)).issues)


def test_moderate_neutropenia_on_clozapine_advises_what_the_label_says() -> None:
    # The clozapine label's monitoring table: moderate (ANC 0.5-0.99) means interrupt, with a
    # daily ANC until it is 1.0 or more. Mild (1.0-1.49) does not.
    advice = " ".join(run(*draw(3.1, 0.8), meds=(CLOZAPINE,)).mitigation)
    assert "interrupt" in advice and "daily" in advice and "clozapine label" in advice
    assert "consider holding" not in advice
    mild = " ".join(run(*draw(3.1, 1.2), meds=(CLOZAPINE,)).mitigation)
    assert "interrupt" not in mild and "clozapine" in mild


def test_splenomegaly_with_a_recorded_cause_is_not_a_red_flag_and_the_output_says_so() -> None:
    # Section 2: "Splenomegaly of unknown cause is a red flag ... only a recorded hypersplenism
    # / portal hypertension diagnosis explains it".
    spleen = cond("red-flag", "splenomegaly")
    unknown = run(*draw(3.4, 2.0), conditions=(spleen,))
    assert unknown.row == Row.LOW_WITH_CONCERN and "red-flag-condition" in unknown.finding_codes
    explained = run(*draw(3.4, 2.0), conditions=(spleen, cond("hypersplenism", "hypersplenism")))
    assert (
        explained.row == Row.LOW_OTHERWISE and "red-flag-condition" not in explained.finding_codes
    )
    assert any("splenomegaly has a recorded cause" in m for m in explained.mitigation)
    # Another red flag still counts beside an explained spleen.
    nodes = cond("red-flag", "lymphadenopathy")
    both = run(*draw(3.4, 2.0), conditions=(spleen, nodes, cond("hypersplenism", "hypersplenism")))
    assert both.row == Row.LOW_WITH_CONCERN
    assert "lymphadenopathy" in " ".join(f.text for f in both.findings)
    assert "splenomegaly" not in " ".join(f.text for f in both.findings)


def test_a_fever_just_before_the_window_is_named_not_counted() -> None:
    def temp(hours_before_index: float) -> Result:
        return r(Analyte.BODY_TEMPERATURE, 38.9, at(hours=hours_before_index))

    def named(a: Assessment) -> list[str]:
        return [i.message for i in a.issues if i.code == "fever-before-window"]

    late = run(*draw(3.6, 1.2), temp(25))
    assert "fever" not in late.finding_codes and late.row == Row.LOW_OTHERWISE
    (message,) = named(late)
    assert "38.9 °C" in message and "25 h before the index CBC" in message
    assert named(run(*draw(3.6, 1.2), temp(80))) == []  # days ago: not mentioned
    inside = run(*draw(3.6, 1.2), temp(23))
    assert "fever" in inside.finding_codes and named(inside) == []

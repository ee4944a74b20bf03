"""The leukopenia / neutropenia decision table (docs/clinical-rules.md sections 2 and 3).

Pure: ``assess(labs, now, thresholds)`` reads plain values and returns an
:class:`~fhir_leuko.clinical.model.Assessment` with a trace of every rule that fired and its
source. No FHIR, no HTTP, no clock. Every number comes from ``thresholds.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from fhir_leuko.clinical.cleaning import dedupe, group_draws
from fhir_leuko.clinical.model import (
    ACTION_LABEL,
    Action,
    Analyte,
    Assessment,
    ClinicalCondition,
    DataIssue,
    Draw,
    Finding,
    Medication,
    NeutropeniaGrade,
    PatientLabs,
    Priority,
    Recommendation,
    Result,
    Risk,
    RuleHit,
    num,
)
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds

SRC_TABLE = "clinical-rules.md section 3"
SRC_LLN_CHILD = "paediatric reference ranges (Univ. of Iowa; Pediatrics in Review)"
SRC_GRADE = "seed 002; seed 000; IDSA 2010 (profound); CTCAE v5 bands"
SRC_FEVER = "IDSA 2010; CTCAE v5 (more sensitive than seed 002's > 38.5 C)"
SRC_FN = "seed 002, seed 000; CTCAE v5"
SRC_CYTOPENIA = "seed 000 (bi- or pancytopenia implies insufficient marrow production); seed 002"
SRC_MEDS = "seeds 000-004; Andersohn 2007; codes.md high-risk list"
SRC_DUFFY = "Merz et al. 2023; ASH Choosing Wisely"
SRC_INFECTION_SIGNS = "seeds 002, 003"

#: Conditions recorded for the patient that can explain a low white count (clinical-rules.md
#: "Always, when anything is found").
EXPLAINING_CONDITIONS = frozenset(
    {
        "sle",
        "rheumatoid-arthritis",
        "viral-infection",
        "hiv",
        "hypersplenism",
        "chemotherapy",
        "alcohol-use",
    }
)

INFECTION_WARNING = (
    "Tell the patient to seek care at once for fever above 38.0 C, breathing difficulty, "
    "severe diarrhoea or confusion (seeds 002, 003)."
)


def assess(
    labs: PatientLabs, now: datetime, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Assessment:
    """Evaluate one patient.

    Preliminary results may raise a safety alert but never suppress one (clinical-rules.md
    1.2): when the assessment without preliminary results is more serious, that one is kept.
    """
    full = _assess(labs, now, thresholds)
    if not any(r.preliminary for r in labs.results):
        return full
    final_only = _assess(
        replace(labs, results=tuple(r for r in labs.results if not r.preliminary)),
        now,
        thresholds,
    )
    if _severity(final_only) > _severity(full):
        d = full.index_draw
        seen = ""
        if d is not None:
            anc = "unknown" if d.anc is None else num(d.anc)
            wbc = d.value(Analyte.WBC)
            seen = f" (drawn {d.time.isoformat()}: WBC {_fmt(wbc)}, ANC {anc})"
        text = (
            f"A newer PRELIMINARY CBC{seen} looks less serious, but preliminary results never "
            "suppress an alert: this assessment rests on the final results; review it when the "
            "newer CBC is final"
        )
        hit = RuleHit("preliminary-cannot-suppress", text, "clinical-rules.md 1.2")
        finding = Finding("preliminary-data", text, "clinical-rules.md 1.2")
        return replace(
            final_only,
            trace=final_only.trace + (hit,),
            findings=final_only.findings + (finding,),
        )
    return full


def _severity(a: Assessment) -> tuple[int, int]:
    top = max((r.priority.rank for r in a.recommendations), default=-1)
    return (a.risk.rank, top)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Working state of one evaluation; frozen into an Assessment at the end."""

    labs: PatientLabs
    now: datetime
    t: Thresholds
    trace: list[RuleHit] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)

    def hit(self, rule: str, text: str, source: str) -> None:
        self.trace.append(RuleHit(rule, text, source))

    def find(self, code: str, text: str, source: str) -> None:
        self.findings.append(Finding(code, text, source))
        self.hit(f"finding:{code}", text, source)

    def has(self, code: str) -> bool:
        return any(f.code == code for f in self.findings)


def _fmt(v: float | None) -> str:
    return "unknown" if v is None else f"{num(v)}"


def _age_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _age_days(birth: date, on: date) -> int:
    return (on - birth).days


def _assess(labs: PatientLabs, now: datetime, t: Thresholds) -> Assessment:
    c = _Ctx(labs, now, t, issues=list(labs.issues))
    results, conflict_issues, clean_trace = dedupe(r for r in labs.results if r.time <= now)
    c.issues.extend(conflict_issues)
    c.trace.extend(clean_trace)
    future = [r for r in labs.results if r.time > now]
    for r in future:
        c.issues.append(
            DataIssue(
                "future-time",
                f"{r.ref} has an effective time after the evaluation time; not used",
                r.ref,
            )
        )

    draws = group_draws(results, t)
    index = _index_draw(draws)
    if index is None:
        c.hit("no-index-cbc", "No WBC, ANC or neutrophil % result: nothing to assess.", SRC_TABLE)
        return _normal(c, draws, None, t.anc_lln_adult, None)

    idx_time = index.time
    c.hit(
        "index-cbc",
        f"Index CBC drawn {idx_time.isoformat()} ({', '.join(index.refs)})",
        "clinical-rules.md 1.4 (most recent draw with WBC, ANC or neutrophil %)",
    )
    if index.anc is not None:
        if index.anc_derived:
            c.hit(
                "anc-derived",
                f"ANC {num(index.anc)} derived as WBC x (neutrophils % + bands %) / 100 "
                "from the same draw, rounded to 0.01",
                "clinical-rules.md 1.5",
            )
        else:
            c.hit("anc-reported", f"ANC {num(index.anc)} reported", "clinical-rules.md 1.5")
    else:
        c.hit(
            "anc-unknown",
            "ANC unknown: no ANC and no neutrophil % with WBC in the index draw",
            "clinical-rules.md 1.5",
        )

    # --- Age and lower limits ----------------------------------------------------------------
    age_y: int | None = None
    age_d: int | None = None
    if labs.birth_date is not None:
        age_y = _age_years(labs.birth_date, idx_time.date())
        age_d = _age_days(labs.birth_date, idx_time.date())
    else:
        c.issues.append(
            DataIssue(
                "no-birth-date",
                "No Patient.birthDate: adult limits were used; if the patient is a child, "
                "the paediatric limits are higher",
            )
        )
    child = age_y is not None and age_y < t.adult_age_years
    wbc_result = index.results.get(Analyte.WBC)
    if wbc_result is None:
        # The most recent WBC, when the index draw has only an ANC or differential.
        wbc_result = next(
            (d.results[Analyte.WBC] for d in reversed(draws) if Analyte.WBC in d.results),
            None,
        )
    wbc = wbc_result.value if wbc_result else None
    if child:
        assert age_d is not None and age_y is not None
        wbc_lln = t.wbc_lln_under_2y if age_y < 2 else t.wbc_lln_2_to_17y
        anc_lln = t.anc_lln_under_1y if age_d < 365 else t.anc_lln_from_1y
        lln_src = SRC_LLN_CHILD
        c.hit(
            "paediatric-limits",
            f"Age {age_y} y: paediatric limits WBC < {num(wbc_lln)}, ANC < {num(anc_lln)}",
            SRC_LLN_CHILD,
        )
    else:
        anc_lln = t.anc_lln_adult
        if wbc_result is not None and wbc_result.ref_low is not None:
            wbc_lln = wbc_result.ref_low
            lln_src = "the result's own reference range (labs differ: seeds 001, 002, 003)"
        else:
            wbc_lln = t.wbc_lln_adult
            lln_src = "seed 001 (4.0 x 10^9/L when the lab gives no range)"

    # --- Findings ------------------------------------------------------------------------------
    leukopenia = wbc is not None and wbc < wbc_lln
    if leukopenia:
        assert wbc_result is not None
        c.find(
            "leukopenia",
            f"Leukopenia: WBC {_fmt(wbc)} x 10^9/L on {wbc_result.time.date().isoformat()} "
            f"(lower limit {num(wbc_lln)})",
            f"all seeds; limit from {lln_src}",
        )

    anc = index.anc
    grade = _grade(anc, anc_lln, t)
    # ANC can never exceed the WBC of the same draw: when ANC is unknown, a WBC below a grade
    # floor proves at least that grade (safety: a WBC of 0.4 is never "unknown" neutropenia).
    implied = NeutropeniaGrade.UNKNOWN
    idx_wbc = index.value(Analyte.WBC)
    if anc is None and idx_wbc is not None and idx_wbc < anc_lln:
        implied = _grade(idx_wbc, anc_lln, t)
        c.hit(
            "anc-bounded-by-wbc",
            f"ANC unknown, but it cannot exceed the WBC of {num(idx_wbc)}: neutropenia is at "
            f"least {implied.value}",
            "arithmetic: ANC <= WBC of the same draw",
        )
    decision_grade = grade if grade is not NeutropeniaGrade.UNKNOWN else implied
    anc_desc = (
        f"ANC {num(anc)} x 10^9/L{' (derived)' if index.anc_derived else ''}"
        if anc is not None
        else "ANC unknown"
    )
    if grade in (
        NeutropeniaGrade.MILD,
        NeutropeniaGrade.MODERATE,
        NeutropeniaGrade.SEVERE,
        NeutropeniaGrade.PROFOUND,
    ):
        c.find(
            f"neutropenia-{grade.value}",
            f"{grade.value.capitalize()} neutropenia: {anc_desc} (lower limit {num(anc_lln)})",
            SRC_LLN_CHILD if child else SRC_GRADE,
        )
    elif grade is NeutropeniaGrade.UNKNOWN:
        if Analyte.NEUTROPHIL_PERCENT in index.results and idx_wbc is None:
            text = (
                "Neutropenia status unknown: the index CBC has a neutrophil % but no usable "
                "WBC, so the ANC cannot be derived"
            )
        else:
            text = "Neutropenia status unknown: no ANC or differential in the index CBC"
        if implied is not NeutropeniaGrade.UNKNOWN:
            text += f"; the WBC proves at least {implied.value} neutropenia"
        c.find("neutropenia-unknown", text, "clinical-rules.md 1.5")
    neutropenic = decision_grade.rank >= NeutropeniaGrade.MILD.rank
    white_line = leukopenia or neutropenic

    red_flag_wbc = wbc is not None and wbc < t.wbc_red_flag
    if red_flag_wbc:
        c.find(
            "wbc-below-3",
            f"WBC {_fmt(wbc)} is below the red-flag threshold of {num(t.wbc_red_flag)}",
            "seed 000",
        )

    fever_text = _fever(labs_results_temps(results), idx_time, now, t)
    fever = fever_text is not None
    if fever_text is not None:
        c.find("fever", fever_text, SRC_FEVER)
    anc_for_fn = (
        anc if anc is not None else (idx_wbc if implied is not NeutropeniaGrade.UNKNOWN else None)
    )
    febrile_neutropenia = fever and anc_for_fn is not None and anc_for_fn < t.febrile_anc_below
    if febrile_neutropenia:
        c.find(
            "febrile-neutropenia",
            "Febrile neutropenia: fever with "
            + (
                anc_desc
                if anc is not None
                else f"WBC {_fmt(idx_wbc)} (so ANC < {num(t.febrile_anc_below)})"
            ),
            SRC_FN,
        )

    anaemia = _anaemia(index, labs.sex, age_y, t)
    if anaemia:
        c.find("anaemia", anaemia, "WHO; seeds 000, 001, 002")
    plt = index.value(Analyte.PLATELETS)
    thrombocytopenia = plt is not None and plt < t.platelets_low
    if thrombocytopenia and plt is not None:
        c.find(
            "thrombocytopenia",
            f"Thrombocytopenia: platelets {num(plt)} x 10^9/L (< {num(t.platelets_low)})",
            "seeds 000, 001",
        )
    other_lines = int(bool(anaemia)) + int(thrombocytopenia)
    pancytopenia = white_line and other_lines == 2
    bicytopenia = white_line and other_lines == 1
    if pancytopenia:
        c.find(
            "pancytopenia",
            "Pancytopenia: low white cells, haemoglobin and platelets",
            SRC_CYTOPENIA,
        )
    elif bicytopenia:
        other = "haemoglobin" if anaemia else "platelets"
        c.find("bicytopenia", f"Bicytopenia: low white cells and low {other}", SRC_CYTOPENIA)

    mcv = index.value(Analyte.MCV)
    macrocytosis = not child and mcv is not None and mcv > t.mcv_high
    if macrocytosis and mcv is not None:
        c.find(
            "macrocytosis",
            f"Macrocytosis: MCV {num(mcv)} fL (> {num(t.mcv_high)})",
            "seed 002; seed 000",
        )

    window_start = idx_time - timedelta(days=t.trend_lookback_days)
    trend_draws = [d for d in draws if window_start <= d.time <= idx_time]
    wbc_series = [
        (d.time, d.results[Analyte.WBC].value) for d in trend_draws if Analyte.WBC in d.results
    ]
    decline = (
        _declining([v for _, v in wbc_series], t.decline_min_results)
        and wbc is not None
        and wbc < wbc_lln
    )
    if decline:
        vals = ", ".join(f"{num(v)}" for _, v in wbc_series[-t.decline_min_results :])
        c.find(
            "progressive-decline",
            f"Progressive decline: WBC {vals} over serial draws",
            "seed 000, seed 001",
        )
    stable = _stable(wbc_series, decline, t)
    if stable:
        c.find("stable", stable, "seed 000 (stable counts suggest benign etiology)")
    persistent = _persistent(trend_draws, anc_lln, decline, t) if neutropenic else None
    if persistent:
        c.find("persistent", persistent, "seed 002 (chronic > 3 months); seed 000")
    elif neutropenic and decline:
        c.hit(
            "not-persistent",
            "Not counted as persistent neutropenia: the WBC is progressively declining",
            "clinical-rules.md section 2 (persistent: not declining)",
        )

    meds = labs.medications
    high_risk = bool(meds)
    clozapine = any(m.name == "clozapine" for m in meds)
    if high_risk:
        c.find(
            "high-risk-medication",
            "Active medication known to lower white cells: "
            + "; ".join(f"{m.name} ({m.matched_by})" for m in meds),
            SRC_MEDS,
        )
    duffy = any(cond.kind == "duffy-null" for cond in labs.conditions)
    if duffy and white_line:
        c.find("duffy-null", "Duffy-null phenotype documented (Fy(a-b-))", SRC_DUFFY)
    explaining = tuple(cond for cond in labs.conditions if cond.kind in EXPLAINING_CONDITIONS)

    # --- Decision: first matching row -----------------------------------------------------
    recent_viral = any(
        cond.kind == "viral-infection"
        and (cond.onset is None or idx_time - cond.onset <= timedelta(days=t.recent_viral_days))
        for cond in labs.conditions
    )

    rows = _Decision(c, idx_time)
    severe = decision_grade in (NeutropeniaGrade.SEVERE, NeutropeniaGrade.PROFOUND)
    grade_word = decision_grade.value.capitalize()
    if febrile_neutropenia:
        rows.set(1, Risk.HIGH, "febrile neutropenia")
        rows.evaluation(
            Priority.STAT,
            t.stat_evaluation_hours,
            "Febrile neutropenia: emergency assessment, blood cultures and empiric "
            "broad-spectrum antibiotics within 1 hour",
            "seed 000; ASCO/IDSA 2018",
        )
    elif severe:
        rows.set(2, Risk.HIGH, f"{decision_grade.value} neutropenia without fever")
        ctx = f"{grade_word} neutropenia ({anc_desc})"
        rows.repeat(
            Priority.ASAP,
            t.repeat_severe_start_d,
            t.repeat_severe_end_d,
            ctx + ", to be confirmed within 24 h",
            "seed 002; seed 000",
        )
        rows.add(Action.PERIPHERAL_SMEAR, Priority.ASAP, ctx, "seed 000 (smear review)")
        rows.add(
            Action.HAEMATOLOGY_REFERRAL,
            Priority.ASAP,
            ctx,
            "seed 000 (referral mandatory below 1.0)",
            detail="haematology referral, mandatory below 1.0",
        )
    elif pancytopenia:
        rows.set(3, Risk.HIGH, "pancytopenia")
        ctx = "Pancytopenia, which suggests insufficient marrow production"
        rows.repeat(
            Priority.ASAP,
            t.repeat_pancytopenia_start_d,
            t.repeat_pancytopenia_end_d,
            ctx,
            SRC_CYTOPENIA,
        )
        rows.add(Action.PERIPHERAL_SMEAR, Priority.ASAP, ctx, SRC_CYTOPENIA)
        rows.add(Action.HAEMATOLOGY_REFERRAL, Priority.ASAP, ctx, SRC_CYTOPENIA)
        rows.b12_folate(Priority.ASAP, ctx)
    elif decision_grade is NeutropeniaGrade.MODERATE:
        risk = Risk.HIGH if high_risk else Risk.MODERATE
        rows.set(
            4, risk, "moderate neutropenia" + (" on a high-risk medication" if high_risk else "")
        )
        ctx = f"Moderate neutropenia ({anc_desc})"
        if clozapine:
            rows.repeat(
                Priority.URGENT,
                t.repeat_clozapine_start_d,
                t.repeat_clozapine_end_d,
                ctx + " on clozapine",
                "clozapine ANC monitoring",
            )
        else:
            rows.repeat(
                Priority.URGENT, t.repeat_moderate_start_d, t.repeat_moderate_end_d, ctx, "seed 000"
            )
        rows.add(Action.PERIPHERAL_SMEAR, Priority.URGENT, ctx, "seed 000")
        rows.add(
            Action.HAEMATOLOGY_REFERRAL,
            Priority.URGENT,
            ctx,
            "seed 000 (mandatory below 1.0)",
            detail="haematology referral, mandatory below 1.0",
        )
    elif (
        duffy
        and anc is not None
        and anc >= t.duffy_null_anc_floor
        and not fever
        and not (bicytopenia or pancytopenia)
        and not macrocytosis
        and not decline
    ):
        rows.set(5, Risk.LOW, "Duffy-null phenotype explains the count")
        c.hit(
            "duffy-null-no-workup",
            f"Documented Duffy-null phenotype with ANC {num(anc)} >= "
            f"{num(t.duffy_null_anc_floor)} and no other concern: no smear, B12/folate, "
            "referral or urgent evaluation",
            SRC_DUFFY,
        )
    elif white_line and fever:
        rows.set(
            6, Risk.MODERATE, _white_line_words(leukopenia, decision_grade).lower() + " with fever"
        )
        rows.evaluation(
            Priority.URGENT,
            t.urgent_evaluation_hours,
            "Fever with a low white count suggests a serious bacterial infection: "
            "same-day clinical evaluation",
            "seed 000",
        )
    elif white_line and (red_flag_wbc or bicytopenia or macrocytosis or decline or high_risk):
        rows.set(7, Risk.MODERATE, "low white count with a red flag")
        reasons = [
            label
            for label, on in (
                (f"WBC {_fmt(wbc)} below {num(t.wbc_red_flag)}", red_flag_wbc),
                ("bicytopenia", bicytopenia),
                ("macrocytosis", macrocytosis),
                ("progressive decline", decline),
                ("a high-risk medication", high_risk),
            )
            if on
        ]
        ctx = f"{_white_line_words(leukopenia, decision_grade)} with " + ", ".join(reasons)
        if clozapine and decision_grade is NeutropeniaGrade.MILD:
            rows.repeat(
                Priority.URGENT,
                t.repeat_clozapine_start_d,
                t.repeat_clozapine_end_d,
                ctx + " (mild neutropenia on clozapine)",
                "clozapine ANC monitoring",
            )
        else:
            rows.repeat(
                Priority.ROUTINE,
                t.repeat_mild_start_d,
                t.repeat_mild_end_d,
                ctx,
                "seed 002; seed 000",
            )
        if red_flag_wbc or bicytopenia or macrocytosis or decline:
            rows.add(Action.PERIPHERAL_SMEAR, Priority.ROUTINE, ctx, "seed 000")
        if bicytopenia or macrocytosis or decline:
            rows.b12_folate(Priority.ROUTINE, ctx)
        if bicytopenia or decline:
            rows.add(
                Action.HAEMATOLOGY_REFERRAL,
                Priority.ROUTINE,
                ctx,
                "seed 000 (evolving marrow disorder)",
            )
    elif persistent:
        rows.set(8, Risk.MODERATE, "persistent neutropenia")
        rows.b12_folate(Priority.ROUTINE, persistent)
        rows.add(
            Action.PERIPHERAL_SMEAR,
            Priority.ROUTINE,
            persistent,
            "seed 002 (chronic neutropenia work-up)",
        )
        rows.add(
            Action.HAEMATOLOGY_REFERRAL, Priority.ROUTINE, persistent, "seed 002", optional=True
        )
    elif leukopenia and stable and grade is NeutropeniaGrade.NONE:
        rows.set(9, Risk.LOW, "stable chronic leukopenia")
        c.hit(
            "reassuring",
            "Stable counts over time with a normal ANC are reassuring: no action needed",
            "seed 000 (stable counts suggest benign etiology)",
        )
    elif white_line:
        rows.set(10, Risk.LOW, _white_line_words(leukopenia, decision_grade).lower())
        if child and recent_viral:
            rows.repeat(
                Priority.ROUTINE,
                t.repeat_child_viral_start_d,
                t.repeat_child_viral_end_d,
                "Child with a recent viral illness: transient post-viral leukopenia is likely",
                "seeds 001, 004 (transient viral suppression)",
            )
        elif decision_grade is NeutropeniaGrade.MILD:
            rows.repeat(
                Priority.ROUTINE,
                t.repeat_mild_start_d,
                t.repeat_mild_end_d,
                f"{_white_line_words(leukopenia, decision_grade)} ({anc_desc})",
                "seed 002 (repeat CBC in 1-2 weeks)",
            )
        elif grade is NeutropeniaGrade.UNKNOWN:
            rows.repeat(
                Priority.ROUTINE,
                t.repeat_anc_unknown_start_d,
                t.repeat_anc_unknown_end_d,
                "Leukopenia with the ANC unknown",
                "clinical-rules.md row 11 (ANC unknown), the safer window",
            )
        else:
            rows.repeat(
                Priority.ROUTINE,
                t.repeat_leukopenia_start_d,
                t.repeat_leukopenia_end_d,
                "Mild leukopenia with a normal ANC, to confirm stability",
                "seed 000 (repeat in 4-6 weeks)",
            )
    elif grade is NeutropeniaGrade.UNKNOWN:
        rows.set(11, Risk.LOW, "ANC unknown")
        rows.repeat(
            Priority.ROUTINE,
            t.repeat_anc_unknown_start_d,
            t.repeat_anc_unknown_end_d,
            "The ANC of the latest CBC is unknown",
            SRC_TABLE + " row 11",
        )
    else:
        rows.set(12, Risk.NEGLIGIBLE, "normal")
        return _normal(c, draws, index, anc_lln, wbc_lln)

    if child and not c.has("paediatric-limits"):
        c.find("paediatric-limits", f"Paediatric limits applied (age {age_y} y)", SRC_LLN_CHILD)
    preliminary = index.preliminary
    if preliminary:
        c.find(
            "preliminary-data",
            "Based on preliminary results: confirm when final results are available",
            "clinical-rules.md 1.2",
        )

    mitigation: list[str] = []
    if meds and decision_grade.rank >= NeutropeniaGrade.MODERATE.rank:
        # Drug-induced neutropenia: the suspected drug is stopped or held (Andersohn 2007).
        mitigation.append(
            "Suspected drug-induced neutropenia: consider holding or stopping "
            + ", ".join(m.name for m in meds)
            + " now, with haematology advice (Andersohn 2007)."
        )
    elif meds:
        mitigation.append(
            "Review medications that lower white cells: " + ", ".join(m.name for m in meds) + "."
        )
    else:
        mitigation.append("Review medications for drugs that lower white cells.")
    if explaining:
        mitigation.append(
            "Recorded conditions that can explain it: "
            + ", ".join(cond.display for cond in explaining)
            + "."
        )
    if fever:
        mitigation.append(
            "The patient already has a fever: do not wait for new symptoms "
            "(seed 000: fever plus leukopenia suggests severe bacterial infection)."
        )
    else:
        mitigation.append(INFECTION_WARNING)

    basis: list[str] = list(index.refs)
    if wbc_result is not None and wbc_result.ref not in basis:
        basis.append(wbc_result.ref)
    for d in trend_draws:
        if (decline or stable or persistent) and d is not index:
            basis.extend(r for r in d.refs if r not in basis)

    return Assessment(
        patient_id=labs.patient_id,
        now=now,
        risk=rows.risk,
        row=rows.row,
        headline=_headline(
            rows.row, rows.label, wbc, anc, index.anc_derived, decision_grade, fever
        ),
        grade=grade,
        index_draw=index,
        wbc=wbc,
        wbc_lln=wbc_lln,
        anc_lln=anc_lln,
        findings=tuple(c.findings),
        recommendations=tuple(rows.recs),
        not_proposed=tuple(rows.not_proposed),
        medications=meds,
        conditions=explaining + tuple(x for x in labs.conditions if x.kind == "duffy-null"),
        mitigation=tuple(mitigation),
        trace=tuple(c.trace),
        issues=tuple(c.issues),
        preliminary=preliminary,
        basis=tuple(basis),
        draws=tuple(draws),
        decision_grade=decision_grade,
    )


def labs_results_temps(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.analyte is Analyte.BODY_TEMPERATURE]


#: What each work-up action is for, completing the situation in its reason.
PURPOSE = {
    Action.PERIPHERAL_SMEAR: "smear review for blasts, dysplasia and megaloblastic change",
    Action.HAEMATOLOGY_REFERRAL: "haematology referral",
    Action.VITAMIN_B12: "vitamin B12 level (deficiency causes leukopenia)",
    Action.FOLATE: "folate level (deficiency causes leukopenia)",
}


class _Decision:
    """Collects the row, risk and recommendations; applies the 'never propose twice' rules."""

    def __init__(self, c: _Ctx, index_time: datetime) -> None:
        self.c = c
        self.index_time = index_time
        self.row = 12
        self.risk = Risk.NEGLIGIBLE
        self.label = "normal"
        self.recs: list[Recommendation] = []
        self.not_proposed: list[str] = []

    def set(self, row: int, risk: Risk, label: str) -> None:
        self.row, self.risk, self.label = row, risk, label
        self.c.hit(f"row-{row}", f"Decision row {row} ({label}): risk {risk.value}", SRC_TABLE)

    def repeat(self, priority: Priority, start_d: int, end_d: int, ctx: str, source: str) -> None:
        """Repeat CBC: its window counts from the index CBC (clinical-rules.md section 3)."""
        start = self.index_time + timedelta(days=start_d)
        end = self.index_time + timedelta(days=end_d)
        note = ""
        if end < self.c.now:
            # The window has passed since the index CBC: it is overdue, so it starts now.
            start, end = self.c.now, self.c.now + (end - start)
            note = " (overdue: that window has passed, so it starts now)"
        reason = f"{ctx}: repeat CBC with differential {start_d}-{end_d} days after the index CBC"
        self._propose(
            Recommendation(Action.REPEAT_CBC, priority, start, end, reason + note, source)
        )

    def evaluation(self, priority: Priority, hours: int, why: str, source: str) -> None:
        now = self.c.now
        self._propose(
            Recommendation(
                Action.URGENT_EVALUATION, priority, now, now + timedelta(hours=hours), why, source
            )
        )

    def _workup_window(self, priority: Priority) -> tuple[datetime, datetime]:
        """Work-up counts from the evaluation time: a new order cannot start in the past."""
        t = self.c.t
        days = {
            Priority.ASAP: t.workup_asap_days,
            Priority.STAT: t.workup_asap_days,
            Priority.URGENT: t.workup_urgent_days,
        }.get(priority, t.workup_routine_days)
        return self.c.now, self.c.now + timedelta(days=days)

    def add(
        self,
        action: Action,
        priority: Priority,
        ctx: str,
        source: str,
        *,
        detail: str | None = None,
        optional: bool = False,
    ) -> None:
        start, end = self._workup_window(priority)
        reason = f"{ctx}: {detail or PURPOSE[action]}"
        self._propose(Recommendation(action, priority, start, end, reason, source, optional))

    def b12_folate(self, priority: Priority, ctx: str) -> None:
        """B12 and folate together, unless recently resulted (clinical-rules.md section 3)."""
        t, now = self.c.t, self.c.now
        recent = now - timedelta(days=t.b12_folate_recent_days)
        latest: dict[Analyte, Result] = {}
        for res in self.c.labs.results:
            if (
                res.analyte in (Analyte.VITAMIN_B12, Analyte.FOLATE)
                and recent <= res.time <= now
                and (res.analyte not in latest or res.time > latest[res.analyte].time)
            ):
                latest[res.analyte] = res
        floors = {
            Analyte.VITAMIN_B12: t.b12_normal_min_pg_ml,
            Analyte.FOLATE: t.folate_normal_min_ng_ml,
        }
        units = {Analyte.VITAMIN_B12: "pg/mL", Analyte.FOLATE: "ng/mL"}
        for analyte, action in (
            (Analyte.VITAMIN_B12, Action.VITAMIN_B12),
            (Analyte.FOLATE, Action.FOLATE),
        ):
            r = latest.get(analyte)
            if r is None:
                self.add(action, priority, ctx, "seed 000 (megaloblastosis); seeds 001, 002, 004")
                continue
            floor = r.ref_low if r.ref_low is not None else floors[analyte]
            state = "normal" if r.value >= floor else "LOW"
            msg = (
                f"{ACTION_LABEL[action]} not proposed: resulted {state} "
                f"({num(r.value)} {units[analyte]}) on {r.time.date().isoformat()}, "
                f"within {t.b12_folate_recent_days} days"
            )
            if state == "LOW":
                msg += " - a deficiency that may explain the count"
            self.not_proposed.append(msg)
            self.c.hit(
                f"recent-{analyte.value}", msg, "lab reference ranges; clinical-rules.md section 3"
            )

    def _propose(self, rec: Recommendation) -> None:
        label = ACTION_LABEL[rec.action]
        for order in self.c.labs.open_orders:
            if order.action is rec.action and order.priority.rank >= rec.priority.rank:
                msg = f"{label} not proposed: already open as {order.ref} ({order.priority.value})"
                self.not_proposed.append(msg)
                self.c.hit(
                    "already-open", msg, "clinical-rules.md section 3 (never propose what is open)"
                )
                return
        for order in self.c.labs.open_orders:
            if order.action is rec.action:
                rec = replace(
                    rec,
                    reason=rec.reason + f"; the open {order.ref} is only "
                    f"{order.priority.value}, which is not soon enough",
                )
        self.recs.append(rec)
        self.c.hit(
            f"suggest:{rec.action.value}",
            f"{label} ({rec.priority.value}): {rec.reason}",
            rec.source,
        )


def _white_line_words(leukopenia: bool, grade: NeutropeniaGrade) -> str:
    neutropenia = grade.rank >= NeutropeniaGrade.MILD.rank
    if leukopenia and neutropenia:
        return f"Leukopenia with {grade.value} neutropenia"
    if neutropenia:
        return f"{grade.value.capitalize()} neutropenia"
    return "Leukopenia"


def _index_draw(draws: Sequence[Draw]) -> Draw | None:
    for d in reversed(draws):
        if any(a in d.results for a in (Analyte.WBC, Analyte.ANC, Analyte.NEUTROPHIL_PERCENT)):
            return d
    return None


def _grade(anc: float | None, lln: float, t: Thresholds) -> NeutropeniaGrade:
    """Lower bound belongs to the tier: 1.5 none, 1.0 mild, 0.5 moderate, 0.1 severe."""
    if anc is None:
        return NeutropeniaGrade.UNKNOWN
    if anc >= lln:
        return NeutropeniaGrade.NONE
    if anc >= t.anc_mild_floor:
        return NeutropeniaGrade.MILD
    if anc >= t.anc_moderate_floor:
        return NeutropeniaGrade.MODERATE
    if anc >= t.anc_severe_floor:
        return NeutropeniaGrade.SEVERE
    return NeutropeniaGrade.PROFOUND


def _fever(
    temps: Sequence[Result], index_time: datetime, now: datetime, t: Thresholds
) -> str | None:
    since = index_time - timedelta(hours=t.fever_lookback_hours)
    window = sorted((r for r in temps if since <= r.time <= now), key=lambda r: r.time)
    single = [r for r in window if r.value >= t.fever_single_c]
    if single:
        top = max(single, key=lambda r: r.value)
        return (
            f"Fever: {top.value:.1f} C at {_when(top.time)} (one reading >= "
            f"{t.fever_single_c:.1f} C)"
        )
    high = [r for r in window if r.value >= t.fever_sustained_c]
    gap = timedelta(hours=t.fever_sustained_gap_hours)
    for i, a in enumerate(high):
        for b in high[i + 1 :]:
            if b.time - a.time >= gap:
                return (
                    f"Fever: {a.value:.1f} C at {_when(a.time)} and {b.value:.1f} C at "
                    f"{_when(b.time)} (two readings >= {t.fever_sustained_c:.1f} C at least "
                    f"{t.fever_sustained_gap_hours:g} h apart)"
                )
    return None


def _when(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M %Z").strip()


def _anaemia(index: Draw, sex: str | None, age_y: int | None, t: Thresholds) -> str | None:
    hb = index.value(Analyte.HAEMOGLOBIN)
    if hb is None:
        return None
    if age_y is not None and age_y < t.hb_adult_age_years:
        limit, who = t.hb_low_child, f"under {t.hb_adult_age_years} y"
    elif sex == "male":
        limit, who = t.hb_low_male, "male"
    else:
        limit, who = t.hb_low_female, "female" if sex == "female" else "sex unknown"
    if hb < limit:
        return f"Anaemia: haemoglobin {num(hb)} g/dL (< {num(limit)}, {who})"
    return None


def _declining(values: Sequence[float], n: int) -> bool:
    if len(values) < n:
        return False
    tail = values[-n:]
    return all(b < a for a, b in zip(tail, tail[1:], strict=False))


def _stable(series: Sequence[tuple[datetime, float]], decline: bool, t: Thresholds) -> str | None:
    if decline or len(series) < t.stable_min_results:
        return None
    span = (series[-1][0] - series[0][0]).days
    values = [v for _, v in series]
    if span >= t.stable_min_span_days and max(values) - min(values) <= t.stable_max_range:
        return (
            f"Stable: {len(values)} WBC results over {span} days between "
            f"{num(min(values))} and {num(max(values))}"
        )
    return None


def _persistent(draws: Sequence[Draw], anc_lln: float, decline: bool, t: Thresholds) -> str | None:
    run: list[Draw] = []
    for d in reversed(draws):
        if d.anc is None:
            continue
        if d.anc >= anc_lln:
            break
        run.append(d)
    if decline or len(run) < t.persistent_min_draws:
        return None
    run.reverse()
    span = (run[-1].time - run[0].time).days
    ancs = [d.anc for d in run if d.anc is not None]
    # "Not declining" is the progressive-decline finding (checked above). A drift of the ANC
    # within lab noise (1.3, 1.25, 1.2) must not cancel persistence: that would give a
    # drifting patient less work-up than a flat one.
    if span > t.persistent_min_span_days:
        return (
            f"Persistent neutropenia: ANC below {num(anc_lln)} on {len(run)} draws over "
            f"{span} days ({', '.join(num(a) for a in ancs)})"
        )
    return None


def _headline(
    row: int,
    label: str,
    wbc: float | None,
    anc: float | None,
    derived: bool,
    grade: NeutropeniaGrade,
    fever: bool,
) -> str:
    counts = (
        f"WBC {_fmt(wbc)}, ANC {_fmt(anc)}{' (derived)' if derived and anc is not None else ''}"
    )
    text = {
        1: f"Febrile neutropenia ({counts}): emergency evaluation and antibiotics within 1 hour",
        2: f"{grade.value.capitalize()} neutropenia ({counts}): repeat CBC within 24 h, smear "
        "and haematology referral",
        3: f"Pancytopenia ({counts}): urgent haematology work-up",
        4: f"Moderate neutropenia ({counts}): repeat CBC, smear and haematology referral",
        5: f"Low count explained by documented Duffy-null phenotype ({counts}): no work-up needed",
        6: f"{label[0].upper()}{label[1:]} ({counts}): same-day evaluation",
        7: f"Low white count with red flags ({counts}): repeat CBC and work-up",
        8: f"Persistent neutropenia ({counts}): B12, folate and smear",
        9: f"Stable chronic leukopenia ({counts}): reassuring, no action needed",
        10: f"{label[0].upper()}{label[1:]} ({counts}): repeat CBC",
        11: f"ANC unknown ({counts}): repeat CBC with differential",
    }.get(row, f"{label} ({counts})")
    return text[:139]


def _normal(
    c: _Ctx, draws: Sequence[Draw], index: Draw | None, anc_lln: float, wbc_lln: float | None
) -> Assessment:
    grade = (
        NeutropeniaGrade.NONE
        if index is not None and index.anc is not None
        else NeutropeniaGrade.UNKNOWN
    )
    return Assessment(
        patient_id=c.labs.patient_id,
        now=c.now,
        risk=Risk.NEGLIGIBLE,
        row=12,
        headline="No leukopenia or neutropenia",
        grade=grade,
        decision_grade=grade,
        index_draw=index,
        wbc=index.value(Analyte.WBC) if index else None,
        wbc_lln=wbc_lln,
        anc_lln=anc_lln,
        findings=(),
        recommendations=(),
        not_proposed=(),
        medications=c.labs.medications,
        conditions=(),
        mitigation=(),
        trace=tuple(c.trace),
        issues=tuple(c.issues),
        preliminary=bool(index and index.preliminary),
        basis=index.refs if index else (),
        draws=tuple(draws),
    )


__all__ = ["assess", "Medication", "ClinicalCondition"]

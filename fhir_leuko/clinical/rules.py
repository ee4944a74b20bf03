"""The leukopenia / neutropenia decision table, version 2 (``docs/clinical-rules.md``).

Pure: ``assess(labs, now, thresholds)`` reads plain values and returns an
:class:`~fhir_leuko.clinical.model.Assessment` with a trace of every rule that fired and its
source. No FHIR, no HTTP, no clock. Every number comes from ``thresholds.py``.

The code follows the table:

1. cleaning (section 1): which results are used, grouped into draws (``cleaning.py``);
   future-stamped and preliminary results may raise an assessment, never lower it
   (:func:`assess`);
2. findings (section 2): :func:`_findings` builds :class:`Facts`, one field per finding;
3. the first matching row (section 3): :data:`ROWS`, one small function per row;
4. the modifiers of section 3a, on top of whatever row matched: :func:`_modifiers`;
5. the ANC-unknown window rule, in one place: :func:`_anc_unknown_window`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from fhir_leuko.clinical.cleaning import dedupe, group_draws
from fhir_leuko.clinical.model import (
    ACTION_LABEL,
    ANALYTE_LABEL,
    CBC_ANALYTES,
    COUNT_UNIT,
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
    Row,
    RuleHit,
    num,
    when,
)
from fhir_leuko.clinical.references import (
    ANDERSOHN_2007,
    ASCO_IDSA_2018,
    CLOZAPINE_LABEL,
    CTCAE,
    DECISION_TABLE,
    GIBSON_BERLINER_2014,
    HARRIET_LANE,
    IDSA_2010,
    MERZ_2023,
    NICE_CG151,
    WHO_2011,
    cite,
)
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds


def table(section: str) -> str:
    """A source naming a part of the project's own decision table, e.g. 'row 1b'."""
    return f"{DECISION_TABLE.short} {section}"


SRC_LLN_ADULT = cite(GIBSON_BERLINER_2014)
SRC_LLN_CHILD = cite(HARRIET_LANE)
SRC_GRADE = cite(CTCAE, IDSA_2010)
SRC_FEVER = cite(IDSA_2010, CTCAE)
SRC_FN = cite(CTCAE, IDSA_2010)
SRC_PRESUMED_FN = cite(NICE_CG151, ASCO_IDSA_2018)
SRC_STAT = cite(ASCO_IDSA_2018, IDSA_2010)
SRC_WORKUP = cite(GIBSON_BERLINER_2014)
SRC_ANAEMIA = cite(WHO_2011)
SRC_MEDS = cite(ANDERSOHN_2007, GIBSON_BERLINER_2014)
SRC_CLOZAPINE = cite(CLOZAPINE_LABEL)
SRC_DUFFY = cite(MERZ_2023)
SRC_CHEMO = cite(NICE_CG151, IDSA_2010)

#: Conditions recorded for the patient that can explain a low white count (section 3,
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
    "Tell the patient to seek care at once for fever above 38.0 °C, breathing difficulty, "
    f"severe diarrhoea or confusion ({cite(GIBSON_BERLINER_2014)})."
)

_WHITE_ANALYTES = frozenset({Analyte.WBC, Analyte.ANC, Analyte.NEUTROPHIL_PERCENT})

#: Data issues about a result that was still used (so not "unusable", 1.8).
_USED_ANYWAY = frozenset(
    {"ignored-status", "conflicting-results", "text-value", "future-time-provisional"}
)


# --- Entry point: provisional data may raise, never lower (1.2, 1.6, 3a) ------------------------


def assess(
    labs: PatientLabs, now: datetime, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Assessment:
    """Evaluate one patient.

    Results stamped more than ``future_tolerance_hours`` after ``now`` are not used and are
    named. Preliminary results and results stamped up to that far ahead are *provisional*:
    the assessment is made with and without them, and the more serious one is kept, saying
    why (a provisional result may raise an alert, never suppress one).
    """
    t = thresholds
    horizon = now + timedelta(hours=t.future_tolerance_hours)
    usable: list[Result] = []
    unused: list[DataIssue] = []
    future_issues: list[DataIssue] = []
    for r in labs.results:
        if r.time > horizon:
            unused.append(_future_issue(r, now, used=False))
        else:
            if r.time > now:
                future_issues.append(_future_issue(r, now, used=True))
            usable.append(r)
    base = replace(labs, results=tuple(usable), issues=labs.issues + tuple(unused))

    def provisional(r: Result) -> bool:
        return r.preliminary or r.time > now

    full = _assess(replace(base, issues=base.issues + tuple(future_issues)), now, horizon, t)
    if not any(provisional(r) for r in usable):
        return full
    settled = _assess(
        replace(base, results=tuple(r for r in usable if not provisional(r))), now, now, t
    )
    if _severity(settled) > _severity(full):
        newer = _provisional_words(full, now)
        text = (
            f"A newer {newer} looks less serious, but provisional results never suppress an "
            "alert: this assessment rests on the settled results; review it when the newer "
            "results are final and correctly timed"
        )
        hit = RuleHit("provisional-cannot-suppress", text, table("1.2, 1.6"))
        return replace(
            settled,
            trace=settled.trace + (hit,),
            findings=settled.findings + (Finding("preliminary-data", text, table("1.2, 1.6")),),
            issues=settled.issues + tuple(future_issues),
        )
    if _severity(full) > _severity(settled) and "preliminary-data" not in full.finding_codes:
        text = (
            f"Raised by {_provisional_words(full, now)}: provisional results may raise an "
            "alert; confirm when the results are final and correctly timed"
        )
        return replace(
            full,
            preliminary=True,
            findings=full.findings + (Finding("preliminary-data", text, table("1.2, 1.6")),),
            trace=full.trace + (RuleHit("provisional-raises", text, table("3a")),),
        )
    return full


def _future_issue(r: Result, now: datetime, *, used: bool) -> DataIssue:
    ahead = r.time - now
    hours = ahead.total_seconds() / 3600
    span = f"{hours:.0f} h" if hours < 48 else f"{ahead.days} days"
    label = ANALYTE_LABEL[r.analyte]
    if used:
        message = (
            f"{label} {r.shown} ({r.ref}) is stamped {when(r.time)}, {span} after the "
            "evaluation time (a clock or time-zone error?): used only where it raises the "
            "assessment"
        )
    else:
        message = (
            f"{label} {r.shown} ({r.ref}) is stamped {when(r.time)}, {span} after the "
            "evaluation time: not used; check its time"
        )
    code = "future-time-provisional" if used else "future-time"
    return DataIssue(code, message, r.ref, "warning", r.analyte, r.shown)


def _provisional_words(a: Assessment, now: datetime) -> str:
    d = a.index_draw
    if d is None:
        return "provisional result"
    kinds = []
    if d.preliminary:
        kinds.append("PRELIMINARY")
    if d.time > now:
        kinds.append("FUTURE-STAMPED")
    counts = f"WBC {_fmt(d.value(Analyte.WBC))}, ANC {_fmt(d.anc)}"
    return f"{' and '.join(kinds) or 'provisional'} CBC ({when(d.time)}: {counts})"


def _severity(a: Assessment) -> tuple[int, int]:
    top = max((r.priority.rank for r in a.recommendations), default=-1)
    return (a.risk.rank, top)


# --- Section 2: findings ---------------------------------------------------------------------


@dataclass
class Facts:
    """What section 2 found about one patient: one field per finding the rows read."""

    index: Draw
    draws: list[Draw]
    trend_draws: list[Draw]
    child: bool
    age_text: str
    wbc: float | None
    wbc_result: Result | None
    wbc_lln: float
    anc_lln: float
    anc: float | None
    anc_desc: str
    grade: NeutropeniaGrade
    decision_grade: NeutropeniaGrade
    leukopenia: bool
    wbc_below_3: bool
    fever: bool
    febrile_neutropenia: bool
    anaemia: bool
    hb_lln: float | None
    thrombocytopenia: bool
    bicytopenia: bool
    pancytopenia: bool
    macrocytosis: bool
    decline: str | None
    stable: str | None
    persistent: str | None
    medications: tuple[Medication, ...]
    clozapine: bool
    chemotherapy: tuple[str, ...]  # what puts the patient in a chemotherapy context
    duffy_null: bool
    red_flags: tuple[ClinicalCondition, ...]
    explaining: tuple[ClinicalCondition, ...]
    recent_viral: bool
    #: A recorded splenomegaly not counted as a red flag, because its cause is recorded.
    spleen_explained: bool = False

    @property
    def neutropenic(self) -> bool:
        return self.decision_grade.rank >= NeutropeniaGrade.MILD.rank

    @property
    def white_line(self) -> bool:
        return self.leukopenia or self.neutropenic

    @property
    def anc_unknown(self) -> bool:
        return self.anc is None

    @property
    def high_risk_medication(self) -> bool:
        return bool(self.medications)

    @property
    def counts(self) -> str:
        derived = " (derived)" if self.index.anc_derived and self.anc is not None else ""
        return f"WBC {_fmt(self.wbc)}, ANC {_fmt(self.anc)}{derived}"

    def white_words(self) -> str:
        neutropenia = self.decision_grade.rank >= NeutropeniaGrade.MILD.rank
        grade = self.decision_grade.value
        if self.leukopenia and neutropenia:
            return f"Leukopenia with {grade} neutropenia"
        if neutropenia:
            return f"{grade.capitalize()} neutropenia"
        return "Leukopenia"


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
    return "unknown" if v is None else num(v)


def _age(birth: date, on: date) -> tuple[int, int]:
    """(whole years, whole months) of age on a date."""
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    return months // 12, months


def _findings(c: _Ctx, draws: list[Draw], index: Draw, horizon: datetime) -> Facts:
    labs, t = c.labs, c.t
    idx_time = index.time

    # --- Age and lower limits (section 2: LLN rows) ----------------------------------------
    age_y: int | None = None
    age_m: int | None = None
    if labs.birth_date is not None:
        age_y, age_m = _age(labs.birth_date, idx_time.date())
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
    age_text = ""
    if child:
        assert age_y is not None and age_m is not None
        if age_y < 2:
            wbc_lln = t.wbc_lln_under_2y
        elif age_y < 8:
            wbc_lln = t.wbc_lln_2_to_7y
        else:
            wbc_lln = t.wbc_lln_8_to_17y
        if age_m < 1:
            anc_lln = t.anc_lln_neonate
        elif age_m < 12:
            anc_lln = t.anc_lln_1m_to_1y
        else:
            anc_lln = t.anc_lln_from_1y
        age_text = f"{age_y} y" if age_y >= 2 else f"{age_m} months"
        lln_src = SRC_LLN_CHILD
        c.find(
            "paediatric-limits",
            f"Age {age_text}: paediatric limits WBC < {num(wbc_lln)}, ANC < {num(anc_lln)} "
            f"{COUNT_UNIT}",
            SRC_LLN_CHILD,
        )
    else:
        anc_lln = t.anc_lln_adult
        if wbc_result is not None and wbc_result.ref_low is not None:
            wbc_lln = wbc_result.ref_low
            lln_src = "the lab's own reference range"
        else:
            wbc_lln = t.wbc_lln_adult
            lln_src = SRC_LLN_ADULT

    leukopenia = wbc is not None and wbc < wbc_lln
    if leukopenia:
        assert wbc_result is not None
        c.find(
            "leukopenia",
            f"Leukopenia: WBC {wbc_result.shown} {COUNT_UNIT} on {when(wbc_result.time)} "
            f"(lower limit {num(wbc_lln)})",
            lln_src,
        )

    # --- Neutropenia grade; the ANC can never exceed the WBC of its draw ----------------------
    anc = index.anc
    grade = _grade(anc, anc_lln, t)
    implied = NeutropeniaGrade.UNKNOWN
    idx_wbc = index.value(Analyte.WBC)
    if anc is None and idx_wbc is not None and idx_wbc < anc_lln:
        implied = _grade(idx_wbc, anc_lln, t)
        c.hit(
            "anc-bounded-by-wbc",
            f"ANC unknown, but it cannot exceed the WBC of {num(idx_wbc)}: neutropenia is at "
            f"least {implied.value}",
            table("1.5 (the ANC is part of the WBC of the same draw)"),
        )
    decision_grade = grade if grade is not NeutropeniaGrade.UNKNOWN else implied
    anc_result = index.results.get(Analyte.ANC)
    anc_shown = anc_result.shown if anc_result is not None else _fmt(anc)
    anc_desc = (
        f"ANC {anc_shown} {COUNT_UNIT}{' (derived)' if index.anc_derived else ''}"
        if anc is not None
        else "ANC unknown"
    )
    if grade.rank >= NeutropeniaGrade.MILD.rank:
        c.find(
            f"neutropenia-{grade.value}",
            f"{grade.value.capitalize()} neutropenia: {anc_desc} (lower limit {num(anc_lln)})",
            cite(HARRIET_LANE, CTCAE) if child else SRC_GRADE,
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
        c.find("neutropenia-unknown", text, table("1.5"))

    wbc_below_3 = wbc is not None and wbc < t.wbc_red_flag
    if wbc_below_3:
        c.find(
            "wbc-below-3",
            f"WBC {_fmt(wbc)} is below the red-flag threshold of {num(t.wbc_red_flag)}",
            SRC_WORKUP,
        )

    # --- Fever, febrile neutropenia ----------------------------------------------------------
    temps = [r for r in labs.results if r.analyte is Analyte.BODY_TEMPERATURE]
    fever_text = _fever(temps, idx_time, horizon, t)
    fever = fever_text is not None
    if fever_text is not None:
        c.find("fever", fever_text, SRC_FEVER)
    else:
        _fever_just_before_the_window(c, temps, idx_time, t)
    febrile_neutropenia = fever and anc is not None and anc < t.febrile_anc_below
    if febrile_neutropenia:
        c.find("febrile-neutropenia", f"Febrile neutropenia: fever with {anc_desc}", SRC_FN)

    # --- Other cell lines ----------------------------------------------------------------------
    pregnant = any(cond.kind == "pregnancy" for cond in labs.conditions)
    hb_lln, hb_who = hb_lower_limit(labs.sex, age_y, age_m, pregnant, t)
    if hb_who == "sex unknown" and Analyte.HAEMOGLOBIN in index.results:
        c.issues.append(
            DataIssue(
                "no-sex",
                f"No Patient.gender of male or female: the haemoglobin limit of "
                f"{num(t.hb_low_female)} g/dL (women, or sex unknown) was used; for a man it is "
                f"{num(t.hb_low_male)}",
            )
        )
    anaemia_text = _anaemia(index, hb_lln, hb_who)
    if anaemia_text:
        c.find("anaemia", anaemia_text, SRC_ANAEMIA)
    plt = index.results.get(Analyte.PLATELETS)
    thrombocytopenia = plt is not None and plt.value < t.platelets_low
    if thrombocytopenia and plt is not None:
        c.find(
            "thrombocytopenia",
            f"Thrombocytopenia: platelets {plt.shown} {COUNT_UNIT} (< {num(t.platelets_low)})",
            cite(CTCAE),
        )
    white_line = leukopenia or decision_grade.rank >= NeutropeniaGrade.MILD.rank
    other_lines = int(bool(anaemia_text)) + int(thrombocytopenia)
    pancytopenia = white_line and other_lines == 2
    bicytopenia = white_line and other_lines == 1
    if pancytopenia:
        c.find(
            "pancytopenia", "Pancytopenia: low white cells, haemoglobin and platelets", SRC_WORKUP
        )
    elif bicytopenia:
        other = "haemoglobin" if anaemia_text else "platelets"
        c.find("bicytopenia", f"Bicytopenia: low white cells and low {other}", SRC_WORKUP)

    mcv = index.results.get(Analyte.MCV)
    macrocytosis = mcv is not None and mcv.value > t.mcv_high
    if macrocytosis and mcv is not None:
        c.find(
            "macrocytosis",
            f"Macrocytosis: MCV {mcv.shown} fL (> {num(t.mcv_high)})",
            SRC_WORKUP,
        )

    # --- Serial draws (24 months) ----------------------------------------------------------------
    window_start = idx_time - timedelta(days=t.trend_lookback_days)
    trend_draws = [d for d in draws if window_start <= d.time <= idx_time]
    wbc_series = [
        (d.time, d.results[Analyte.WBC].value) for d in trend_draws if Analyte.WBC in d.results
    ]
    anc_series = [(d.time, d.anc) for d in trend_draws if d.anc is not None]
    decline_parts: list[str] = []
    wbc_fall = _decline([v for _, v in wbc_series], t.decline_min_draws, t.decline_min_fall_wbc)
    if wbc_fall and wbc is not None and wbc < wbc_lln:
        decline_parts.append("WBC " + " → ".join(num(v) for v in wbc_fall))
    anc_fall = _decline([v for _, v in anc_series], t.decline_min_draws, t.decline_min_fall_anc)
    if anc_fall and anc_fall[-1] < anc_lln:
        decline_parts.append("ANC " + " → ".join(num(v) for v in anc_fall))
    decline = None
    if decline_parts:
        decline = "Progressive decline over serial draws: " + "; ".join(decline_parts)
        c.find("progressive-decline", decline, SRC_WORKUP)
    stable = _stable(wbc_series, decline is not None, t)
    if stable:
        c.find("stable", stable, SRC_WORKUP)
    persistent = None
    if white_line and decision_grade.rank >= NeutropeniaGrade.MILD.rank:
        persistent = _persistent(trend_draws, anc_lln, decline is not None, t)
        if persistent:
            c.find("persistent", persistent, SRC_WORKUP)
        elif decline:
            c.hit(
                "not-persistent",
                "Not counted as persistent neutropenia: the count is progressively declining",
                table("section 2 (persistent: not declining)"),
            )

    # --- Medications and conditions ------------------------------------------------------------
    meds = labs.medications
    if meds:
        c.find(
            "high-risk-medication",
            "Active medication known to lower white cells: "
            + "; ".join(f"{m.name} ({m.matched_by})" for m in meds),
            SRC_MEDS,
        )
    chemo = tuple(
        [f"{m.name} (antineoplastic)" for m in meds if m.antineoplastic]
        + [cond.display for cond in labs.conditions if cond.kind == "chemotherapy"]
    )
    duffy = any(cond.kind == "duffy-null" for cond in labs.conditions)
    if duffy and white_line:
        c.find("duffy-null", "Duffy-null phenotype documented (Fy(a−b−))", SRC_DUFFY)
    red_flags = tuple(cond for cond in labs.conditions if cond.kind == "red-flag")
    # Splenomegaly is a red flag when its cause is unknown; a recorded hypersplenism or portal
    # hypertension is its cause, and explains the count (section 2, red-flag condition).
    spleen_cause = [cond.display for cond in labs.conditions if cond.kind == "hypersplenism"]
    spleen_explained = bool(spleen_cause) and any(c.display == "splenomegaly" for c in red_flags)
    if spleen_explained:
        red_flags = tuple(cond for cond in red_flags if cond.display != "splenomegaly")
        c.hit(
            "splenomegaly-explained",
            "Splenomegaly recorded with its cause ("
            + ", ".join(sorted(set(spleen_cause)))
            + "): not counted as a red flag",
            table("2 (red-flag condition: splenomegaly of unknown cause)"),
        )
    if red_flags and white_line:
        c.find(
            "red-flag-condition",
            "Red-flag condition recorded: " + ", ".join(cond.display for cond in red_flags),
            SRC_WORKUP,
        )
    recent_viral = any(
        cond.kind == "viral-infection"
        and (cond.onset is None or idx_time - cond.onset <= timedelta(days=t.recent_viral_days))
        for cond in labs.conditions
    )
    return Facts(
        index=index,
        draws=draws,
        trend_draws=trend_draws,
        child=child,
        age_text=age_text,
        wbc=wbc,
        wbc_result=wbc_result,
        wbc_lln=wbc_lln,
        anc_lln=anc_lln,
        anc=anc,
        anc_desc=anc_desc,
        grade=grade,
        decision_grade=decision_grade,
        leukopenia=leukopenia,
        wbc_below_3=wbc_below_3,
        fever=fever,
        febrile_neutropenia=febrile_neutropenia,
        anaemia=bool(anaemia_text),
        hb_lln=hb_lln,
        thrombocytopenia=thrombocytopenia,
        bicytopenia=bicytopenia,
        pancytopenia=pancytopenia,
        macrocytosis=macrocytosis,
        decline=decline,
        stable=stable,
        persistent=persistent,
        medications=meds,
        clozapine=any(m.name == "clozapine" for m in meds),
        chemotherapy=chemo,
        duffy_null=duffy,
        red_flags=red_flags,
        explaining=tuple(cond for cond in labs.conditions if cond.kind in EXPLAINING_CONDITIONS),
        recent_viral=recent_viral,
        spleen_explained=spleen_explained and white_line,
    )


# --- Section 3: the rows, first match ----------------------------------------------------------

#: What each work-up action is for, completing the situation in its reason.
PURPOSE = {
    Action.PERIPHERAL_SMEAR: "smear review for blasts, dysplasia and megaloblastic change",
    Action.HAEMATOLOGY_REFERRAL: "haematology referral",
    Action.VITAMIN_B12: "vitamin B12 level (deficiency causes leukopenia)",
    Action.FOLATE: "folate level (deficiency causes leukopenia)",
}


class _Decision:
    """Collects the row, risk and recommendations; applies the 'never propose twice' rules."""

    def __init__(self, c: _Ctx, f: Facts) -> None:
        self.c = c
        self.f = f
        # Windows count from the index CBC, but never from a future-stamped one.
        self.index_time = min(f.index.time, c.now)
        self.row = Row.NORMAL
        self.risk = Risk.NEGLIGIBLE
        self.label = "normal"
        self.recs: list[Recommendation] = []
        self.not_proposed: list[str] = []
        self.reassuring = False

    def set(self, row: Row, risk: Risk, label: str) -> None:
        self.row, self.risk, self.label = row, risk, label
        self.c.hit(
            f"row-{row.value}",
            f"Decision row {row.value} ({label}): risk {risk.value}",
            table(f"row {row.value}"),
        )

    def raise_risk(self, risk: Risk, why: str, source: str) -> None:
        if risk.rank > self.risk.rank:
            self.c.hit("raise-risk", f"Risk raised to {risk.value}: {why}", source)
            self.risk = risk

    def window(self, start_d: int, end_d: int) -> tuple[datetime, datetime, str]:
        """A repeat window in days from the index CBC; never starting in the past."""
        start = self.index_time + timedelta(days=start_d)
        end = self.index_time + timedelta(days=end_d)
        note = ""
        if end < self.c.now:
            # The window has passed since the index CBC: it is overdue, so it starts now.
            start, end = self.c.now, self.c.now + (end - start)
            note = " (overdue: that window has passed, so it starts now)"
        elif start < self.c.now:
            start = self.c.now  # an order cannot start in the past
        return start, end, note

    def repeat(self, priority: Priority, start_d: int, end_d: int, ctx: str, source: str) -> None:
        """Repeat CBC with differential; its window counts from the index CBC."""
        start, end, note = self.window(start_d, end_d)
        span = "now" if end_d == 0 else f"{start_d}-{end_d} days after the index CBC"
        reason = f"{ctx}: repeat CBC with differential {span}"
        self.propose(Recommendation(Action.REPEAT_CBC, priority, start, end, reason + note, source))

    def evaluation(self, priority: Priority, hours: int, why: str, source: str) -> None:
        now = self.c.now
        self.propose(
            Recommendation(
                Action.URGENT_EVALUATION, priority, now, now + timedelta(hours=hours), why, source
            )
        )

    def workup_window(self, priority: Priority) -> tuple[datetime, datetime]:
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
        start, end = self.workup_window(priority)
        reason = f"{ctx}: {detail or PURPOSE[action]}"
        self.propose(Recommendation(action, priority, start, end, reason, source, optional))

    def smear_and_referral(self, priority: Priority, ctx: str) -> None:
        """Smear and haematology referral below an ANC of 1.0, where referral is mandatory
        (rows 2 and 4; Gibson & Berliner 2014)."""
        self.add(Action.PERIPHERAL_SMEAR, priority, ctx, SRC_WORKUP)
        self.add(
            Action.HAEMATOLOGY_REFERRAL,
            priority,
            ctx,
            SRC_WORKUP,
            detail="haematology referral, mandatory below 1.0",
        )

    def b12_folate(self, priority: Priority, ctx: str) -> None:
        """B12 and folate together, unless recently resulted (section 3, 'Always')."""
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
                self.add(action, priority, ctx, SRC_WORKUP)
                continue
            floor = r.ref_low if r.ref_low is not None else floors[analyte]
            state = "normal" if r.value >= floor else "LOW"
            msg = (
                f"{ACTION_LABEL[action]} not proposed: resulted {state} "
                f"({r.shown} {units[analyte]}) on {when(r.time)}, "
                f"within {t.b12_folate_recent_days} days"
            )
            if state == "LOW":
                msg += " - a deficiency that may explain the count"
            self.not_proposed.append(msg)
            self.c.hit(f"recent-{analyte.value}", msg, table("section 3 (recently normal)"))

    def propose(self, rec: Recommendation) -> None:
        """Add a suggestion; one already present keeps the more urgent priority and the
        earlier window (3a); never propose what is already open for the patient."""
        label = ACTION_LABEL[rec.action]
        for i, have in enumerate(self.recs):
            if have.action is rec.action:
                merged = _merge(have, rec)
                if merged != have:
                    self.recs[i] = merged
                    self.c.hit(
                        f"suggest:{rec.action.value}",
                        f"{label} ({merged.priority.value}): {merged.reason}",
                        merged.source,
                    )
                return
        for order in self.c.labs.open_orders:
            if order.action is rec.action:
                # Never propose what is open; when the open order is less urgent than this
                # finding needs, say so loudly instead of ordering a duplicate.
                msg = f"{label} not proposed: already open as {order.ref} ({order.priority.value})"
                if order.priority.rank < rec.priority.rank:
                    msg += (
                        f" - this finding calls for {rec.priority.value} by "
                        f"{when(rec.end)}: expedite the open order"
                    )
                self.not_proposed.append(msg)
                self.c.hit("already-open", msg, table("section 3 (never propose what is open)"))
                return
        self.recs.append(rec)
        self.c.hit(
            f"suggest:{rec.action.value}",
            f"{label} ({rec.priority.value}): {rec.reason}",
            rec.source,
        )


def _merge(have: Recommendation, new: Recommendation) -> Recommendation:
    """The more urgent priority and the earlier window of two suggestions of one action."""
    if new.priority.rank > have.priority.rank or (
        new.priority.rank == have.priority.rank and new.end < have.end
    ):
        return replace(
            new,
            start=min(have.start, new.start),
            end=min(have.end, new.end),
            optional=have.optional and new.optional,
        )
    if new.end < have.end:
        return replace(have, end=new.end, start=min(have.start, new.start))
    return have


def _row_1(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 1, febrile neutropenia: emergency evaluation and antibiotics within 1 h."""
    if not f.febrile_neutropenia:
        return False
    d.set(Row.FEBRILE_NEUTROPENIA, Risk.HIGH, "febrile neutropenia")
    d.evaluation(
        Priority.STAT,
        t.stat_evaluation_hours,
        "Febrile neutropenia: emergency assessment, blood cultures and empiric "
        "broad-spectrum antibiotics within 1 hour",
        SRC_STAT,
    )
    return True


def _row_1b(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 1b, presumed febrile neutropenia: fever, ANC unknown, and chemotherapy context or
    WBC < 1.0 — treat as neutropenic sepsis without waiting for the count."""
    if not (f.fever and f.anc_unknown):
        return False
    low_wbc = f.wbc is not None and f.wbc < t.presumed_fn_wbc_below
    if not (f.chemotherapy or low_wbc):
        return False
    why = []
    if f.chemotherapy:
        why.append("chemotherapy context: " + ", ".join(f.chemotherapy))
    if low_wbc:
        why.append(f"WBC {_fmt(f.wbc)} < {num(t.presumed_fn_wbc_below)}, so ANC < 1.0")
    d.c.find(
        "presumed-febrile-neutropenia",
        "Presumed febrile neutropenia: fever with the ANC unknown (" + "; ".join(why) + ")",
        SRC_PRESUMED_FN,
    )
    d.set(Row.PRESUMED_FEBRILE_NEUTROPENIA, Risk.HIGH, "presumed febrile neutropenia")
    d.evaluation(
        Priority.STAT,
        t.stat_evaluation_hours,
        "Presumed febrile neutropenia: treat as neutropenic sepsis without waiting for the "
        "count - emergency assessment, blood cultures and empiric antibiotics within 1 hour",
        SRC_PRESUMED_FN,
    )
    d.repeat(
        Priority.STAT,
        t.repeat_presumed_fn_start_d,
        t.repeat_presumed_fn_end_d,
        "Presumed febrile neutropenia with the ANC unknown",
        SRC_PRESUMED_FN,
    )
    return True


def _row_2(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 2, severe or profound neutropenia, afebrile: confirm within 24 h, smear, referral."""
    if f.decision_grade not in (NeutropeniaGrade.SEVERE, NeutropeniaGrade.PROFOUND):
        return False
    grade = f.decision_grade.value
    d.set(Row.SEVERE_AFEBRILE, Risk.HIGH, f"{grade} neutropenia without fever")
    ctx = f"{grade.capitalize()} neutropenia ({f.anc_desc})"
    d.repeat(
        Priority.ASAP,
        t.repeat_severe_start_d,
        t.repeat_severe_end_d,
        ctx + ", to be confirmed within 24 h",
        SRC_GRADE,
    )
    d.smear_and_referral(Priority.ASAP, ctx)
    return True


def _row_3(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 3, pancytopenia: repeat CBC within a week, smear, referral, B12 and folate."""
    if not f.pancytopenia:
        return False
    d.set(Row.PANCYTOPENIA, Risk.HIGH, "pancytopenia")
    ctx = "Pancytopenia, which suggests insufficient marrow production"
    d.repeat(
        Priority.ASAP, t.repeat_pancytopenia_start_d, t.repeat_pancytopenia_end_d, ctx, SRC_WORKUP
    )
    d.add(Action.PERIPHERAL_SMEAR, Priority.ASAP, ctx, SRC_WORKUP)
    d.add(Action.HAEMATOLOGY_REFERRAL, Priority.ASAP, ctx, SRC_WORKUP)
    d.b12_folate(Priority.ASAP, ctx)
    return True


def _row_4(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 4, moderate neutropenia: moderate risk (high on a high-risk medication)."""
    if f.decision_grade is not NeutropeniaGrade.MODERATE:
        return False
    risk = Risk.HIGH if f.high_risk_medication else Risk.MODERATE
    label = "moderate neutropenia" + (" on a high-risk medication" if f.medications else "")
    d.set(Row.MODERATE_NEUTROPENIA, risk, label)
    ctx = f"Moderate neutropenia ({f.anc_desc})"
    if f.clozapine:
        d.repeat(
            Priority.URGENT,
            t.repeat_clozapine_start_d,
            t.repeat_clozapine_end_d,
            ctx + " on clozapine",
            SRC_CLOZAPINE,
        )
    else:
        d.repeat(
            Priority.URGENT, t.repeat_moderate_start_d, t.repeat_moderate_end_d, ctx, SRC_WORKUP
        )
    d.smear_and_referral(Priority.URGENT, ctx)
    return True


def _row_5(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 5, documented Duffy-null with ANC >= 1.21, WBC >= 3.0 and no other concern."""
    if not (
        f.duffy_null
        and f.white_line  # a low count to explain; a normal count needs no row
        and f.anc is not None
        and f.anc >= t.duffy_null_anc_floor
        and f.wbc is not None
        and f.wbc >= t.wbc_red_flag
        and not f.fever
        and not (f.bicytopenia or f.pancytopenia)
        and not f.macrocytosis
        and not f.decline
        and not f.red_flags
    ):
        return False
    d.set(Row.DUFFY_NULL, Risk.LOW, "Duffy-null phenotype explains the count")
    d.reassuring = True
    d.c.hit(
        "duffy-null-no-workup",
        f"Documented Duffy-null phenotype with ANC {num(f.anc)} >= "
        f"{num(t.duffy_null_anc_floor)}, WBC >= {num(t.wbc_red_flag)} and no other concern: "
        "no smear, B12/folate, referral or urgent evaluation",
        SRC_DUFFY,
    )
    return True


def _row_6(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 6, leukopenia or mild neutropenia with fever: same-day evaluation."""
    if not (f.white_line and f.fever):
        return False
    d.set(Row.LOW_WITH_FEVER, Risk.MODERATE, f.white_words().lower() + " with fever")
    d.evaluation(
        Priority.URGENT,
        t.urgent_evaluation_hours,
        "Fever with a low white count may be a serious bacterial infection: same-day clinical "
        "evaluation",
        SRC_FEVER,
    )
    return True


def _row_7(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 7, leukopenia or mild neutropenia with a concern: repeat CBC and targeted work-up."""
    concerns = [
        (f"WBC {_fmt(f.wbc)} below {num(t.wbc_red_flag)}", f.wbc_below_3),
        ("bicytopenia", f.bicytopenia),
        ("macrocytosis", f.macrocytosis),
        ("progressive decline", bool(f.decline)),
        (
            "a red-flag condition (" + ", ".join(c.display for c in f.red_flags) + ")",
            bool(f.red_flags),
        ),
        ("a high-risk medication", f.high_risk_medication),
    ]
    reasons = [label for label, on in concerns if on]
    if not (f.white_line and reasons):
        return False
    d.set(Row.LOW_WITH_CONCERN, Risk.MODERATE, "low white count with a red flag")
    ctx = f"{f.white_words()} with " + ", ".join(reasons)
    if f.clozapine and f.decision_grade is NeutropeniaGrade.MILD:
        d.repeat(
            Priority.URGENT,
            t.repeat_clozapine_start_d,
            t.repeat_clozapine_end_d,
            ctx + " (mild neutropenia on clozapine)",
            SRC_CLOZAPINE,
        )
    else:
        d.repeat(Priority.ROUTINE, t.repeat_mild_start_d, t.repeat_mild_end_d, ctx, SRC_WORKUP)
    marrow = f.bicytopenia or f.macrocytosis or bool(f.decline)
    if f.wbc_below_3 or marrow or f.red_flags:
        d.add(Action.PERIPHERAL_SMEAR, Priority.ROUTINE, ctx, SRC_WORKUP)
    if marrow:
        d.b12_folate(Priority.ROUTINE, ctx)
    if f.bicytopenia or f.decline or f.red_flags:
        d.add(
            Action.HAEMATOLOGY_REFERRAL,
            Priority.ROUTINE,
            ctx,
            SRC_WORKUP,
            detail="haematology referral (an evolving marrow disorder is possible)",
        )
    return True


def _row_8(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 8, persistent neutropenia: B12, folate and smear; referral optional."""
    if not f.persistent:
        return False
    d.set(Row.PERSISTENT_NEUTROPENIA, Risk.MODERATE, "persistent neutropenia")
    d.b12_folate(Priority.ROUTINE, f.persistent)
    d.add(Action.PERIPHERAL_SMEAR, Priority.ROUTINE, f.persistent, SRC_WORKUP)
    d.add(Action.HAEMATOLOGY_REFERRAL, Priority.ROUTINE, f.persistent, SRC_WORKUP, optional=True)
    return True


def _row_9(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 9, stable chronic leukopenia with a normal ANC: reassuring, nothing to do."""
    if not (f.leukopenia and f.stable and f.grade is NeutropeniaGrade.NONE and not f.red_flags):
        return False
    d.set(Row.STABLE_CHRONIC_LEUKOPENIA, Risk.LOW, "stable chronic leukopenia")
    d.reassuring = True
    d.c.hit(
        "reassuring",
        "Stable counts over time with a normal ANC are reassuring: no action needed",
        SRC_WORKUP,
    )
    return True


def _row_10(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 10, leukopenia or mild neutropenia otherwise: a routine repeat CBC."""
    if not f.white_line:
        return False
    d.set(Row.LOW_OTHERWISE, Risk.LOW, f.white_words().lower())
    if f.child and f.recent_viral:
        start, end, source = t.repeat_child_viral_start_d, t.repeat_child_viral_end_d, SRC_LLN_CHILD
        ctx = "Child with a recent viral illness: transient post-viral leukopenia is likely"
    elif f.decision_grade is NeutropeniaGrade.MILD or f.anc_unknown:
        # Mild neutropenia: 1-2 weeks; with the ANC unknown the ANC-unknown rule narrows it.
        start, end, source = t.repeat_mild_start_d, t.repeat_mild_end_d, SRC_WORKUP
        ctx = f"{f.white_words()} ({f.anc_desc})"
    else:
        start, end, source = t.repeat_leukopenia_start_d, t.repeat_leukopenia_end_d, SRC_WORKUP
        ctx = "Mild leukopenia with a normal ANC, to confirm stability"
    d.repeat(Priority.ROUTINE, start, end, ctx, source)
    return True


def _row_11(f: Facts, d: _Decision, t: Thresholds) -> bool:
    """Row 11, no leukopenia and the ANC unknown: a normal count; nothing is proposed."""
    if not f.anc_unknown:
        return False
    d.set(Row.ANC_UNKNOWN_NORMAL_WBC, Risk.NEGLIGIBLE, "no leukopenia, ANC unknown")
    d.c.issues.append(
        DataIssue(
            "no-differential",
            "No differential in the latest CBC: the WBC is normal, so nothing is proposed",
            severity="information",
        )
    )
    return True


def _row_12(f: Facts, d: _Decision, t: Thresholds) -> bool:
    d.set(Row.NORMAL, Risk.NEGLIGIBLE, "normal")
    return True


#: Section 3, in order: the first row whose function returns True decides.
ROWS: tuple[Callable[[Facts, _Decision, Thresholds], bool], ...] = (
    _row_1,
    _row_1b,
    _row_2,
    _row_3,
    _row_4,
    _row_5,
    _row_6,
    _row_7,
    _row_8,
    _row_9,
    _row_10,
    _row_11,
    _row_12,
)


# --- Section 3a: modifiers on top of the first matching row ------------------------------------


def _modifiers(f: Facts, d: _Decision, t: Thresholds) -> None:
    cytopenia = f.white_line or f.anc_unknown or f.bicytopenia or f.pancytopenia
    if f.fever and cytopenia:
        # Rows 1, 1b (stat) and 6 (urgent) already ask for the evaluation.
        if d.row not in (
            Row.FEBRILE_NEUTROPENIA,
            Row.PRESUMED_FEBRILE_NEUTROPENIA,
            Row.LOW_WITH_FEVER,
        ):
            d.c.hit(
                "modifier-fever",
                "Fever with a cytopenia: urgent evaluation added, whatever the row",
                table("3a"),
            )
            what = "low white count" if f.white_line else "white count whose ANC is unknown"
            if f.pancytopenia:
                what = "pancytopenia"
            elif f.bicytopenia:
                what = "bicytopenia"
            d.evaluation(
                Priority.URGENT,
                t.urgent_evaluation_hours,
                f"Fever with a {what} may be a serious bacterial infection: same-day clinical "
                "evaluation",
                SRC_FEVER,
            )
        d.raise_risk(Risk.MODERATE, "fever with a cytopenia", table("3a"))
        if f.anc_unknown and d.row is not Row.PRESUMED_FEBRILE_NEUTROPENIA:
            # Fever with the ANC unknown: the differential is what rules febrile neutropenia
            # in or out, so it is asked for today, never later than without the fever.
            d.repeat(
                Priority.URGENT,
                0,
                1,
                "Fever with the ANC unknown: a differential rules febrile neutropenia in or out",
                SRC_FEVER,
            )
    if f.red_flags and f.white_line:
        ctx = (
            f"{f.white_words()} with a red-flag condition ("
            + ", ".join(c.display for c in f.red_flags)
            + ")"
        )
        d.add(Action.PERIPHERAL_SMEAR, Priority.ROUTINE, ctx, SRC_WORKUP)
        d.add(Action.HAEMATOLOGY_REFERRAL, Priority.ROUTINE, ctx, SRC_WORKUP)
        d.raise_risk(Risk.MODERATE, "a red-flag condition with a low white count", table("3a"))
        d.reassuring = False


def _anc_unknown_window(f: Facts, d: _Decision, t: Thresholds) -> None:
    """ANC unknown: a proposed repeat CBC is with differential within 0-7 d, and within
    0-2 d (asap) with WBC < 3.0, a red-flag condition or chemotherapy context."""
    if not f.anc_unknown:
        return
    concern = [
        label
        for label, on in (
            (f"WBC {_fmt(f.wbc)} < {num(t.wbc_red_flag)}", f.wbc_below_3),
            ("a red-flag condition", bool(f.red_flags)),
            ("chemotherapy context", bool(f.chemotherapy)),
        )
        if on
    ]
    cap = t.repeat_anc_unknown_concern_end_d if concern else t.repeat_anc_unknown_end_d
    floor = Priority.ASAP if concern else Priority.ROUTINE
    for i, rec in enumerate(d.recs):
        if rec.action is not Action.REPEAT_CBC:
            continue
        _, latest_end, _ = d.window(0, cap)
        if rec.end <= latest_end and rec.priority.rank >= floor.rank:
            continue
        why = "ANC unknown" + (" with " + ", ".join(concern) if concern else "")
        new = replace(
            rec,
            start=min(rec.start, d.c.now) if rec.end > latest_end else rec.start,
            end=min(rec.end, latest_end),
            priority=floor if floor.rank > rec.priority.rank else rec.priority,
            reason=f"{rec.reason}; {why}: a CBC with differential within 0-{cap} days",
        )
        d.recs[i] = new
        d.c.hit(
            "anc-unknown-window", f"{why}: repeat CBC within 0-{cap} days", table("3 (ANC unknown)")
        )


# --- The evaluation ----------------------------------------------------------------------------


def _assess(labs: PatientLabs, now: datetime, horizon: datetime, t: Thresholds) -> Assessment:
    c = _Ctx(labs, now, t, issues=list(labs.issues))
    results, conflict_issues, clean_trace = dedupe(labs.results)
    c.issues.extend(conflict_issues)
    c.trace.extend(clean_trace)
    draws, draw_trace, draw_issues = group_draws(results, t)
    c.trace.extend(draw_trace)
    c.issues.extend(draw_issues)
    # A result with a dataAbsentReason is not a result (1.1): the lab sent none, so it is
    # neither used nor "unusable"; the data issue still says so.
    unusable = tuple(
        i
        for i in c.issues
        if i.analyte in CBC_ANALYTES and i.code not in _USED_ANYWAY and i.severity != "information"
    )
    index = _index_draw(draws)
    # A temperature not coded as one is named only when it falls in the fever window, where
    # it could have been a fever the rules did not see.
    since = _fever_window_start(index.time, t) if index else None
    c.issues = [
        i
        for i in c.issues
        if i.code != "uncoded-temperature"
        or (since is not None and i.time is not None and since <= i.time <= horizon)
    ]
    if index is None:
        if unusable:
            return _not_assessable(c, draws, unusable)
        c.hit(
            "no-index-cbc", "No WBC, ANC or neutrophil % result: nothing to assess.", table("1.4")
        )
        return _normal(c, draws, unusable)

    c.hit(
        "index-cbc",
        f"Index CBC drawn {when(index.time)} ({', '.join(index.refs)})",
        table("1.4 (most recent draw with WBC, ANC or neutrophil %)"),
    )
    if index.anc is not None:
        if index.anc_derived:
            c.hit(
                "anc-derived",
                f"ANC {num(index.anc)} derived as WBC x (neutrophils % + bands %) / 100 "
                "from the same draw, rounded to 0.01",
                table("1.5"),
            )
        else:
            c.hit("anc-reported", f"ANC {num(index.anc)} reported", table("1.5"))
    else:
        c.hit(
            "anc-unknown",
            "ANC unknown: no ANC and no neutrophil % with WBC in the index draw",
            table("1.5"),
        )

    f = _findings(c, draws, index, horizon)
    if f.wbc is None and f.anc is None:
        # A neutrophil % alone says nothing about the count: not a normal result (1.8).
        return _not_assessable(c, draws, unusable)
    d = _Decision(c, f)
    for row in ROWS:
        if row(f, d, t):
            break
    _modifiers(f, d, t)
    _anc_unknown_window(f, d, t)
    if d.risk is Risk.NEGLIGIBLE and not d.recs:
        return _normal(c, draws, unusable, f, d.row)

    preliminary = index.preliminary
    if preliminary:
        c.find(
            "preliminary-data",
            "Based on preliminary results: confirm when final results are available",
            table("1.2"),
        )
    return Assessment(
        patient_id=labs.patient_id,
        now=now,
        risk=d.risk,
        row=d.row,
        headline=_headline(f, d),
        grade=f.grade,
        index_draw=index,
        wbc=f.wbc,
        wbc_lln=f.wbc_lln,
        anc_lln=f.anc_lln,
        findings=tuple(c.findings),
        recommendations=tuple(d.recs),
        not_proposed=tuple(d.not_proposed),
        medications=f.medications,
        conditions=f.explaining + tuple(x for x in labs.conditions if x.kind == "duffy-null"),
        mitigation=_mitigation(f, d),
        trace=tuple(c.trace),
        issues=tuple(c.issues),
        preliminary=preliminary,
        basis=_basis(f),
        draws=tuple(draws),
        decision_grade=f.decision_grade,
        unusable=unusable,
        hb_lln=f.hb_lln,
    )


def _basis(f: Facts) -> tuple[str, ...]:
    basis: list[str] = list(f.index.refs)
    if f.wbc_result is not None and f.wbc_result.ref not in basis:
        basis.append(f.wbc_result.ref)
    if f.decline or f.stable or f.persistent:
        for d in f.trend_draws:
            if d is not f.index:
                basis.extend(r for r in d.refs if r not in basis)
    return tuple(basis)


def _mitigation(f: Facts, d: _Decision) -> tuple[str, ...]:
    out: list[str] = []
    chemo_meds = [m.name for m in f.medications if m.antineoplastic]
    other_meds = [m.name for m in f.medications if not m.antineoplastic]
    if chemo_meds:
        # Neutropenia is an expected effect of cytotoxic treatment: the oncology protocol
        # (dose delay or reduction, growth factor) decides, not a generic "hold the drug".
        out.append(
            "On anticancer treatment (" + ", ".join(chemo_meds) + "): neutropenia is an "
            "expected effect - manage per the oncology protocol and tell the treating oncology "
            f"team ({cite(NICE_CG151, ASCO_IDSA_2018)})."
        )
    clozapine_advice = f.clozapine and f.decision_grade.rank >= NeutropeniaGrade.MODERATE.rank
    if clozapine_advice:
        # The label's monitoring table: moderate (ANC 0.5-0.99) and severe mean interrupt.
        out.append(
            "Clozapine: the label says to interrupt it for suspected clozapine-induced "
            "neutropenia at an ANC below 1.0, and to check the ANC daily until it is 1.0 or "
            f"more; plan this with the prescribing psychiatrist ({SRC_CLOZAPINE})."
        )
        other_meds = [m for m in other_meds if m != "clozapine"]
    if other_meds and f.decision_grade.rank >= NeutropeniaGrade.MODERATE.rank:
        out.append(
            "Suspected drug-induced neutropenia: consider holding or stopping "
            + ", ".join(other_meds)
            + f" now, with haematology advice ({cite(ANDERSOHN_2007)})."
        )
    elif other_meds:
        out.append("Review medications that lower white cells: " + ", ".join(other_meds) + ".")
    elif not chemo_meds and not clozapine_advice:
        out.append("Review medications for drugs that lower white cells.")
    if f.spleen_explained:
        out.append(
            "The recorded splenomegaly has a recorded cause (hypersplenism or portal "
            "hypertension), so it is not counted as a red flag."
        )
    if f.explaining:
        out.append(
            "Recorded conditions that can explain it: "
            + ", ".join(dict.fromkeys(cond.display for cond in f.explaining))
            + "."
        )
    if f.fever:
        out.append(
            "The patient already has a fever: do not wait for new symptoms "
            f"(fever with a low white count may be a serious bacterial infection; {SRC_FEVER})."
        )
    else:
        out.append(INFECTION_WARNING)
    return tuple(out)


def _index_draw(draws: Sequence[Draw]) -> Draw | None:
    for d in reversed(draws):
        if any(a in d.results for a in _WHITE_ANALYTES):
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


#: How far before the fever window a febrile reading is still named (never counted): a fever
#: a day or two before the CBC matters to whoever reads the count, even if the rule's window
#: has closed on it. Display only; the decision uses ``fever_lookback_hours``.
FEVER_MENTION_HOURS = 72.0


def _fever_just_before_the_window(
    c: _Ctx, temps: Sequence[Result], index_time: datetime, t: Thresholds
) -> None:
    since = _fever_window_start(index_time, t)
    earliest = index_time - timedelta(hours=max(FEVER_MENTION_HOURS, t.fever_lookback_hours))
    before = [r for r in temps if earliest <= r.time < since and r.value >= t.fever_sustained_c]
    if not before:
        return
    top = max(before, key=lambda r: (r.value, r.time))
    hours = (index_time - top.time) / timedelta(hours=1)
    c.issues.append(
        DataIssue(
            "fever-before-window",
            f"A temperature of {top.value:.1f} °C at {when(top.time)}, {hours:.0f} h before the "
            f"index CBC, is outside the {t.fever_lookback_hours:g} h fever window: not counted "
            "as fever",
            top.ref,
            "information",
        )
    )


def _fever_window_start(index_time: datetime, t: Thresholds) -> datetime:
    """Fever counts from this long before the index CBC (section 2, fever)."""
    return index_time - timedelta(hours=t.fever_lookback_hours)


def _fever(
    temps: Sequence[Result], index_time: datetime, horizon: datetime, t: Thresholds
) -> str | None:
    since = _fever_window_start(index_time, t)
    window = sorted((r for r in temps if since <= r.time <= horizon), key=lambda r: r.time)
    single = [r for r in window if r.value >= t.fever_single_c]
    if single:
        top = max(single, key=lambda r: r.value)
        return (
            f"Fever: {top.value:.1f} °C at {when(top.time)} (one reading >= "
            f"{t.fever_single_c:.1f} °C)"
        )
    high = [r for r in window if r.value >= t.fever_sustained_c]
    gap = timedelta(hours=t.fever_sustained_gap_hours)
    for i, a in enumerate(high):
        for b in high[i + 1 :]:
            if b.time - a.time >= gap:
                return (
                    f"Fever: {a.value:.1f} °C at {when(a.time)} and {b.value:.1f} °C at "
                    f"{when(b.time)} (two readings >= {t.fever_sustained_c:.1f} °C at least "
                    f"{t.fever_sustained_gap_hours:g} h apart)"
                )
    return None


def hb_lower_limit(
    sex: str | None, age_y: int | None, age_m: int | None, pregnant: bool, t: Thresholds
) -> tuple[float | None, str]:
    """The WHO 2011 haemoglobin limit (g/dL) for age, sex and pregnancy, and whom it is for;
    None under 6 months, where WHO gives none."""
    if age_m is not None and age_m < 6:
        return None, "under 6 months"
    if age_y is not None and age_y < 5:
        return t.hb_low_6m_to_4y, "6 months-4 y"
    if age_y is not None and age_y < 12:
        return t.hb_low_5_to_11y, "5-11 y"
    if age_y is not None and age_y < t.hb_adult_age_years:
        return t.hb_low_12_to_14y, f"12-{t.hb_adult_age_years - 1} y"
    if pregnant and sex != "male":
        return t.hb_low_pregnant, "pregnancy"
    if sex == "male":
        return t.hb_low_male, "male"
    return t.hb_low_female, "female" if sex == "female" else "sex unknown"


def _anaemia(index: Draw, limit: float | None, who: str) -> str | None:
    """WHO 2011 haemoglobin limits by age, sex and pregnancy."""
    hb = index.results.get(Analyte.HAEMOGLOBIN)
    if hb is None or limit is None:
        return None
    if hb.value < limit:
        return f"Anaemia: haemoglobin {hb.shown} g/dL (< {num(limit)}, {who})"
    return None


def _decline(values: Sequence[float], n: int, min_fall: float) -> list[float] | None:
    """The longest run of strictly falling values ending at the latest, when it has at
    least n values and falls by at least min_fall in all; else None."""
    if len(values) < n:
        return None
    run = [values[-1]]
    for v in reversed(values[:-1]):
        if v > run[0]:
            run.insert(0, v)
        else:
            break
    if len(run) >= n and run[0] - run[-1] >= min_fall - 1e-9:
        return run
    return None


def _stable(series: Sequence[tuple[datetime, float]], decline: bool, t: Thresholds) -> str | None:
    if decline or len(series) < t.stable_min_draws:
        return None
    span = (series[-1][0] - series[0][0]).days
    values = [v for _, v in series]
    if span >= t.stable_min_span_days and max(values) - min(values) <= t.stable_max_range:
        return (
            f"Stable: {len(values)} WBC draws over {span} days between "
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
    if span > t.persistent_min_span_days:
        return (
            f"Persistent neutropenia: ANC below {num(anc_lln)} on {len(run)} draws over "
            f"{span} days ({', '.join(num(a) for a in ancs)})"
        )
    return None


def _headline(f: Facts, d: _Decision) -> str:
    """One sentence, the most dangerous value first."""
    counts = f.counts
    grade = f.decision_grade.value
    text = {
        Row.FEBRILE_NEUTROPENIA: f"Febrile neutropenia ({counts}): emergency evaluation and "
        "antibiotics within 1 hour",
        Row.PRESUMED_FEBRILE_NEUTROPENIA: f"Presumed febrile neutropenia ({counts}): treat as "
        "neutropenic sepsis now, antibiotics within 1 hour",
        Row.SEVERE_AFEBRILE: f"{grade.capitalize()} neutropenia ({counts}): repeat CBC within "
        "24 h, smear and haematology referral",
        Row.PANCYTOPENIA: f"Pancytopenia ({counts}): urgent haematology work-up",
        Row.MODERATE_NEUTROPENIA: f"Moderate neutropenia ({counts}): repeat CBC, smear and "
        "haematology referral",
        Row.DUFFY_NULL: f"Low count explained by documented Duffy-null phenotype ({counts}): "
        "no work-up needed",
        Row.LOW_WITH_FEVER: f"{f.white_words()} with fever ({counts}): same-day evaluation",
        Row.LOW_WITH_CONCERN: f"{f.white_words()} with red flags ({counts}): repeat CBC and "
        "work-up",
        Row.PERSISTENT_NEUTROPENIA: f"Persistent neutropenia ({counts}): B12, folate and smear",
        Row.STABLE_CHRONIC_LEUKOPENIA: f"Stable chronic leukopenia ({counts}): reassuring, no "
        "action needed",
        Row.LOW_OTHERWISE: f"{f.white_words()} ({counts}): repeat CBC",
        Row.ANC_UNKNOWN_NORMAL_WBC: f"No leukopenia, ANC unknown ({counts})",
    }.get(d.row, f"{d.label} ({counts})")
    fever_added = f.fever and d.row not in (
        Row.FEBRILE_NEUTROPENIA,
        Row.PRESUMED_FEBRILE_NEUTROPENIA,
        Row.LOW_WITH_FEVER,
    )
    if fever_added:
        text = "FEVER - same-day evaluation. " + text
    if d.row in (Row.DUFFY_NULL, Row.STABLE_CHRONIC_LEUKOPENIA) and not d.reassuring:
        text = text.split(":")[0] + ": not reassuring with a red flag - smear and referral"
    return text


def _unusable_words(unusable: Sequence[DataIssue]) -> str:
    parts = []
    for i in unusable:
        label = ANALYTE_LABEL[i.analyte] if i.analyte is not None else "result"
        parts.append(f"{label} '{i.sent}'" if i.sent else label)
    return ", ".join(dict.fromkeys(parts))


def _not_assessable(c: _Ctx, draws: Sequence[Draw], unusable: tuple[DataIssue, ...]) -> Assessment:
    words = _unusable_words(unusable) or "no usable WBC or ANC"
    text = (
        f"Could not be assessed: CBC results were sent but the white count could not be used "
        f"({words}); check them - this is not a normal count"
    )
    c.hit("not-assessable", text, table("1.8 (unusable is not normal)"))
    return _without_finding(c, draws, unusable, Row.NOT_ASSESSABLE, text)


def _normal(
    c: _Ctx,
    draws: Sequence[Draw],
    unusable: tuple[DataIssue, ...],
    f: Facts | None = None,
    row: Row = Row.NORMAL,
) -> Assessment:
    headline = "No leukopenia or neutropenia"
    if f is None:
        headline = "No CBC result (WBC, ANC or neutrophil %) to assess"
    if row is Row.ANC_UNKNOWN_NORMAL_WBC:
        headline = "No leukopenia (WBC normal; no differential, so the ANC is unknown)"
    if unusable:
        # Never a normal headline over an unused value (1.6, 1.8): name it first.
        headline = (
            f"NOT USED: {_unusable_words(unusable)} - check these values; the usable results "
            f"show: {headline[0].lower()}{headline[1:]}"
        )
    return _without_finding(c, draws, unusable, row, headline, f)


def _without_finding(
    c: _Ctx,
    draws: Sequence[Draw],
    unusable: tuple[DataIssue, ...],
    row: Row,
    headline: str,
    f: Facts | None = None,
) -> Assessment:
    """A negligible (normal) or not-assessable assessment: nothing proposed."""
    index = f.index if f is not None else None
    grade = f.grade if f is not None else NeutropeniaGrade.UNKNOWN
    return Assessment(
        patient_id=c.labs.patient_id,
        now=c.now,
        risk=Risk.NEGLIGIBLE,
        row=row,
        headline=headline,
        grade=grade,
        decision_grade=grade,
        index_draw=index,
        wbc=f.wbc if f is not None else None,
        wbc_lln=f.wbc_lln if f is not None else None,
        anc_lln=f.anc_lln if f is not None else c.t.anc_lln_adult,
        hb_lln=f.hb_lln if f is not None else None,
        findings=tuple(c.findings) if unusable and row is not Row.NOT_ASSESSABLE else (),
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
        unusable=unusable,
    )


__all__ = ["assess", "Facts", "ROWS", "Medication", "ClinicalCondition"]

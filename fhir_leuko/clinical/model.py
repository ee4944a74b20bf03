"""Plain typed values the clinical core works on: no FHIR, no HTTP, no clock.

Ingest (``fhir_leuko.fhirio.ingest``) builds a :class:`PatientLabs` from FHIR JSON; the rules
(``fhir_leuko.clinical.rules``) turn it into an :class:`Assessment`; emit renders that as FHIR
and CDS Hooks cards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import NamedTuple


class Analyte(StrEnum):
    """What a result measures, decided from its LOINC code (never from the unit string)."""

    WBC = "wbc"
    ANC = "anc"
    NEUTROPHIL_PERCENT = "neutrophil-percent"
    BAND_PERCENT = "band-percent"
    BAND_COUNT = "band-count"
    LYMPHOCYTE_COUNT = "lymphocyte-count"
    LYMPHOCYTE_PERCENT = "lymphocyte-percent"
    HAEMOGLOBIN = "haemoglobin"
    PLATELETS = "platelets"
    MCV = "mcv"
    BODY_TEMPERATURE = "body-temperature"
    VITAMIN_B12 = "vitamin-b12"
    FOLATE = "folate"


#: Analytes that belong to a CBC draw (grouped by specimen / time).
CBC_ANALYTES = frozenset(
    {
        Analyte.WBC,
        Analyte.ANC,
        Analyte.NEUTROPHIL_PERCENT,
        Analyte.BAND_PERCENT,
        Analyte.BAND_COUNT,
        Analyte.LYMPHOCYTE_COUNT,
        Analyte.LYMPHOCYTE_PERCENT,
        Analyte.HAEMOGLOBIN,
        Analyte.PLATELETS,
        Analyte.MCV,
    }
)

#: Units the core works in, after ingest normalised them.
CANONICAL_UNITS: Mapping[Analyte, str] = {
    Analyte.WBC: "10*9/L",
    Analyte.ANC: "10*9/L",
    Analyte.NEUTROPHIL_PERCENT: "%",
    Analyte.BAND_PERCENT: "%",
    Analyte.BAND_COUNT: "10*9/L",
    Analyte.LYMPHOCYTE_COUNT: "10*9/L",
    Analyte.LYMPHOCYTE_PERCENT: "%",
    Analyte.HAEMOGLOBIN: "g/dL",
    Analyte.PLATELETS: "10*9/L",
    Analyte.MCV: "fL",
    Analyte.BODY_TEMPERATURE: "Cel",
    Analyte.VITAMIN_B12: "pg/mL",
    Analyte.FOLATE: "ng/mL",
}

#: Status precedence (clinical-rules.md 1.2): amended/corrected > final > preliminary.
STATUS_RANK: Mapping[str, int] = {"amended": 3, "corrected": 3, "final": 2, "preliminary": 1}


class Risk(StrEnum):
    """Codes of http://terminology.hl7.org/CodeSystem/risk-probability that we use."""

    NEGLIGIBLE = "negligible"
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RISK_RANK[self]


_RISK_RANK = {Risk.NEGLIGIBLE: 0, Risk.LOW: 1, Risk.MODERATE: 2, Risk.HIGH: 3}


class NeutropeniaGrade(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    PROFOUND = "profound"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """Severity order; UNKNOWN ranks with NONE (it is never taken as reassurance)."""
        return _GRADE_RANK[self]


_GRADE_RANK = {
    NeutropeniaGrade.NONE: 0,
    NeutropeniaGrade.UNKNOWN: 0,
    NeutropeniaGrade.MILD: 1,
    NeutropeniaGrade.MODERATE: 2,
    NeutropeniaGrade.SEVERE: 3,
    NeutropeniaGrade.PROFOUND: 4,
}


class Priority(StrEnum):
    """http://hl7.org/fhir/request-priority, in increasing urgency."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.ROUTINE: 0, Priority.URGENT: 1, Priority.ASAP: 2, Priority.STAT: 3}


class Action(StrEnum):
    """Codes of http://fhir-leuko.org/fhir/CodeSystem/leukopenia-action."""

    REPEAT_CBC = "repeat-cbc"
    VITAMIN_B12 = "vitamin-b12"
    FOLATE = "folate"
    PERIPHERAL_SMEAR = "peripheral-smear"
    HAEMATOLOGY_REFERRAL = "haematology-referral"
    URGENT_EVALUATION = "urgent-evaluation"


#: Words for analytes in clinician-facing text.
ANALYTE_LABEL: Mapping[Analyte, str] = {
    Analyte.WBC: "WBC",
    Analyte.ANC: "ANC",
    Analyte.NEUTROPHIL_PERCENT: "neutrophil %",
    Analyte.BAND_PERCENT: "band %",
    Analyte.BAND_COUNT: "band count",
    Analyte.LYMPHOCYTE_COUNT: "lymphocyte count",
    Analyte.LYMPHOCYTE_PERCENT: "lymphocyte %",
    Analyte.HAEMOGLOBIN: "haemoglobin",
    Analyte.PLATELETS: "platelets",
    Analyte.MCV: "MCV",
    Analyte.BODY_TEMPERATURE: "body temperature",
    Analyte.VITAMIN_B12: "vitamin B12",
    Analyte.FOLATE: "folate",
}

#: Words for actions (also the displays of the leukopenia-action CodeSystem).
ACTION_LABEL: Mapping[Action, str] = {
    Action.REPEAT_CBC: "Repeat CBC with differential",
    Action.VITAMIN_B12: "Vitamin B12 level",
    Action.FOLATE: "Folate level",
    Action.PERIPHERAL_SMEAR: "Peripheral blood smear review",
    Action.HAEMATOLOGY_REFERRAL: "Haematology referral",
    Action.URGENT_EVALUATION: "Urgent clinical evaluation",
}


class Row(StrEnum):
    """The rows of the decision table (section 3), as the rules page anchors them (row-1b)."""

    FEBRILE_NEUTROPENIA = "1"
    PRESUMED_FEBRILE_NEUTROPENIA = "1b"
    SEVERE_AFEBRILE = "2"
    PANCYTOPENIA = "3"
    MODERATE_NEUTROPENIA = "4"
    DUFFY_NULL = "5"
    LOW_WITH_FEVER = "6"
    LOW_WITH_CONCERN = "7"
    PERSISTENT_NEUTROPENIA = "8"
    STABLE_CHRONIC_LEUKOPENIA = "9"
    LOW_OTHERWISE = "10"
    ANC_UNKNOWN_NORMAL_WBC = "11"
    NORMAL = "12"
    # Decision table 1.8: CBC results were given but none could be used.
    NOT_ASSESSABLE = "not-assessable"


#: How counts are written for clinicians (10^9/L = 10^3/uL).
COUNT_UNIT = "×10⁹/L"


def num(v: float) -> str:
    """The one number formatter of all output: 4 -> '4.0', 1.207 -> '1.207', 150 -> '150'."""
    if abs(v) >= 100:
        return f"{v:.0f}"
    s = f"{v:.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def when(dt: datetime) -> str:
    """The one time formatter of all output: ``2026-03-04 06:10 UTC`` (in UTC, formatted by
    hand: strftime costs several µs a call)."""
    u = dt.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d} {u.hour:02d}:{u.minute:02d} UTC"


#: A comparator value ("<0.1") is read as a quantity just beside its bound (clinical-rules.md
#: 1.7: "<0.1" is just below 0.1): far below any rounding a clinician reads, so the bound is
#: what every text shows, while every "< threshold" test treats "<0.1" as below 0.1.
COMPARATOR_EPSILON = 1e-9


def comparator_value(bound: float, comparator: str | None) -> float:
    """The number a comparator quantity stands for: '<' just below, '>' just above."""
    if comparator == "<":
        return bound - COMPARATOR_EPSILON
    if comparator == ">":
        return bound + COMPARATOR_EPSILON
    return bound


class Result(NamedTuple):
    """One lab or vital-sign value, already in the canonical unit of its analyte.

    Immutable like the dataclasses here, but a NamedTuple: ingest builds one per value read
    (hundreds per hook call), and a frozen dataclass costs about three times as much to build.
    """

    analyte: Analyte
    value: float  # for a comparator quantity, comparator_value(bound, comparator)
    time: datetime  # timezone-aware
    ref: str  # "Observation/<id>" (or the entry's fullUrl when the resource has no id)
    status: str = "final"
    ref_low: float | None = None  # referenceRange.low, canonical unit
    draw_id: str | None = None  # specimen or DiagnosticReport reference shared by one draw
    comparator: str | None = None  # "<", "<=", ">", ">=" when the lab sent one (1.7)

    @property
    def preliminary(self) -> bool:
        return self.status == "preliminary"

    @property
    def shown(self) -> str:
        """The value as a clinician reads it: '<0.1', '1.2'."""
        return f"{self.comparator or ''}{num(self.value)}"


@dataclass(frozen=True, slots=True)
class Medication:
    """An active medication known to lower white cells (the high-risk list)."""

    name: str  # ingredient name, lower case
    ref: str
    matched_by: str  # e.g. "RxNorm ingredient 2626" or "name 'clozapine' in the text"
    antineoplastic: bool = False  # cytotoxic chemotherapy (ATC L01): chemotherapy context


@dataclass(frozen=True, slots=True)
class ClinicalCondition:
    """A recorded condition that explains or modifies a low count."""

    kind: str  # sle, rheumatoid-arthritis, viral-infection, hiv, hypersplenism, chemotherapy,
    #            alcohol-use, duffy-null, pregnancy, red-flag (display names which: splenomegaly,
    #            hepatomegaly, lymphadenopathy, weight loss, bleeding, recurrent infections)
    display: str
    ref: str
    matched_by: str
    onset: datetime | None = None


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An active or draft ServiceRequest for one of our actions."""

    action: Action
    priority: Priority
    ref: str


@dataclass(frozen=True, slots=True)
class DataIssue:
    """Something in the input we could not use; reported, never guessed around."""

    code: str  # unknown-unit, unit-conflict, unparseable-value, implausible-value, no-value, ...
    message: str  # one sentence naming the resource and what is wrong
    ref: str | None = None
    severity: str = "warning"  # OperationOutcome severity: information | warning | error
    # For a lab result that could not be used (or was read from text): what it measured and
    # its value as sent (e.g. "0.3 xyz", "<0.1"), so that the output can name an unusable
    # critical value instead of calling the count normal (clinical-rules.md 1.8).
    analyte: Analyte | None = None
    sent: str | None = None
    # When what it is about was observed, where that decides whether it matters (a temperature
    # not coded as one matters only in the fever window).
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PatientLabs:
    """Everything the rules read about one patient, FHIR-free."""

    patient_id: str | None = None
    birth_date: date | None = None
    sex: str | None = None  # administrative gender: male, female, other, unknown
    results: tuple[Result, ...] = ()
    medications: tuple[Medication, ...] = ()
    conditions: tuple[ClinicalCondition, ...] = ()
    open_orders: tuple[OpenOrder, ...] = ()
    issues: tuple[DataIssue, ...] = ()


@dataclass(frozen=True, slots=True)
class Draw:
    """One blood draw: results that share a specimen/report or an effective time (+-1 h)."""

    time: datetime
    results: Mapping[Analyte, Result] = field(hash=False)
    anc: float | None = None
    anc_derived: bool = False
    anc_refs: tuple[str, ...] = ()

    def value(self, analyte: Analyte) -> float | None:
        r = self.results.get(analyte)
        return None if r is None else r.value

    @property
    def preliminary(self) -> bool:
        return any(r.preliminary for r in self.results.values())

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(r.ref for r in self.results.values())


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  # leukopenia-finding code
    text: str  # clinician-readable sentence with the values
    source: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    action: Action
    priority: Priority
    start: datetime
    end: datetime
    reason: str
    source: str
    optional: bool = False  # offered, not required (e.g. referral for persistent neutropenia)


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that fired: the trace that cards, rationale and CLI text are rendered from."""

    rule: str
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Assessment:
    patient_id: str | None
    now: datetime
    risk: Risk
    row: Row  # the first matching row of the decision table (section 3)
    headline: str  # one sentence: the most dangerous value first
    grade: NeutropeniaGrade
    index_draw: Draw | None
    wbc: float | None
    wbc_lln: float | None
    anc_lln: float
    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    not_proposed: tuple[str, ...]  # what we chose not to propose, and why
    medications: tuple[Medication, ...]
    conditions: tuple[ClinicalCondition, ...]
    mitigation: tuple[str, ...]
    trace: tuple[RuleHit, ...]
    issues: tuple[DataIssue, ...]
    preliminary: bool
    basis: tuple[str, ...]  # references of the results used
    draws: tuple[Draw, ...] = ()
    # The grade the decision used: ``grade``, or when the ANC is unknown the grade a low WBC
    # proves (ANC <= WBC of the same draw).
    decision_grade: NeutropeniaGrade = NeutropeniaGrade.UNKNOWN
    # CBC values that were sent but could not be used (unknown unit, unreadable text, no
    # time, stamped > 24 h ahead): named in the output, never hidden under a normal headline.
    unusable: tuple[DataIssue, ...] = ()
    hb_lln: float | None = None  # the WHO 2011 haemoglobin limit that applied, g/dL

    @property
    def actionable(self) -> bool:
        """False for a normal CBC with nothing unusable: nothing is emitted, no card shown."""
        return self.risk is not Risk.NEGLIGIBLE or bool(self.unusable) or not self.assessable

    @property
    def assessable(self) -> bool:
        """False when CBC results were given but none could be used (decision table 1.8)."""
        return self.row is not Row.NOT_ASSESSABLE

    @property
    def finding_codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)

    @property
    def data_handling(self) -> tuple[str, ...]:
        """What cleaning did (superseded, duplicate, ignored results), for the record."""
        done = [h.text for h in self.trace if h.rule in ("status-precedence", "duplicate")]
        done += [i.message for i in self.issues if i.severity == "information"]
        return tuple(done)

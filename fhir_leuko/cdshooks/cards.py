"""Assessment -> CDS Hooks 2.0 cards, suggestions and system actions.

Everything shown is rendered from the assessment (findings, trace, recommendations, data
issues): no rule is evaluated here. Three things matter beyond the spec's shapes:

- Escaping. The public sandbox renders ``detail`` as Markdown with raw HTML allowed, so
  every string that did not come from this module (result references, medication text,
  data-issue messages quoting input) goes through :func:`md`.
- Deterministic uuids. Card and suggestion uuids are derived from the identifiers of the
  RiskAssessment and ServiceRequests, so feedback can be joined to what we proposed, and
  the same chart opened twice yields the same uuids.
- References across actions. A systemAction's ``urn:uuid`` cannot resolve inside a
  suggestion's action, so a ServiceRequest in a card points at the RiskAssessment by its
  logical ``identifier`` only.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fhir_leuko.cdshooks import models as m
from fhir_leuko.clinical.model import (
    Action,
    Analyte,
    Assessment,
    DataIssue,
    Draw,
    NeutropeniaGrade,
    Recommendation,
    Risk,
)
from fhir_leuko.fhirio import codes, emit
from fhir_leuko.markdown import md

JSON = dict[str, Any]
Indicator = Literal["info", "warning", "critical"]

#: fhir-leuko's namespace for card and suggestion uuids (uuid5).
_NS = uuid.UUID("4b0f3f52-6a3e-5f0e-9d2c-2f1e9a7c5b30")
OVERRIDE_SYSTEM = f"{codes.BASE}/CodeSystem/cds-override-reason"
SOURCE_LABEL = "fhir-leuko clinical rules"
INDICATOR: dict[Risk, Indicator] = {
    Risk.LOW: "info",
    Risk.MODERATE: "warning",
    Risk.HIGH: "critical",
}
_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}
_MAX_LISTED_ISSUES = 25  # a longer list names how many more, and the RiskAssessment has all

#: The finding that names a card's problem, most serious first (for ``source.topic``).
_TOPIC_ORDER = (
    "febrile-neutropenia",
    "neutropenia-profound",
    "neutropenia-severe",
    "pancytopenia",
    "neutropenia-moderate",
    "bicytopenia",
    "neutropenia-mild",
    "persistent",
    "leukopenia",
    "neutropenia-unknown",
)


def _reason(code: str, display: str) -> m.Coding:
    return m.Coding(system=OVERRIDE_SYSTEM, code=code, display=display)


ASSESSMENT_OVERRIDES = (
    _reason("already-addressed", "Already addressed or ordered elsewhere"),
    _reason(
        "known-explained", "Known and explained (e.g. chemotherapy, benign ethnic neutropenia)"
    ),
    _reason("result-questioned", "Result is wrong or outdated"),
    _reason("patient-declined", "Patient declined"),
    _reason("goals-of-care", "Not in line with the goals of care"),
)
MEDICATION_OVERRIDES = (
    _reason("benefit-outweighs-risk", "Benefit outweighs the risk"),
    _reason("monitoring-in-place", "Blood count monitoring is in place"),
    _reason("known-explained", "Low count known and explained otherwise"),
    _reason("result-questioned", "Result is wrong or outdated"),
)


@dataclass(frozen=True)
class SelectedDrug:
    """A selected draft order for a drug known to lower white cells (order-select)."""

    reference: str  # "MedicationRequest/<id>", as in context.selections
    ingredient: str  # name from codes.HIGH_RISK_*
    matched_by: str  # how ingest.match_medication matched it (may quote the order's text)


# --- Markdown ------------------------------------------------------------------------------------

#: For the rule sources and texts of our own rule table: a small, fixed vocabulary.
_md_rule_text = functools.lru_cache(maxsize=512)(md)


def _summary(text: str) -> str:
    """One line under 140 characters, cut at a word when longer."""
    s = " ".join(text.split())
    if len(s) < 140:
        return s
    cut = s[:138].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def _when(dt: datetime) -> str:
    """``2026-03-04 06:10 UTC`` (formatted by hand: strftime costs several µs a call)."""
    u = dt.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d} {u.hour:02d}:{u.minute:02d} UTC"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


# --- Identifiers -----------------------------------------------------------------------------


def card_uuid(service_id: str, kind: str, basis: str) -> str:
    """Deterministic card uuid: same service, kind of card and assessment -> same uuid."""
    return emit.uuid5(_NS, f"card|{service_id}|{kind}|{basis}")


def suggestion_uuid(service_id: str, identifiers: Iterable[str]) -> str:
    """Deterministic suggestion uuid from the identifiers of the resources it creates."""
    return emit.uuid5(_NS, f"suggestion|{service_id}|{'|'.join(sorted(identifiers))}")


def _identifier(resource: JSON) -> str:
    return str(resource["identifier"][0]["value"])


# --- Resources inside actions --------------------------------------------------------------------


def _for_action(resource: JSON) -> JSON:
    """A resource ready for a ``create`` action.

    Without ``id`` (the EHR assigns it on create), and with references to the
    RiskAssessment reduced to its logical identifier: the ``urn:uuid`` only resolves inside
    one Bundle, and each action stands alone.
    """
    out = {k: v for k, v in resource.items() if k != "id"}
    if "supportingInfo" in out:
        out["supportingInfo"] = [
            {k: v for k, v in ref.items() if k != "reference"}
            if str(ref.get("reference", "")).startswith("urn:uuid:")
            else ref
            for ref in out["supportingInfo"]
        ]
    return out


def _create(resource: JSON, description: str) -> m.Action:
    return m.Action(type="create", description=description, resource=_for_action(resource))


# --- Detail --------------------------------------------------------------------------------------

_VALUE_LABELS: tuple[tuple[Analyte, str, str], ...] = (
    (Analyte.WBC, "WBC", "x 10^9/L"),
    (Analyte.NEUTROPHIL_PERCENT, "Neutrophils", "%"),
    (Analyte.BAND_PERCENT, "Bands", "%"),
    (Analyte.LYMPHOCYTE_COUNT, "Lymphocytes", "x 10^9/L"),
    (Analyte.HAEMOGLOBIN, "Haemoglobin", "g/dL"),
    (Analyte.PLATELETS, "Platelets", "x 10^9/L"),
    (Analyte.MCV, "MCV", "fL"),
)


def _index_lines(a: Assessment) -> list[str]:
    d = a.index_draw
    if d is None:
        return ["No WBC, ANC or neutrophil % result in the data."]
    prelim = " **(preliminary)**" if d.preliminary else ""
    lines = [f"**Latest CBC** {_when(d.time)}{prelim}:", ""]
    anc = (
        "unknown"
        if d.anc is None
        else f"{d.anc:g} x 10^9/L"
        + (" (derived from WBC and differential)" if d.anc_derived else "")
    )
    values = [f"- ANC: {md(anc)}" + (f" (lower limit {a.anc_lln:g})" if d.anc is not None else "")]
    for analyte, label, unit in _VALUE_LABELS:
        v = d.value(analyte)
        if v is None:
            continue
        limit = f" (lower limit {a.wbc_lln:g})" if analyte is Analyte.WBC and a.wbc_lln else ""
        values.append(f"- {label}: {v:g} {md(unit)}{limit}")
    if d.value(Analyte.WBC) is None and a.wbc is not None:
        values.append(f"- WBC (latest available): {a.wbc:g} x 10^9/L")
    lines += values
    grade = a.grade.value if a.grade is not NeutropeniaGrade.UNKNOWN else "unknown (no ANC)"
    lines += ["", f"**Neutropenia grade:** {grade}"]
    return lines


def _trend_lines(draws: Sequence[Draw], limit: int = 6) -> list[str]:
    recent = [d for d in draws if d.value(Analyte.WBC) is not None or d.anc is not None][-limit:]
    if len(recent) < 2:
        return []
    rows = [
        "**Trend** (most recent first):",
        "",
        "| drawn | WBC | ANC | Hb | Platelets |",
        "|---|---|---|---|---|",
    ]
    for d in reversed(recent):
        anc = _num(d.anc) + ("\\*" if d.anc_derived and d.anc is not None else "")
        rows.append(
            f"| {_when(d.time)} | {_num(d.value(Analyte.WBC))} | {anc} | "
            f"{_num(d.value(Analyte.HAEMOGLOBIN))} | {_num(d.value(Analyte.PLATELETS))} |"
        )
    if any(d.anc_derived for d in recent):
        rows += ["", "\\* derived ANC"]
    return rows


def _issue_lines(issues: Sequence[DataIssue], heading: str) -> list[str]:
    if not issues:
        return []
    lines = ["", f"**{heading}**"]
    lines += [f"- {md(i.message)}" for i in issues[:_MAX_LISTED_ISSUES]]
    more = len(issues) - _MAX_LISTED_ISSUES
    if more > 0:
        lines.append(f"- and {more} more (listed in the RiskAssessment notes)")
    return lines


def _rec_line(rec: Recommendation) -> str:
    urgent = rec.action is Action.URGENT_EVALUATION
    window = (
        f"{_when(rec.start)} to {_when(rec.end)}"
        if urgent
        else f"{rec.start.date().isoformat()} to {rec.end.date().isoformat()}"
    )
    optional = ", optional" if rec.optional else ""
    return (
        f"- {codes.ACTION_DISPLAY[rec.action]} ({rec.priority.value}{optional}, {window}): "
        f"{md(rec.reason)} *[{_md_rule_text(rec.source)}]*"
    )


def _trend_and_findings(a: Assessment) -> list[str]:
    """The serial counts, then each finding with its source (Markdown lines)."""
    lines: list[str] = []
    trend = _trend_lines(a.draws)
    if trend:
        lines += ["", *trend]
    if a.findings:
        lines += ["", "**Findings**"]
        lines += [f"- {md(f.text)} *[{_md_rule_text(f.source)}]*" for f in a.findings]
    return lines


def assessment_detail(a: Assessment, rules_url: str) -> str:
    """The main card's Markdown: values, grade, trend, findings with sources, decision, orders,
    what was not proposed, medications, conditions, advice and the data that was not used."""
    lines = _index_lines(a)
    lines += _trend_and_findings(a)
    row = next((h for h in a.trace if h.rule.startswith("row-")), None)
    if row is not None:
        lines += ["", f"**Decision:** {_md_rule_text(row.text)} *[{_md_rule_text(row.source)}]*"]
    reassuring = [h for h in a.trace if h.rule in ("reassuring", "duffy-null-no-workup")]
    lines += [f"- {md(h.text)} *[{_md_rule_text(h.source)}]*" for h in reassuring]
    if a.recommendations:
        lines += ["", "**Suggested orders**"]
        lines += [_rec_line(r) for r in a.recommendations]
    if a.not_proposed:
        lines += ["", "**Not proposed**"]
        lines += [f"- {md(n)}" for n in a.not_proposed]
    if a.medications:
        lines += ["", "**Active medications known to lower white cells**"]
        lines += [
            f"- {md(x.name)} ({md(x.ref)}; matched by {md(x.matched_by)})" for x in a.medications
        ]
    if a.conditions:
        lines += ["", "**Recorded conditions that can explain it**"]
        lines += [f"- {md(c.display)} ({md(c.ref)})" for c in a.conditions]
    if a.mitigation:
        lines += ["", "**Advice**"]
        lines += [f"- {md(x)}" for x in a.mitigation]
    lines += _issue_lines(a.issues, "Data not used or not available")
    lines += ["", f"Rules and sources: [fhir-leuko clinical rules]({rules_url})"]
    return "\n".join(lines)


# --- Cards ---------------------------------------------------------------------------------------


def _source(rules_url: str, topic: str | None) -> m.Source:
    coding = (
        m.Coding(system=codes.FINDING_SYSTEM, code=topic, display=codes.FINDING_DISPLAY[topic])
        if topic is not None and topic in codes.FINDING_DISPLAY
        else None
    )
    return m.Source(label=SOURCE_LABEL, url=rules_url, topic=coding)


def _topic(a: Assessment) -> str | None:
    found = set(a.finding_codes)
    return next((c for c in _TOPIC_ORDER if c in found), a.findings[0].code if a.findings else None)


def _suggestions(
    a: Assessment, service_requests: Sequence[JSON], service_id: str
) -> list[m.Suggestion]:
    """One suggestion per ServiceRequest, vitamin B12 and folate together in one."""
    paired = list(zip(a.recommendations, service_requests, strict=True))
    vitamins = [(r, sr) for r, sr in paired if r.action in (Action.VITAMIN_B12, Action.FOLATE)]
    out: list[m.Suggestion] = []
    vitamins_done = False
    for rec, sr in paired:
        if rec.action in (Action.VITAMIN_B12, Action.FOLATE):
            if vitamins_done:
                continue
            vitamins_done = True
            group = vitamins
            names = " and ".join(codes.ACTION_DISPLAY[r.action] for r, _ in group)
            label = f"Order: {names}"
        else:
            group = [(rec, sr)]
            label = f"Order: {codes.ACTION_DISPLAY[rec.action]}"
        label += f" ({rec.priority.value})"
        out.append(
            m.Suggestion(
                label=label,
                uuid=suggestion_uuid(service_id, (_identifier(s) for _, s in group)),
                isRecommended=not all(r.optional for r, _ in group),
                actions=[
                    _create(
                        s,
                        f"Propose {codes.ACTION_DISPLAY[r.action]} "
                        f"(ServiceRequest, priority {r.priority.value})",
                    )
                    for r, s in group
                ],
            )
        )
    return out


def _assessment_card(
    a: Assessment, resources: Sequence[JSON], service_id: str, rules_url: str
) -> m.Card:
    ra, srs = resources[0], resources[1:]
    suggestions = _suggestions(a, srs, service_id) or None
    summary = a.headline if not a.preliminary else f"Preliminary: {a.headline}"
    return m.Card(
        uuid=card_uuid(service_id, "assessment", _identifier(ra)),
        summary=_summary(summary),
        detail=assessment_detail(a, rules_url),
        indicator=INDICATOR[a.risk],
        source=_source(rules_url, _topic(a)),
        suggestions=suggestions,
        selectionBehavior="any" if suggestions else None,
        overrideReasons=list(ASSESSMENT_OVERRIDES),
    )


def _medication_card(a: Assessment, ra: JSON, service_id: str, rules_url: str) -> m.Card:
    names = ", ".join(dict.fromkeys(x.name for x in a.medications))
    d = a.index_draw
    counts = f"WBC {_num(a.wbc)}, ANC {_num(d.anc if d else None)}"
    source = next((f.source for f in a.findings if f.code == "high-risk-medication"), "")
    lines = [f"The latest CBC ({counts} x 10^9/L) is low while the patient takes:", ""]
    lines += [f"- {md(x.name)} ({md(x.ref)}; matched by {md(x.matched_by)})" for x in a.medications]
    lines += ["", "Consider whether the drug causes the low count, and how often to monitor it."]
    if source:
        lines += ["", f"*[{_md_rule_text(source)}]*"]
    lines += ["", f"Rules and sources: [fhir-leuko clinical rules]({rules_url})"]
    return m.Card(
        uuid=card_uuid(service_id, "medication", _identifier(ra)),
        summary=_summary(f"Review {names}: can lower white cells ({counts})"),
        detail="\n".join(lines),
        indicator="warning" if a.risk.rank >= Risk.MODERATE.rank else "info",
        source=_source(rules_url, "high-risk-medication"),
        overrideReasons=list(MEDICATION_OVERRIDES),
    )


def unusable_results(a: Assessment) -> tuple[DataIssue, ...]:
    """Issues that name a result we could not use: a normal verdict cannot rule them out."""
    return tuple(i for i in a.issues if i.ref is not None and i.severity != "information")


def _data_card(
    a: Assessment, issues: Sequence[DataIssue], service_id: str, rules_url: str
) -> m.Card:
    n = len(issues)
    if not a.assessable:
        lines = [md(a.headline) + ".", "", "These results could not be used:"]
        summary = "Could not be assessed: the white count could not be used - check the results"
    else:
        lines = [
            "The results that could be read show no leukopenia or neutropenia, but these "
            "could not be used:"
        ]
        summary = (
            f"No leukopenia in the readable results, but {n} lab result{'s' if n > 1 else ''} "
            "could not be used"
        )
    lines += _issue_lines(issues, "Data not used")[1:]
    lines += ["", f"Rules and sources: [fhir-leuko clinical rules]({rules_url})"]
    return m.Card(
        uuid=card_uuid(service_id, "data", emit.risk_assessment_identifier(a)),
        summary=_summary(summary),
        detail="\n".join(lines),
        indicator="info",
        source=_source(rules_url, None),
        overrideReasons=list(ASSESSMENT_OVERRIDES[2:3]),
    )


def _ordered(cards: Iterable[m.Card]) -> list[m.Card]:
    """Most severe first; stable, so the main problem leads among equals."""
    return sorted(cards, key=lambda c: _INDICATOR_RANK[c.indicator])


def patient_view_response(a: Assessment, *, service_id: str, rules_url: str) -> m.CdsResponse:
    """Cards for patient-view: one per distinct problem, the RiskAssessment as a system action.

    No leukopenia or neutropenia -> no cards, unless results could not be read: then one
    info card says which, because the normal verdict does not cover them.
    """
    if a.risk is Risk.NEGLIGIBLE:
        # Normal, or not assessable (decision table 1.8): a card only to name what could
        # not be used, because a normal verdict does not cover it.
        issues = a.unusable or unusable_results(a)
        if not issues and a.assessable:
            return m.CdsResponse(cards=[])
        return m.CdsResponse(cards=[_data_card(a, issues, service_id, rules_url)])
    resources = emit.resources(a)
    ra = resources[0]
    cards = [_assessment_card(a, resources, service_id, rules_url)]
    if a.medications:
        cards.append(_medication_card(a, ra, service_id, rules_url))
    return m.CdsResponse(
        cards=_ordered(cards),
        systemActions=[_create(ra, "Record the leukopenia / neutropenia RiskAssessment")],
    )


# --- order-select --------------------------------------------------------------------------------

_NEUTROPENIA_FINDINGS = frozenset(
    {
        "neutropenia-mild",
        "neutropenia-moderate",
        "neutropenia-severe",
        "neutropenia-profound",
        "febrile-neutropenia",
    }
)


def shows_neutropenia(a: Assessment) -> bool:
    """The latest CBC shows neutropenia: a graded ANC, or a WBC that proves one."""
    return bool(_NEUTROPENIA_FINDINGS & set(a.finding_codes)) or any(
        h.rule == "anc-bounded-by-wbc" for h in a.trace
    )


def medication_check_response(
    a: Assessment, drugs: Sequence[SelectedDrug], *, service_id: str, rules_url: str
) -> m.CdsResponse:
    """One warning per selected drug that lowers white cells, when the latest CBC is neutropenic.

    ``a`` is the evaluation with the selected drugs counted as active, so the risk already
    reflects them (decision rows 4 and 7).
    """
    if not drugs or not shows_neutropenia(a) or a.index_draw is None:
        return m.CdsResponse(cards=[])
    d = a.index_draw
    anc = "unknown" if d.anc is None else f"{d.anc:g}" + (" (derived)" if d.anc_derived else "")
    counts = f"ANC {anc}, WBC {_num(d.value(Analyte.WBC) or a.wbc)} on {d.time.date().isoformat()}"
    grade = a.grade.value if a.grade is not NeutropeniaGrade.UNKNOWN else "unknown-grade"
    basis = emit.risk_assessment_identifier(a)
    cards: list[m.Card] = []
    for drug in drugs:
        lines = [
            f"**{md(drug.ingredient)}** is known to lower white cells, and the latest CBC shows "
            f"{grade} neutropenia ({md(counts)}, x 10^9/L).",
            "",
            f"Selected order: {md(drug.reference)} (matched by {md(drug.matched_by)}).",
            "",
            f"**Risk with this drug:** {a.risk.value}. {md(a.headline)}",
        ]
        lines += _trend_and_findings(a)
        lines += _issue_lines(a.issues, "Data not used or not available")
        lines += ["", f"Rules and sources: [fhir-leuko clinical rules]({rules_url})"]
        remove = m.Suggestion(
            label=f"Remove {drug.ingredient} from this order session",
            uuid=suggestion_uuid(service_id, (basis, "delete", drug.reference)),
            actions=[
                m.Action(
                    type="delete",
                    description=f"Remove the draft order {drug.reference}",
                    resourceId=drug.reference,
                )
            ],
        )
        cards.append(
            m.Card(
                uuid=card_uuid(service_id, f"medication|{drug.reference}", basis),
                summary=_summary(
                    f"{drug.ingredient.capitalize()} with {grade} neutropenia ({counts})"
                ),
                detail="\n".join(lines),
                indicator="critical" if a.risk is Risk.HIGH else "warning",
                source=_source(rules_url, "high-risk-medication"),
                suggestions=[remove],
                selectionBehavior="at-most-one",
                overrideReasons=list(MEDICATION_OVERRIDES),
            )
        )
    return m.CdsResponse(cards=_ordered(cards))

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir_leuko.cdshooks import models as m
from fhir_leuko.clinical.model import (
    Action,
    Analyte,
    Assessment,
    DataIssue,
    NeutropeniaGrade,
    Recommendation,
    Risk,
    RuleHit,
    num,
    when,
)
from fhir_leuko.clinical.references import BY_SHORT, row_anchor
from fhir_leuko.fhirio import codes, emit
from fhir_leuko.markdown import md
from fhir_leuko.render import COUNT_UNIT, display_units, window

JSON = dict[str, Any]
Indicator = Literal["info", "warning", "critical"]

#: fhir-leuko's namespace for card and suggestion uuids (uuid5).
_NS = uuid.UUID("4b0f3f52-6a3e-5f0e-9d2c-2f1e9a7c5b30")
OVERRIDE_SYSTEM = f"{codes.BASE}/CodeSystem/cds-override-reason"
INDICATOR: dict[Risk, Indicator] = {
    Risk.LOW: "info",
    Risk.MODERATE: "warning",
    Risk.HIGH: "critical",
}
_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}
_MAX_LISTED_ISSUES = 25  # a longer list names how many more, and the RiskAssessment has all


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


def _num(v: float | None) -> str:
    return "–" if v is None else num(v)


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


# --- Links ---------------------------------------------------------------------------------------

#: The decision table's rows as a code system: ``source.topic`` names the row that decided.
ROW_SYSTEM = f"{codes.BASE}/CodeSystem/decision-table-row"
APP_LABEL = "CBC trend and assessment (fhir-leuko)"


@dataclass(frozen=True)
class CardLinks:
    """Where cards point: the decision table page and the trend app, on this service.

    ``base`` is the service's public URL (no trailing slash); ``row_titles`` the headings of
    the table's rows ("4" -> "Row 4 — moderate neutropenia"), from the rules page.
    """

    base: str
    row_titles: Mapping[str, str] = field(default_factory=dict)

    @property
    def rules(self) -> str:
        return f"{self.base}/rules"

    def row(self, row: object) -> str:
        return f"{self.rules}#{row_anchor(str(row))}"

    @property
    def app(self) -> str:
        """The SMART launch URL of the trend app (the EHR adds ``iss`` and ``launch``)."""
        return f"{self.base}/app/"

    def row_title(self, row: object) -> str:
        return self.row_titles.get(str(row), f"Row {row}")


@functools.lru_cache(maxsize=2048)
def cite(source: str, rules: str) -> str:
    """A source string ("IDSA 2010; CTCAE v5.0") as Markdown, each known reference linked to
    its entry on the rules page; anything else is shown as escaped text."""
    parts = []
    for name in (p.strip() for p in source.split(";")):
        if not name:
            continue
        ref = BY_SHORT.get(name)
        parts.append(
            f"[{md(name)}]({rules}#{ref.anchor})" if ref is not None else md(display_units(name))
        )
    return "; ".join(parts)


def _cited(text: str, source: str, links: CardLinks) -> str:
    return f"{md(display_units(text))} *({cite(source, links.rules)})*"


def _reference_names(sources: Iterable[str]) -> list[str]:
    """The known references among ``sources``, each once, in order."""
    names = (p.strip() for s in sources for p in s.split(";"))
    return list(dict.fromkeys(n for n in names if n in BY_SHORT))


def _row_hit(a: Assessment) -> RuleHit | None:
    return next((h for h in a.trace if h.rule.startswith("row-")), None)


def _source(a: Assessment, links: CardLinks, sources: Iterable[str] = ()) -> m.Source:
    """The row that decided, as ``url`` and ``topic``; the label names it and its references."""
    title = links.row_title(a.row)
    row = _row_hit(a)
    refs = _reference_names([*(s for s in sources), *((row.source,) if row else ())])
    label = f"fhir-leuko decision table, {title}"
    if refs:
        label += f" ({'; '.join(refs)})"
    return m.Source(
        label=label,
        url=links.row(a.row),
        topic=m.Coding(system=ROW_SYSTEM, code=str(a.row), display=title),
    )


def _app_links(links: CardLinks) -> list[m.Link]:
    return [m.Link(label=APP_LABEL, url=links.app, type="smart")]


def _footer(a: Assessment, links: CardLinks) -> list[str]:
    return [
        "",
        f"The counts over time are in *{APP_LABEL}*. "
        f"Rule: [{md(links.row_title(a.row))}]({links.row(a.row)}) of the "
        f"[decision table]({links.rules}).",
    ]


# --- Detail --------------------------------------------------------------------------------------

_VALUE_LABELS: tuple[tuple[Analyte, str, str], ...] = (
    (Analyte.WBC, "WBC", COUNT_UNIT),
    (Analyte.HAEMOGLOBIN, "Hb", "g/dL"),
    (Analyte.PLATELETS, "platelets", COUNT_UNIT),
    (Analyte.MCV, "MCV", "fL"),
)
_MAX_CARD_ISSUES = 5  # the card names a few; the RiskAssessment notes have them all


def _index_lines(a: Assessment) -> list[str]:
    d = a.index_draw
    if d is None:
        return ["No WBC, ANC or neutrophil % result in the data."]
    prelim = " **(preliminary)**" if d.preliminary else ""
    anc = (
        "ANC unknown"
        if d.anc is None
        else f"ANC {num(d.anc)} {COUNT_UNIT}"
        + (" (derived)" if d.anc_derived else "")
        + f" (lower limit {num(a.anc_lln)})"
    )
    values = [anc]
    for analyte, label, unit in _VALUE_LABELS:
        v = d.value(analyte)
        if v is None:
            continue
        limit = f" (lower limit {num(a.wbc_lln)})" if analyte is Analyte.WBC and a.wbc_lln else ""
        values.append(f"{label} {num(v)} {unit}{limit}")
    if d.value(Analyte.WBC) is None and a.wbc is not None:
        values.append(f"WBC (latest available) {num(a.wbc)} {COUNT_UNIT}")
    grade = a.grade.value if a.grade is not NeutropeniaGrade.UNKNOWN else "unknown (no ANC)"
    return [
        f"**Latest CBC** {when(d.time)}{prelim}: {', '.join(values)}. "
        f"**Neutropenia grade:** {grade}."
    ]


def _issue_lines(
    issues: Sequence[DataIssue], heading: str, limit: int = _MAX_CARD_ISSUES
) -> list[str]:
    if not issues:
        return []
    lines = ["", f"**{heading}**"]
    lines += [f"- {md(display_units(i.message))}" for i in issues[:limit]]
    more = len(issues) - limit
    if more > 0:
        lines.append(f"- and {more} more (listed in the RiskAssessment notes)")
    return lines


def _rec_line(rec: Recommendation, a: Assessment, links: CardLinks) -> str:
    optional = ", optional" if rec.optional else ""
    return (
        f"- {codes.ACTION_DISPLAY[rec.action]} ({rec.priority.value}{optional}, "
        f"{window(rec, a.now)}): {_cited(rec.reason, rec.source, links)}"
    )


def _findings(a: Assessment, links: CardLinks, skip: frozenset[str] = frozenset()) -> list[str]:
    shown = [f for f in a.findings if f.code not in skip]
    if not shown:
        return []
    return ["", "**Findings**", *(f"- {_cited(f.text, f.source, links)}" for f in shown)]


def _medication_lines(a: Assessment) -> list[str]:
    return [f"- {md(x.name)} ({md(x.ref)}; matched by {md(x.matched_by)})" for x in a.medications]


def assessment_detail(a: Assessment, links: CardLinks) -> str:
    """The main card's Markdown, kept short: the index values and grade, findings, the
    decision, orders, medications, conditions, advice and the data that was not used. The
    counts over time are in the trend app, linked from the card."""
    lines = _index_lines(a)
    lines += _findings(a, links)
    row = _row_hit(a)
    if row is not None:
        lines += ["", f"**Decision:** {_cited(row.text, row.source, links)}"]
    reassuring = [h for h in a.trace if h.rule in ("reassuring", "duffy-null-no-workup")]
    lines += [f"- {_cited(h.text, h.source, links)}" for h in reassuring]
    if a.recommendations:
        lines += ["", "**Suggested orders**"]
        lines += [_rec_line(r, a, links) for r in a.recommendations]
    if a.not_proposed:
        lines += ["", "**Not proposed**"]
        lines += [f"- {md(display_units(n))}" for n in a.not_proposed]
    if a.medications:
        lines += ["", "**Active medications known to lower white cells**", *_medication_lines(a)]
    if a.conditions:
        lines += ["", "**Recorded conditions that can explain it**"]
        lines += [f"- {md(c.display)} ({md(c.ref)})" for c in a.conditions]
    if a.mitigation:
        lines += ["", "**Advice**"]
        lines += [f"- {md(display_units(x))}" for x in a.mitigation]
    lines += _issue_lines(a.issues, "Data not used or not available")
    lines += _footer(a, links)
    return "\n".join(lines)


# --- Cards ---------------------------------------------------------------------------------------


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
    a: Assessment, resources: Sequence[JSON], service_id: str, links: CardLinks
) -> m.Card:
    ra, srs = resources[0], resources[1:]
    suggestions = _suggestions(a, srs, service_id) or None
    summary = a.headline if not a.preliminary else f"Preliminary: {a.headline}"
    return m.Card(
        uuid=card_uuid(service_id, "assessment", _identifier(ra)),
        summary=_summary(display_units(summary)),
        detail=assessment_detail(a, links),
        indicator=INDICATOR[a.risk],
        source=_source(a, links, (f.source for f in a.findings)),
        suggestions=suggestions,
        selectionBehavior="any" if suggestions else None,
        overrideReasons=list(ASSESSMENT_OVERRIDES),
        links=_app_links(links),
    )


def _drug_advice(antineoplastic: bool, name: str) -> str:
    if antineoplastic:
        return (
            f"Neutropenia is an expected effect of {md(name)}: manage the count as the "
            "oncology protocol says (dose delay or reduction, growth factor support), and "
            "treat fever as an emergency."
        )
    return "Consider whether the drug causes the low count, and how often to monitor it."


def _medication_card(a: Assessment, ra: JSON, service_id: str, links: CardLinks) -> m.Card:
    names = ", ".join(dict.fromkeys(x.name for x in a.medications))
    d = a.index_draw
    counts = f"WBC {_num(a.wbc)}, ANC {_num(d.anc if d else None)}"
    source = next((f.source for f in a.findings if f.code == "high-risk-medication"), "")
    lines = [f"The latest CBC ({counts} {COUNT_UNIT}) is low while the patient takes:", ""]
    lines += _medication_lines(a)
    lines += [""]
    chemo = [x for x in a.medications if x.antineoplastic]
    if chemo:
        lines.append(_drug_advice(True, ", ".join(dict.fromkeys(x.name for x in chemo))))
    if len(chemo) < len(a.medications):
        lines.append(_drug_advice(False, names))
    if source:
        lines += ["", f"*({cite(source, links.rules)})*"]
    lines += _footer(a, links)
    return m.Card(
        uuid=card_uuid(service_id, "medication", _identifier(ra)),
        summary=_summary(f"Review {names}: can lower white cells ({counts})"),
        detail="\n".join(lines),
        indicator="warning" if a.risk.rank >= Risk.MODERATE.rank else "info",
        source=_source(a, links, (source,)),
        overrideReasons=list(MEDICATION_OVERRIDES),
        links=_app_links(links),
    )


def unusable_results(a: Assessment) -> tuple[DataIssue, ...]:
    """Issues that name a result we could not use: a normal verdict cannot rule them out."""
    return tuple(i for i in a.issues if i.ref is not None and i.severity != "information")


def _data_card(
    a: Assessment, issues: Sequence[DataIssue], service_id: str, links: CardLinks
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
    lines += _issue_lines(issues, "Data not used", limit=_MAX_LISTED_ISSUES)[1:]
    lines += _footer(a, links)
    return m.Card(
        uuid=card_uuid(service_id, "data", emit.risk_assessment_identifier(a)),
        summary=_summary(summary),
        detail="\n".join(lines),
        indicator="info",
        source=_source(a, links),
        overrideReasons=list(ASSESSMENT_OVERRIDES[2:3]),
        links=_app_links(links),
    )


def _ordered(cards: Iterable[m.Card]) -> list[m.Card]:
    """Most severe first; stable, so the main problem leads among equals."""
    return sorted(cards, key=lambda c: _INDICATOR_RANK[c.indicator])


def patient_view_response(a: Assessment, *, service_id: str, links: CardLinks) -> m.CdsResponse:
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
        return m.CdsResponse(cards=[_data_card(a, issues, service_id, links)])
    resources = emit.resources(a)
    ra = resources[0]
    cards = [_assessment_card(a, resources, service_id, links)]
    if a.medications:
        cards.append(_medication_card(a, ra, service_id, links))
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
#: Findings the order-select card says in its own words: the drug is the order being signed.
_SAID_BY_ORDER_CARD = frozenset({"high-risk-medication"})


def shows_neutropenia(a: Assessment) -> bool:
    """The latest CBC shows neutropenia: a graded ANC, or a WBC that proves one."""
    return bool(_NEUTROPENIA_FINDINGS & set(a.finding_codes)) or any(
        h.rule == "anc-bounded-by-wbc" for h in a.trace
    )


def medication_check_response(
    a: Assessment, drugs: Sequence[SelectedDrug], *, service_id: str, links: CardLinks
) -> m.CdsResponse:
    """One warning per selected drug that lowers white cells, when the latest CBC is neutropenic.

    ``a`` is the evaluation with the selected drugs counted as active, so the risk already
    reflects them (decision rows 4 and 7). The card calls the drug "the order being signed":
    it is a draft, not yet a medication the patient takes.
    """
    if not drugs or not shows_neutropenia(a) or a.index_draw is None:
        return m.CdsResponse(cards=[])
    d = a.index_draw
    anc = "unknown" if d.anc is None else num(d.anc) + (" (derived)" if d.anc_derived else "")
    counts = f"ANC {anc}, WBC {_num(d.value(Analyte.WBC) or a.wbc)} on {d.time.date().isoformat()}"
    grade = a.grade.value if a.grade is not NeutropeniaGrade.UNKNOWN else "unknown-grade"
    basis = emit.risk_assessment_identifier(a)
    drug_source = next((f.source for f in a.findings if f.code == "high-risk-medication"), "")
    signed = {x.ref: x for x in a.medications}
    others = [x for x in a.medications if x.ref not in {dr.reference for dr in drugs}]
    cards: list[m.Card] = []
    for drug in drugs:
        taken = signed.get(drug.reference)
        chemo = taken is not None and taken.antineoplastic
        lines = [
            f"The order being signed, **{md(drug.ingredient)}** ({md(drug.reference)}; matched "
            f"by {md(drug.matched_by)}), is known to lower white cells, and the latest CBC "
            f"shows {grade} neutropenia ({md(counts)}, {COUNT_UNIT}).",
            "",
            _drug_advice(chemo, drug.ingredient)
            if chemo
            else "Weigh signing it against the low count: another drug, or a plan for how often "
            "to check the count while on it.",
            "",
            f"**Risk with this order:** {a.risk.value}. {md(display_units(a.headline))}",
        ]
        if drug_source:
            lines[0] += f" *({cite(drug_source, links.rules)})*"
        lines += _findings(a, links, skip=_SAID_BY_ORDER_CARD)
        if others:
            lines += ["", "**Active medications known to lower white cells**"]
            lines += [
                f"- {md(x.name)} ({md(x.ref)}; matched by {md(x.matched_by)})" for x in others
            ]
        lines += _issue_lines(a.issues, "Data not used or not available")
        lines += _footer(a, links)
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
                source=_source(a, links, (drug_source,)),
                suggestions=[remove],
                selectionBehavior="at-most-one",
                overrideReasons=list(MEDICATION_OVERRIDES),
                links=_app_links(links),
            )
        )
    return m.CdsResponse(cards=_ordered(cards))

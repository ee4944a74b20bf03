"""Clinician-readable text of an Assessment (CLI ``--format text``), rendered from its trace.

Also the small pieces every human-readable output shares (cards, this report, the HTML
report, the trend app): how units and order windows are written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fhir_leuko.clinical.model import Action, Analyte, Assessment, Recommendation, num, when
from fhir_leuko.fhirio.codes import ACTION_DISPLAY
from fhir_leuko.logs import escape

#: How a count's unit is printed: ×10⁹/L (10^3/µL is the same number).
COUNT_UNIT = "×10⁹/L"
_COUNT_UNIT_TEXT = re.compile(
    r"(?:[x×X][ \t]?)?10[ \t]?(?:\^|\*|\*\*)[ \t]?(?:9[ \t]?/[ \t]?L|3[ \t]?/[ \t]?[uµμ]L)"
)


def _unit(m: re.Match[str]) -> str:
    before = m.string[m.start() - 1] if m.start() else " "
    return (" " if before.isalnum() or before in ".)" else "") + COUNT_UNIT


#: The common spellings, replaced without the regex (a card renders a dozen texts per call).
_COMMON_COUNT_UNITS = tuple((f" {x}", f" {COUNT_UNIT}") for x in ("x 10^9/L", "x10^9/L"))


def display_units(text: str) -> str:
    """``3.4 x 10^9/L``, ``10*3/uL``, ``x10^9/L`` -> ``3.4 ×10⁹/L``: one way to write a count."""
    if "10^" not in text and "10*" not in text:
        return text
    for raw, shown in _COMMON_COUNT_UNITS:
        if raw in text:
            text = text.replace(raw, shown)
    if "10^" not in text and "10*" not in text:
        return text
    return _COUNT_UNIT_TEXT.sub(_unit, text)


def window(rec: Recommendation, now: datetime) -> str:
    """When an order is due, never starting in the past: windows count from the index CBC,
    which may be days old, so a start before ``now`` is shown as today (or now)."""
    if rec.action is Action.URGENT_EVALUATION:
        return f"now, by {when(rec.end)}" if rec.end > now else "now"
    today = now.astimezone(UTC).date()
    start, end = rec.start.astimezone(UTC).date(), rec.end.astimezone(UTC).date()
    if end < today:
        return f"now (it was due by {end.isoformat()})"
    return f"{max(start, today).isoformat()} to {end.isoformat()}"


_INDICATOR = {"negligible": "normal", "low": "info", "moderate": "WARNING", "high": "CRITICAL"}


def text_report(a: Assessment) -> str:
    lines: list[str] = []
    who = f"Patient/{a.patient_id}" if a.patient_id else "Patient (not identified)"
    lines.append(f"fhir-leuko assessment for {who} at {a.now.isoformat()}")
    lines.append("")
    if a.index_draw is None:
        lines.append("No WBC, ANC or neutrophil % result to assess.")
    else:
        d = a.index_draw
        vals = []
        for analyte, label, unit in (
            (Analyte.WBC, "WBC", COUNT_UNIT),
            (Analyte.NEUTROPHIL_PERCENT, "Neutrophils", "%"),
            (Analyte.BAND_PERCENT, "Bands", "%"),
            (Analyte.HAEMOGLOBIN, "Hb", "g/dL"),
            (Analyte.PLATELETS, "Platelets", COUNT_UNIT),
            (Analyte.MCV, "MCV", "fL"),
        ):
            v = d.value(analyte)
            if v is not None:
                vals.append(f"{label} {num(v)} {unit}")
        if d.anc is not None:
            vals.insert(1, f"ANC {num(d.anc)} {COUNT_UNIT}{' (derived)' if d.anc_derived else ''}")
        else:
            vals.insert(1, "ANC unknown")
        prelim = " (PRELIMINARY)" if d.preliminary else ""
        lines.append(f"Index CBC {when(d.time)}{prelim}: " + ", ".join(vals))
    lines.append("")
    if not a.assessable:
        # Decision table 1.8: its own outcome, never "normal" and never a risk.
        lines.append(f"[COULD NOT BE ASSESSED] {a.headline}")
    else:
        label = _INDICATOR[a.risk.value]
        lines.append(f"[{label}] Risk {a.risk.value.upper()} - {a.headline}")
    _section(lines, "Findings:", [f"{f.text}  [{f.source}]" for f in a.findings])
    if a.recommendations:
        lines.append("")
        lines.append("Suggested next steps:")
        for r in a.recommendations:
            due = window(r, a.now)
            due = due if due.startswith("now") else f"between {due.replace(' to ', ' and ')}"
            opt = " (optional)" if r.optional else ""
            name = ACTION_DISPLAY[r.action]
            lines.append(f"  - {name} [{r.action.value}, {r.priority.value}] {due}{opt}")
            lines.append(f"      why: {r.reason}  [{r.source}]")
    elif a.actionable:
        lines.append("")
        lines.append("Suggested next steps: none")
    for n in a.not_proposed:
        lines.append(f"  - {n}")
    _section(
        lines,
        "Medications that lower white cells:",
        [f"{m.name} ({m.ref}; matched by {m.matched_by})" for m in a.medications],
    )
    _section(
        lines,
        "Recorded conditions that can explain it:",
        [f"{c.display} ({c.ref})" for c in a.conditions],
    )
    _section(lines, "Mitigation:", list(a.mitigation))
    _section(lines, "Data handling:", list(a.data_handling))
    _section(
        lines,
        "Data that could not be used:",
        [i.message for i in a.issues if i.severity != "information"],
    )
    # Input text (medication and condition names, data-issue messages) goes to a terminal:
    # its control characters (ESC sequences, carriage returns) are shown, not obeyed.
    return "\n".join(escape(display_units(line)) for line in lines) + "\n"


def _section(lines: list[str], title: str, items: list[str]) -> None:
    """A titled bullet list after a blank line; nothing at all when there are no items."""
    if items:
        lines += ["", title, *(f"  - {i}" for i in items)]

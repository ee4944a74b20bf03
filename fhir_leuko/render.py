"""Clinician-readable text of an Assessment (CLI ``--format text``), rendered from its trace."""

from __future__ import annotations

from fhir_leuko.clinical.model import Action, Analyte, Assessment
from fhir_leuko.fhirio.codes import ACTION_DISPLAY
from fhir_leuko.logs import escape

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
            (Analyte.WBC, "WBC", "x10^9/L"),
            (Analyte.NEUTROPHIL_PERCENT, "Neutrophils", "%"),
            (Analyte.BAND_PERCENT, "Bands", "%"),
            (Analyte.HAEMOGLOBIN, "Hb", "g/dL"),
            (Analyte.PLATELETS, "Platelets", "x10^9/L"),
            (Analyte.MCV, "MCV", "fL"),
        ):
            v = d.value(analyte)
            if v is not None:
                vals.append(f"{label} {v:g} {unit}")
        if d.anc is not None:
            vals.insert(1, f"ANC {d.anc:g} x10^9/L{' (derived)' if d.anc_derived else ''}")
        else:
            vals.insert(1, "ANC unknown")
        prelim = " (PRELIMINARY)" if d.preliminary else ""
        lines.append(f"Index CBC {d.time.isoformat()}{prelim}: " + ", ".join(vals))
    lines.append("")
    label = _INDICATOR[a.risk.value]
    lines.append(f"[{label}] Risk {a.risk.value.upper()} - {a.headline}")
    _section(lines, "Findings:", [f"{f.text}  [{f.source}]" for f in a.findings])
    if a.recommendations:
        lines.append("")
        lines.append("Suggested next steps:")
        for r in a.recommendations:
            if r.action is Action.URGENT_EVALUATION:
                window = f"now, by {r.end.strftime('%Y-%m-%d %H:%M %Z')}"
            else:
                window = f"between {r.start.date().isoformat()} and {r.end.date().isoformat()}"
            opt = " (optional)" if r.optional else ""
            name = ACTION_DISPLAY[r.action]
            lines.append(f"  - {name} [{r.action.value}, {r.priority.value}] {window}{opt}")
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
    return "\n".join(escape(line) for line in lines) + "\n"


def _section(lines: list[str], title: str, items: list[str]) -> None:
    """A titled bullet list after a blank line; nothing at all when there are no items."""
    if items:
        lines += ["", title, *(f"  - {i}" for i in items)]

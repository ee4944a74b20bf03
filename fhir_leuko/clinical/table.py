"""PLACEHOLDER until the decision table (version 2) lands: ``render_markdown`` only.

The real module renders the whole table with the site's numbers; this one keeps its
signature and its anchors (one heading per row, modifiers, findings, cleaning, references)
so that the pages built on it can be written and tested meanwhile.
"""

from __future__ import annotations

from fhir_leuko.clinical.references import REFERENCES, row_anchor
from fhir_leuko.clinical.thresholds import Thresholds

ROWS: tuple[tuple[str, str], ...] = (
    ("1", "febrile neutropenia"),
    ("1b", "presumed febrile neutropenia"),
    ("2", "severe or profound neutropenia, afebrile"),
    ("3", "pancytopenia"),
    ("4", "moderate neutropenia"),
    ("5", "Duffy-null documented"),
    ("6", "leukopenia or mild neutropenia with fever"),
    ("7", "leukopenia or mild neutropenia with a reason to look further"),
    ("8", "persistent neutropenia"),
    ("9", "stable chronic leukopenia"),
    ("10", "leukopenia or mild neutropenia, otherwise"),
    ("11", "no leukopenia and ANC unknown"),
    ("12", "normal"),
)


def render_markdown(thresholds: Thresholds) -> str:
    t = thresholds
    out = [
        "# fhir-leuko decision table {#decision-table}",
        "",
        "## Cleaning the data {#cleaning}",
        "",
        "## Findings {#findings}",
        "",
        f"- Adult WBC lower limit: **{t.wbc_lln_adult:g}** ×10⁹/L; "
        f"ANC lower limit: **{t.anc_lln_adult:g}** ×10⁹/L.",
        "",
        "## Decision {#decision}",
        "",
    ]
    for row, title in ROWS:
        out += [f"### Row {row} — {title} {{#{row_anchor(row)}}}", ""]
    out += ["### Modifiers {#modifiers}", "", "## References {#references}", ""]
    out += [f"- {r.short} {{#{r.anchor}}}" for r in REFERENCES]
    return "\n".join(out) + "\n"

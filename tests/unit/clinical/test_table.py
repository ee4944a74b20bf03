"""The decision table page: generated from thresholds.py, complete, and current in docs/."""

from __future__ import annotations

import re
from pathlib import Path

from fhir_leuko.clinical.model import Row
from fhir_leuko.clinical.references import REFERENCES
from fhir_leuko.clinical.table import render_markdown
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS

DOC = Path(__file__).resolve().parents[3] / "docs" / "clinical-rules.md"
WORKING_NOTES = re.compile(r"seeds? \d{3}|all seeds|codes\.md|clinical-rules\.md", re.I)


def test_docs_clinical_rules_is_the_generated_table() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(DEFAULT_THRESHOLDS), (
        "docs/clinical-rules.md is stale: python -m fhir_leuko.clinical.table > "
        "docs/clinical-rules.md"
    )


def test_every_row_and_reference_has_an_anchor() -> None:
    md = render_markdown()
    for row in Row:
        if row is not Row.NOT_ASSESSABLE:
            assert f"{{#row-{row.value}}}" in md, row
    assert "{#cleaning-unusable}" in md and "{#modifiers}" in md and "{#anc-unknown}" in md
    for ref in REFERENCES:
        assert f"{{#{ref.anchor}}}" in md and ref.citation in md


def test_a_sites_numbers_are_the_ones_shown() -> None:
    md = render_markdown(DEFAULT_THRESHOLDS.replace(wbc_lln_adult=4.5, trend_lookback_days=365))
    assert "the result's own reference range low, else 4.5" in md
    assert "within 365 days" in md


def test_the_table_cites_no_working_notes() -> None:
    assert WORKING_NOTES.findall(render_markdown()) == []

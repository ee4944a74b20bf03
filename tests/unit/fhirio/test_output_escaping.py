"""Markup in the input never reaches an output as markup.

``Annotation.text`` (RiskAssessment and ServiceRequest notes) is FHIR ``markdown``: EHRs render
it, raw HTML included. Names, references and messages we copy there from the input must render
as themselves. The CLI text report goes to a terminal: control sequences are shown, not obeyed.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.fhirio import emit
from fhir_leuko.markdown import md
from fhir_leuko.render import text_report
from fhir_leuko.service import evaluate
from tests.builders import ANC, NOW, at, bundle, cbc, med, obs, patient

HTML = '<img src=x onerror="alert(1)">'
LINK = "[click](javascript:alert(1))"


def assessment_with_markup() -> Any:
    """Markup where input text reaches the output: a medication matched by its free text
    (quoted in "matched by"), an unusable result's unit (quoted in the data issue)."""
    return evaluate(
        bundle(
            patient(),
            cbc(2.1, 0.9, when=at(1)),
            med(f"clozapine {HTML} {LINK}"),
            obs(ANC, 0.8, at(1), unit=HTML, ucum=HTML),
        ),
        now=NOW,
        patient_id="p1",
    )


def notes_of(resource: dict[str, Any]) -> list[str]:
    return [n["text"] for n in resource.get("note", [])]


def test_markup_from_the_input_is_escaped_in_risk_assessment_notes() -> None:
    a = assessment_with_markup()
    notes = notes_of(emit.risk_assessment(a))
    quoting = [n for n in notes if "img" in n]
    # The medication's text and the unusable result's unit are each quoted, escaped.
    assert len(quoting) == 2, notes
    for text in notes:
        assert "<" not in text and ">" not in text, text
        assert "](" not in text, text  # no Markdown link survives
    assert any(md(f"'clozapine {HTML} {LINK}'") in n for n in notes), notes
    assert any(md(f"'{HTML}'") in n for n in notes), notes


def test_every_note_of_the_output_bundle_is_free_of_markup() -> None:
    out = emit.bundle(assessment_with_markup())
    texts = [t for e in out["entry"] for t in notes_of(e["resource"])]
    assert texts
    assert not [t for t in texts if "<" in t or ">" in t]


@pytest.mark.parametrize(
    ("raw", "rendered"),
    [
        ("<b>x</b>", "&lt;b&gt;x&lt;/b&gt;"),
        ("a & b", "a &amp; b"),
        ("[x](http://evil.example)", "\\[x\\]\\(http\\://evil.example\\)"),
        ("# heading\n- item", "\\# heading - item"),
        ("see www.evil.example", "see www\\.evil.example"),
    ],
)
def test_md_renders_text_as_itself(raw: str, rendered: str) -> None:
    assert md(raw) == rendered


def test_the_text_report_shows_control_sequences_instead_of_obeying_them() -> None:
    drug = med("clozapine\x1b[2J\x1b[31m\rforged line")
    a = evaluate(bundle(patient(), cbc(2.1, 0.9, when=at(1)), drug), now=NOW, patient_id="p1")
    report = text_report(a)
    assert "\x1b" not in report and "\r" not in report
    assert "clozapine\\x1b[2J\\x1b[31m\\rforged line" in report

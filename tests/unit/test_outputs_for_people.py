"""What people read, over every sample: no working-note citation, counts written ×10⁹/L, and
the HTML report self-contained.

Every output of every sample is rendered here (text report, JSON Bundle, HTML report,
patient-view cards and an order-select card for a drug that lowers white cells), so a rule
text anywhere in the table that cites working material is found whichever output shows it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_leuko.cdshooks.cards import (
    CardLinks,
    SelectedDrug,
    medication_check_response,
    patient_view_response,
)
from fhir_leuko.cdshooks.models import wire
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS
from fhir_leuko.fhirio import emit
from fhir_leuko.render import text_report
from fhir_leuko.service import evaluate
from fhir_leuko.web.report import html_report
from fhir_leuko.web.rules import rules_page
from tests.unit.clinical.test_independent_cases import PATIENT

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CASES = Path(__file__).resolve().parents[1] / "fixtures" / "independent_cases"
NOW_TEXT = orjson.loads((SAMPLES / "expectations.json").read_bytes())["evaluation_time"]
#: Every input, by name: its file, its evaluation time and (for inputs holding several
#: patients) the patient evaluated. The samples, then the reviewers' vendor-shaped cases.
INPUTS: dict[str, tuple[Path, str, str | None]] = {
    p.stem: (p, NOW_TEXT, None)
    for p in SAMPLES.glob("[0-9][0-9]-*.json")
    if not p.name.endswith(".expected.json")
} | {
    f"case-{p.stem}": (
        p,
        orjson.loads(p.with_suffix(".expect.json").read_bytes())["now"],
        PATIENT.get(p.stem),
    )
    for p in CASES.glob("[0-9]*-*.json")
    if not p.name.endswith(".expect.json")
}
NAMES = sorted(INPUTS)
LINKS = CardLinks("https://leuko.example.org", rules_page(DEFAULT_THRESHOLDS).row_titles)

#: Citations of working material: "seed 002", "seeds 001, 002", "all seeds", "rules.md".
WORKING_NOTE = re.compile(r"(?i)\bseeds? \d{3}|\ball seeds\b|\.md\b")
#: Count units as a machine writes them, never as people read them.
RAW_COUNT_UNIT = re.compile(r"10\^9|10\*9|10\*3|10\^3|x ?10")


def _doc(name: str) -> Any:
    return orjson.loads(INPUTS[name][0].read_bytes())


@cache
def outputs(name: str) -> dict[str, str]:
    """Every human-readable output of one sample, by kind."""

    patient = INPUTS[name][2]
    now = _now(name)
    doc = _doc(name)
    a = evaluate(doc, now=now, patient_id=patient)
    cards = wire(patient_view_response(a, service_id="leukopenia-patient-view", links=LINKS))
    # The same patient with a draft order for a drug that lowers white cells (order-select).
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{a.patient_id or 'unknown'}"},
        "medicationCodeableConcept": {"text": "Methotrexate 15 MG Oral Tablet"},
    }
    entries = [*doc.get("entry", ()), {"resource": draft}]
    with_drug = evaluate({**doc, "entry": entries}, now=now, patient_id=patient)
    drug = SelectedDrug("MedicationRequest/draft-1", "methotrexate", "name 'methotrexate'")
    order = wire(
        medication_check_response(
            with_drug, [drug], service_id="leukopenia-medication-check", links=LINKS
        )
    )
    return {
        "text": text_report(a),
        "json": orjson.dumps(emit.bundle(a)).decode(),
        "html": html_report(a, doc, DEFAULT_THRESHOLDS, f"{LINKS.base}/rules"),
        "cards": orjson.dumps(cards).decode(),
        "order-select cards": orjson.dumps(order).decode(),
    }


@pytest.mark.parametrize("name", NAMES)
def test_no_output_cites_working_material(name: str) -> None:
    found = {
        kind: sorted(set(WORKING_NOTE.findall(text)))
        for kind, text in outputs(name).items()
        if WORKING_NOTE.search(text)
    }
    assert not found, f"{name}: working-note citations in {found}"


@pytest.mark.parametrize("name", NAMES)
def test_what_people_read_writes_counts_as_10_9_per_litre(name: str) -> None:
    for kind in ("text", "json", "html", "cards", "order-select cards"):
        text = outputs(name)[kind]
        if kind.endswith("cards"):  # the resources inside actions are FHIR, not prose
            body = orjson.loads(text)
            text = "\n".join(
                " ".join(str(c.get(k, "")) for k in ("summary", "detail")) for c in body["cards"]
            )
        if kind == "json":  # a coding's display is the code system's, not our prose
            text = re.sub(r'"display":"[^"]*"', "", text)
        assert not RAW_COUNT_UNIT.search(text), (name, kind, RAW_COUNT_UNIT.findall(text))


@pytest.mark.parametrize("name", NAMES)
def test_the_html_report_is_one_self_contained_file(name: str) -> None:
    page = outputs(name)["html"]
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()
    # Nothing is loaded from elsewhere: no src attribute, no stylesheet link.
    assert not re.search(r"\ssrc=", page) and "<link" not in page
    assert page.count("<svg") == 1
    a = evaluate(_doc(name), now=_now(name), patient_id=INPUTS[name][2])
    drawn = len(re.findall(r'<circle class="point ', page))
    if a.index_draw is not None:
        assert drawn >= 1
    # Every in-page link resolves to an id of the page.
    ids = set(re.findall(r'\sid="([^"]+)"', page))
    for target in re.findall(r'href="#([^"]+)"', page):
        assert target in ids, (name, target)


def _now(name: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(INPUTS[name][1].replace("Z", "+00:00"))

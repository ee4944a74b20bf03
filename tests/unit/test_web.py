"""The pages for people: Markdown -> HTML, the decision-table page, the app's endpoints, and
the small writing rules every output shares (count units, order windows)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.app import create_app
from fhir_leuko.clinical.model import Action, Priority, Recommendation
from fhir_leuko.clinical.references import DECISION_TABLE, REFERENCES
from fhir_leuko.clinical.table import render_markdown
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS
from fhir_leuko.config import load_settings
from fhir_leuko.render import display_units, window
from fhir_leuko.web import site
from fhir_leuko.web.markdown import to_html
from fhir_leuko.web.rules import row_titles, rules_page
from tests.builders import at, bundle, cbc, patient
from tests.integration.web_support import sample_resources

ROWS = ("1", "1b", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")
SAMPLE = "22-preliminary-moderate-neutropenia"


# --- Markdown ------------------------------------------------------------------------------------


def test_anchors_become_ids_on_headings_list_items_and_rows() -> None:
    html, ids = to_html(
        "### Row 1b — presumed febrile neutropenia {#row-1b}\n\n"
        "- **CTCAE v5.0**: grades {#ref-ctcae-v5}\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 {#t-1} |\n"
    )
    assert ids == ["row-1b", "ref-ctcae-v5", "t-1"]
    assert '<h3 id="row-1b">Row 1b — presumed febrile neutropenia</h3>' in html
    assert '<li id="ref-ctcae-v5"><strong>CTCAE v5.0</strong>: grades</li>' in html
    assert '<tr id="t-1">' in html and "{#" not in html


def test_raw_html_and_script_links_in_the_source_stay_text() -> None:
    html, _ = to_html(
        "<script>alert(1)</script> [x](javascript:alert(1)) [ok](https://a.example/b)"
    )
    assert "<script" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html
    assert '<a href="https://a.example/b">ok</a>' in html


def test_a_repeated_anchor_names_its_first_block_only() -> None:
    html, ids = to_html("# A {#x}\n\n# B {#x}\n")
    assert ids == ["x"] and html.count('id="x"') == 1


# --- The decision table page -----------------------------------------------------------------


def test_the_page_has_an_id_for_every_row_and_every_reference() -> None:
    page = rules_page(DEFAULT_THRESHOLDS)
    ids = set(re.findall(r'\sid="([^"]+)"', page.html))
    assert {f"row-{r}" for r in ROWS} <= ids
    assert {r.anchor for r in REFERENCES} | {DECISION_TABLE.anchor} <= ids
    assert page.ids <= ids
    assert len(re.findall(r'\sid="([^"]+)"', page.html)) == len(ids)  # each id once
    for r in REFERENCES:  # the full citation, with its address where it has one
        assert r.citation.split(".")[0] in page.html
        assert r.url is None or f'href="{r.url}"' in page.html
    assert set(page.row_titles) == set(ROWS)
    assert all(t.startswith(f"Row {r}") for r, t in page.row_titles.items())


def test_every_row_of_the_page_is_a_published_code() -> None:
    from fhir_leuko.cdshooks.cards import ROW_SYSTEM
    from fhir_leuko.fhirio.profiles import codes_of

    assert set(rules_page(DEFAULT_THRESHOLDS).row_titles) == codes_of(ROW_SYSTEM) == set(ROWS)


def test_row_titles_come_from_the_headings() -> None:
    md = "## Rows\n\n### Row 4 — *moderate* neutropenia {#row-4}\n\nText {#row-9}\n"
    assert row_titles(md) == {"4": "Row 4 — moderate neutropenia"}


def test_the_page_shows_the_sites_numbers() -> None:
    site_t = dataclasses.replace(DEFAULT_THRESHOLDS, wbc_lln_adult=4.37)
    assert "4.37" in render_markdown(site_t)
    assert "4.37" in rules_page(site_t).html
    assert "4.37" not in rules_page(DEFAULT_THRESHOLDS).html


# --- Endpoints ---------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    env = {
        "FHIR_LEUKO_INSECURE_DEV": "1",
        "FHIR_LEUKO_FEEDBACK_DB": str(tmp_path / "f.sqlite3"),
        "FHIR_LEUKO_QUEUE_DB": str(tmp_path / "q.sqlite3"),
        "FHIR_LEUKO_WORKER_ENABLED": "0",
    }
    return TestClient(create_app(load_settings(env=env)))


def test_rules_is_an_html_page_that_loads_nothing_from_elsewhere(client: TestClient) -> None:
    r = client.get("/rules")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert 'id="row-1b"' in r.text and "<script" not in r.text


def test_the_app_says_when_its_libraries_are_not_built(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(site, "BUILT_MARKER", tmp_path / "missing.json")
    r = client.get("/app/")
    assert r.status_code == 200 and "is not built" in r.text and "make app" in r.text
    assert "<script" not in r.text


def test_the_app_files_stay_inside_the_app_folder(client: TestClient) -> None:
    assert client.get("/app/app.js").status_code == 200
    assert client.get("/app/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/app/..%2F..%2Fconfig.py").status_code == 404
    assert client.get("/app/vendor/..%2F..%2F..%2Fapp.py").status_code == 404
    assert client.get("/app/nothing.js").status_code == 404


def test_the_app_config_names_the_smart_scopes_and_the_services_queries(
    client: TestClient,
) -> None:
    cfg = client.get("/app/config.json").json()
    assert cfg["clientId"] == "fhir-leuko-trend"
    assert set(cfg["scope"].split()) >= {"launch", "patient/Observation.rs", "patient/Patient.r"}
    cbc = next(q for q in cfg["queries"] if q["key"] == "cbc")
    since = (datetime.now(UTC) - timedelta(days=730)).date()
    assert any(f"&date=ge{d.isoformat()}" in cbc["url"] for d in (since, since - timedelta(days=1)))
    assert cfg["patientToken"] in cbc["url"]


def test_evaluate_for_the_app_returns_the_assessment_and_every_draw(client: TestClient) -> None:
    resources = sample_resources(SAMPLE, now=datetime.now(UTC))
    r = client.post("/app/api/evaluate", json={"patient": "84420", "resources": resources})
    assert r.status_code == 200, r.text
    body = r.json()
    wbc = next(p for p in body["trend"]["panels"] if p["key"] == "wbc")
    assert [(p["value"], p["status"], p["index"]) for p in wbc["points"]] == [
        (6.1, "final", False),
        (2.9, "preliminary", True),
    ]
    anc = next(p for p in body["trend"]["panels"] if p["key"] == "anc")
    assert [b["label"] for b in anc["bands"]] == ["mild", "moderate", "severe", "profound"]
    a = body["assessment"]
    assert a["risk"] in ("moderate", "high") and a["rowUrl"].endswith(f"/rules#row-{a['row']}")
    assert a["rowUrl"].startswith("http://testserver/rules")  # no public URL configured


def test_the_assessment_for_the_app_uses_the_hooks_windows_but_the_chart_shows_24_months(
    client: TestClient,
) -> None:
    # A severe count 14 months ago is outside the hook's one-year CBC window.
    old = (datetime.now(UTC) - timedelta(days=425)).isoformat()
    recent = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    resources = [
        e["resource"]
        for e in bundle(patient(), cbc(1.0, 0.3, when=old), cbc(6.5, 3.8, when=recent))["entry"]
    ]
    body = client.post("/app/api/evaluate", json={"resources": resources}).json()
    assert body["assessment"]["risk"] == "negligible"
    wbc = next(p for p in body["trend"]["panels"] if p["key"] == "wbc")
    assert [p["value"] for p in wbc["points"]] == [1.0, 6.5]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"resources": "x"}',
        b'{"resources": [1]}',
        b'{"resources": [], "patient": 3}',
    ],
)
def test_evaluate_for_the_app_refuses_what_is_not_fhir(client: TestClient, payload: bytes) -> None:
    r = client.post("/app/api/evaluate", content=payload)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


# --- Writing rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("WBC 3.4 x 10^9/L on", "WBC 3.4 ×10⁹/L on"),
        ("ANC 1.2 x10^9/L", "ANC 1.2 ×10⁹/L"),
        ("3.4 10*3/uL", "3.4 ×10⁹/L"),
        ("platelets 141 X 10^9/L (< 150)", "platelets 141 ×10⁹/L (< 150)"),
        ("(10^9/L)", "(×10⁹/L)"),
        ("on 2010-10-01, 10 days", "on 2010-10-01, 10 days"),
        ("already ×10⁹/L", "already ×10⁹/L"),
    ],
)
def test_counts_are_written_one_way(raw: str, shown: str) -> None:
    assert display_units(raw) == shown


NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _rec(action: Action, start_days: float, end_days: float) -> Recommendation:
    return Recommendation(
        action,
        Priority.URGENT,
        NOW + timedelta(days=start_days),
        NOW + timedelta(days=end_days),
        "reason",
        "IDSA 2010",
    )


def test_no_window_starts_in_the_past() -> None:
    assert window(_rec(Action.REPEAT_CBC, 1, 7), NOW) == "2026-03-11 to 2026-03-17"
    assert window(_rec(Action.REPEAT_CBC, -3, 4), NOW) == "2026-03-10 to 2026-03-14"
    assert window(_rec(Action.REPEAT_CBC, -9, -2), NOW) == "now (it was due by 2026-03-08)"
    assert window(_rec(Action.URGENT_EVALUATION, -0.1, 0.02), NOW) == "now, by 2026-03-10 12:28 UTC"
    assert window(_rec(Action.URGENT_EVALUATION, -2, -1), NOW) == "now"


def test_text_report_windows_and_units(tmp_path: Path) -> None:
    from fhir_leuko.render import text_report
    from fhir_leuko.service import evaluate

    a = evaluate(bundle(patient(), cbc(3.0, 1.2, when=at(5))), now=NOW)
    text = text_report(a)
    assert "×10⁹/L" in text and "10^9" not in text
    starts = re.findall(r"between (\d{4}-\d{2}-\d{2}) and", text)
    assert starts and all(s >= "2026-03-10" for s in starts)


def test_cli_html_format_writes_one_page(capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_leuko.cli import main

    sample = Path(__file__).resolve().parents[2] / "samples" / f"{SAMPLE}.json"
    assert main(["evaluate", str(sample), "--now", "2026-03-10T12:00:00Z", "--format", "html"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!doctype html>") and "<svg" in out and "<script" not in out
    assert out.count('<circle class="point final"') == 4  # the final draw: one dot per panel
    assert out.count('<circle class="point preliminary"') == 4
    assert out.count('class="index-mark"') == 4
    assert 'class="preliminary index"' in out  # the table row of the index draw


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["x 10^9/L", "x10^9/L", "10*3/uL", "10^9/L", " ", "3.4", "(", "x", "10"])
        | st.text(max_size=3),
        max_size=8,
    ).map("".join)
)
def test_the_fast_path_writes_units_as_the_pattern_does(raw: str) -> None:
    from fhir_leuko.render import _COUNT_UNIT_TEXT, _unit

    assert display_units(raw) == _COUNT_UNIT_TEXT.sub(_unit, raw)

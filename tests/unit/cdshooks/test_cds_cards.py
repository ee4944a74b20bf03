"""Assessment -> cards: what a clinician sees, and that every card conforms to CDS Hooks 2.0."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from cds_conformance import assert_conformant
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.cdshooks.cards import (
    INDICATOR,
    OVERRIDE_SYSTEM,
    ROW_SYSTEM,
    CardLinks,
    SelectedDrug,
    md,
    medication_check_response,
    patient_view_response,
)
from fhir_leuko.cdshooks.models import wire, wire_bytes
from fhir_leuko.clinical.model import Assessment
from fhir_leuko.fhirio import codes
from fhir_leuko.service import evaluate
from tests.builders import NOW, TEMP, WBC, at, bundle, cbc, med, obs, patient

SERVICE = "leukopenia-patient-view"
BASE = "https://leuko.example.org"
LINKS = CardLinks(BASE, {"4": "Row 4 — moderate neutropenia"})


def assess(*items: Any) -> Assessment:
    return evaluate(bundle(patient(), *items), now=NOW)


def cards_for(*items: Any) -> dict[str, Any]:
    response = patient_view_response(assess(*items), service_id=SERVICE, links=LINKS)
    body = wire(response)
    assert_conformant(body)
    assert orjson.loads(wire_bytes(response)) == body  # what the endpoint sends
    return body


def created(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [a["resource"] for s in card.get("suggestions", []) for a in s["actions"]]


def action_codes(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource["code"]["coding"] if c["system"] == codes.ACTION_SYSTEM}


# --- patient-view --------------------------------------------------------------------------------


def test_normal_cbc_gives_no_cards_and_no_system_actions() -> None:
    assert cards_for(cbc(6.0, 3.5)) == {"cards": []}


def test_severe_neutropenia_is_one_critical_card_that_creates_the_orders() -> None:
    body = cards_for(cbc(1.2, 0.4))
    [card] = body["cards"]
    assert card["indicator"] == "critical"
    assert "Severe neutropenia" in card["summary"]
    assert card["selectionBehavior"] == "any"
    orders = created(card)
    assert {c for r in orders for c in action_codes(r)} == {
        "repeat-cbc",
        "peripheral-smear",
        "haematology-referral",
    }
    assert all(r["intent"] == "proposal" and r["status"] == "draft" for r in orders)
    assert all(s["isRecommended"] is True for s in card["suggestions"])


def test_risk_assessment_is_a_system_action_and_orders_point_at_it_by_identifier() -> None:
    body = cards_for(cbc(1.2, 0.4))
    [system] = body["systemActions"]
    ra = system["resource"]
    assert system["type"] == "create" and ra["resourceType"] == "RiskAssessment"
    for sr in created(body["cards"][0]):
        [ref] = sr["supportingInfo"]
        assert ref == {"type": "RiskAssessment", "identifier": ra["identifier"][0]}


def test_b12_and_folate_are_one_suggestion_with_both_orders() -> None:
    # Pancytopenia: row 3 proposes B12 and folate beside repeat CBC, smear and referral.
    body = cards_for(cbc(2.5, 0.8, hb=9.0, plt=90, mcv=92))
    card = body["cards"][0]
    vitamins = [
        s
        for s in card["suggestions"]
        if {"vitamin-b12", "folate"}
        & {c for a in s["actions"] for c in action_codes(a["resource"])}
    ]
    assert len(vitamins) == 1
    assert [action_codes(a["resource"]) for a in vitamins[0]["actions"]] == [
        {"vitamin-b12"},
        {"folate"},
    ]
    assert "B12" in vitamins[0]["label"] and "Folate" in vitamins[0]["label"]


def test_optional_referral_is_offered_but_not_recommended() -> None:
    # Persistent mild neutropenia over > 90 days (row 8): the referral is optional.
    body = cards_for(cbc(5.0, 1.2, when=at(120)), cbc(5.0, 1.3, when=at(60)), cbc(5.0, 1.25))
    card = body["cards"][0]
    by_action = {
        next(iter(action_codes(s["actions"][0]["resource"]))): s for s in card["suggestions"]
    }
    assert by_action["haematology-referral"]["isRecommended"] is False
    assert by_action["peripheral-smear"]["isRecommended"] is True


def test_detail_shows_values_grade_and_sources_and_leaves_the_trend_to_the_chart() -> None:
    body = cards_for(cbc(3.6, 1.4, when=at(30)), cbc(3.0, 1.1, when=at(14)), cbc(2.4, 0.8))
    card = body["cards"][0]
    detail = card["detail"]
    assert "ANC 0.8 ×10⁹/L (lower limit 1.5)" in detail
    assert "WBC 2.4 ×10⁹/L (lower limit 4.0)"  # one number formatter: 4.0 everywhere in detail
    assert "**Neutropenia grade:** moderate" in detail
    assert "| 3.6 |" not in detail  # the counts over time are the app's
    assert "10^9" not in detail and "10*3" not in detail
    # Every finding and the decision name their sources, in parentheses after the text.
    section = detail.split("**Findings**\n", 1)[1].split("\n\n", 1)[0]
    findings = section.splitlines()
    assert len(findings) >= 2 and all(ln.endswith(")*") for ln in findings)
    assert "**Decision:**" in detail
    assert f"]({BASE}/rules#row-{card['source']['topic']['code']})" in detail
    assert len(detail) < 2500


def test_source_names_and_links_the_row_that_decided() -> None:
    a = assess(cbc(2.4, 0.8))
    card = cards_for(cbc(2.4, 0.8))["cards"][0]
    row = str(a.row)
    assert card["source"]["url"] == f"{BASE}/rules#row-{row}"
    assert card["source"]["topic"] == {
        "system": ROW_SYSTEM,
        "code": row,
        "display": LINKS.row_title(row),
    }
    assert LINKS.row_title(row) in card["source"]["label"]


def test_every_card_links_the_trend_app_as_a_smart_app() -> None:
    body = cards_for(cbc(2.0, 1.2), med("Clozapine 100 MG Oral Tablet", "2626"))
    assert len(body["cards"]) == 2
    for card in body["cards"]:
        assert card["links"] == [
            {
                "label": "CBC trend and assessment (fhir-leuko)",
                "url": f"{BASE}/app/",
                "type": "smart",
            }
        ]


def test_known_references_are_linked_to_the_rules_page() -> None:
    from fhir_leuko.cdshooks.cards import cite

    rendered = cite("IDSA 2010; a note of ours", f"{BASE}/rules")
    assert rendered == f"[IDSA 2010]({BASE}/rules#ref-idsa-2010); a note of ours"


def test_no_order_window_starts_in_the_past() -> None:
    # The index CBC is 5 days old: windows counted from it would start before now.
    body = cards_for(cbc(3.0, 1.2, when=at(5)))
    detail = body["cards"][0]["detail"]
    dates = re.findall(r"(\d{4}-\d{2}-\d{2}) to \d{4}-\d{2}-\d{2}", detail)
    assert dates, detail
    assert all(d >= NOW.date().isoformat() for d in dates)


def test_override_reasons_are_full_codings() -> None:
    card = cards_for(cbc(1.2, 0.4))["cards"][0]
    assert {r["system"] for r in card["overrideReasons"]} == {OVERRIDE_SYSTEM}
    assert "already-addressed" in {r["code"] for r in card["overrideReasons"]}


def test_a_drug_that_lowers_white_cells_is_its_own_card_after_the_main_one() -> None:
    body = cards_for(cbc(2.0, 1.2), med("Clozapine 100 MG Oral Tablet", "2626"))
    main, drug = body["cards"]
    assert main["indicator"] in ("warning", "critical")
    assert drug["summary"].startswith("Review clozapine")
    assert drug["source"]["topic"]["code"] == main["source"]["topic"]["code"]  # the row
    assert "MedicationRequest/" in drug["detail"]
    assert "clozapine" in main["detail"]  # the main card names it too


def test_cards_are_ordered_most_severe_first() -> None:
    body = cards_for(cbc(3.5, 1.3), med("methotrexate 2.5 mg tablet"))
    rank = {"critical": 0, "warning": 1, "info": 2}
    indicators = [rank[c["indicator"]] for c in body["cards"]]
    assert indicators == sorted(indicators)


def test_data_issues_are_on_the_card() -> None:
    body = cards_for(cbc(1.2, 0.4), obs(WBC, 3.4, at(1), unit="furlongs", ucum="furlongs"))
    assert "furlongs" in body["cards"][0]["detail"]
    assert "Data not used" in body["cards"][0]["detail"]


def test_a_normal_verdict_with_unreadable_results_is_said_on_an_info_card() -> None:
    body = cards_for(cbc(6.0, 3.5, when=at(2)), obs(WBC, "3,4", at(0)))
    [card] = body["cards"]
    assert card["indicator"] == "info"
    assert "could not be used" in card["summary"]
    assert "3,4" in card["detail"]
    assert "suggestions" not in card


def test_preliminary_results_say_so_in_the_summary() -> None:
    body = cards_for(cbc(1.2, 0.4, status="preliminary"))
    assert body["cards"][0]["summary"].startswith("Preliminary:")


def test_uuids_are_stable_for_the_same_data_and_change_with_new_data() -> None:
    draw = cbc(1.2, 0.4, when=at(1))
    first = cards_for(draw)
    again = cards_for(draw)
    newer = cards_for(draw, cbc(1.1, 0.3, when=at(0)))

    def uuids(body: dict[str, Any]) -> list[str]:
        return [c["uuid"] for c in body["cards"]] + [
            s["uuid"] for c in body["cards"] for s in c.get("suggestions", [])
        ]

    assert uuids(first) == uuids(again)
    assert not set(uuids(first)) & set(uuids(newer))


# --- Escaping: the sandbox renders detail as Markdown with raw HTML --------------------------


def test_patient_derived_text_cannot_inject_html_or_links() -> None:
    evil = "<img src=x onerror=alert(1)> [click](https://evil.example/x) www.evil.example"
    body = cards_for(cbc(2.0, 1.2), med(f"clozapine {evil}"))
    text = "\n".join(c["detail"] for c in body["cards"])
    assert "<img" not in text
    assert "](https://evil" not in text
    assert "https://evil" not in text and "www.evil" not in text
    assert "&lt;img" in text


@pytest.mark.parametrize(
    ("raw", "rendered"),
    [
        ("a < b & c", "a &lt; b &amp; c"),
        ("*bold* _it_ `code`", "\\*bold\\* \\_it\\_ \\`code\\`"),
        ("line\nbreak\r\n# heading", "line break \\# heading"),
        ("x | y", "x \\| y"),
        ("see http://a.b", "see http\\://a.b"),
        ("HTTPS://A.B and Mailto:x", "HTTPS\\://A.B and Mailto\\:x"),
        ("JavaScript:alert DATA:text/html", "JavaScript\\:alert DATA\\:text/html"),
        ("ftp:x WWW.evil.example", "ftp\\:x WWW\\.evil.example"),
        ("06:32 on 2026-11-23, WBC 2.6", "06:32 on 2026-11-23, WBC 2.6"),
    ],
)
def test_md_escapes(raw: str, rendered: str) -> None:
    assert md(raw) == rendered


#: The escaping, as a table: every character at once (what md() must be equal to).
_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*_{}[]()#+!|~@"}}
)
_SCHEME = re.compile(r"(?i)\b(https?|ftp|mailto|javascript|data):")
_WWW = re.compile(r"(?i)\bwww\.")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["http", "HTTPS", "ftp", "MailTo", "javascript", "data", "www", "WwW"])
        | st.sampled_from([":", ".", " ", "/", "a", "(", "1", "\n", "<", "&", "\\", "`", "["])
        | st.text(max_size=3),
        max_size=12,
    ).map("".join)
)
def test_md_equals_escaping_everything_at_once(raw: str) -> None:
    """md escapes char by char and runs its link-breaking regexes only when they can match:
    the result is the one-pass table's, with the regexes always run."""
    s = " ".join(raw.split()).translate(_ESCAPES)
    s = _SCHEME.sub(lambda m: m.group(1) + "\\:", s)
    s = _WWW.sub(lambda m: m.group(0)[:-1] + "\\.", s)
    assert md(raw) == s


# --- order-select --------------------------------------------------------------------------------

METHOTREXATE = SelectedDrug(
    "MedicationRequest/request-123",
    "methotrexate",
    "name 'methotrexate' in 'Methotrexate 15 MG Oral Tablet'",
)


def check(*items: Any) -> dict[str, Any]:
    # As the router does: the selected draft order is counted as active, under its own id.
    signed = {**med("Methotrexate 15 MG Oral Tablet"), "id": "request-123"}
    a = evaluate(bundle(patient(), *items, signed), now=NOW)
    body = wire(
        medication_check_response(
            a, [METHOTREXATE], service_id="leukopenia-medication-check", links=LINKS
        )
    )
    assert_conformant(body)
    return body


def test_high_risk_drug_with_neutropenia_warns_with_the_counts() -> None:
    [card] = check(cbc(3.1, 1.2))["cards"]
    assert card["summary"].startswith("Methotrexate with mild neutropenia (ANC 1.2, WBC 3.1")
    assert card["indicator"] == "warning"
    assert "The order being signed, **methotrexate**" in card["detail"]
    assert "ctive medication" not in card["detail"]
    [remove] = card["suggestions"]
    assert remove["actions"] == [
        {
            "type": "delete",
            "description": "Remove the draft order MedicationRequest/request-123",
            "resourceId": "MedicationRequest/request-123",
        }
    ]


def test_moderate_neutropenia_on_the_drug_is_critical() -> None:
    [card] = check(cbc(2.0, 0.7))["cards"]
    assert card["indicator"] == "critical"


def test_no_neutropenia_no_warning() -> None:
    assert check(cbc(6.0, 3.0))["cards"] == []
    assert check(cbc(3.5, 2.0))["cards"] == []  # leukopenia alone is not neutropenia


def test_low_wbc_without_differential_proves_neutropenia() -> None:
    [card] = check(cbc(0.9))["cards"]
    assert "ANC unknown" in card["summary"]


def test_fever_shows_in_the_warning() -> None:
    [card] = check(cbc(2.0, 0.7), obs(TEMP, 38.6, at(0, 1)))["cards"]
    assert "Febrile neutropenia" in card["detail"]


# --- Property: whatever the counts, the response conforms ---------------------------------------

counts = st.floats(min_value=0.0, max_value=12.0, allow_nan=False).map(lambda v: round(v, 2))


@settings(max_examples=60, deadline=None)
@given(
    wbc=counts,
    anc=st.none() | counts,
    hb=st.none() | st.floats(min_value=5, max_value=17).map(lambda v: round(v, 1)),
    plt=st.none() | st.integers(min_value=5, max_value=400),
    fever=st.booleans(),
    on_drug=st.booleans(),
)
def test_every_response_conforms(
    wbc: float, anc: float | None, hb: float | None, plt: int | None, fever: bool, on_drug: bool
) -> None:
    items: list[Any] = [cbc(wbc, anc, hb=hb, plt=plt)]
    if fever:
        items.append(obs(TEMP, 38.5, at(0, 1)))
    if on_drug:
        items.append(med("carbamazepine 200 mg"))
    body = cards_for(*items)
    a = assess(*items)
    if a.actionable:
        main = body["cards"][0]
        assert main["indicator"] == INDICATOR[a.risk]
        assert main["summary"] == a.headline
        assert body["systemActions"][0]["resource"]["resourceType"] == "RiskAssessment"
    else:
        assert "systemActions" not in body
        assert all(c["indicator"] == "info" for c in body["cards"])

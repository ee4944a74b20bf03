"""Every link a card carries resolves on the running service, as a user's click would.

Cards for every sample (patient-view, and order-select with a drug that lowers white cells)
are made with the running service's address; each ``source.url``, each ``links[].url`` and
each Markdown link in ``detail`` is fetched: 200 with an HTML page, and a ``#fragment`` is an
id of that page (a row of the decision table, or a reference). One hook call over HTTP shows
the router builds the same links from the address it is reached at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import httpx
import orjson
import pytest
from web_support import SAMPLES, running_service

from fhir_leuko.cdshooks.cards import (
    CardLinks,
    SelectedDrug,
    medication_check_response,
    patient_view_response,
)
from fhir_leuko.cdshooks.models import wire
from fhir_leuko.clinical.references import BY_SHORT
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS
from fhir_leuko.service import evaluate
from fhir_leuko.web.rules import rules_page
from fhir_leuko.web.site import BUILT_MARKER

pytestmark = pytest.mark.integration

NOW_TEXT = orjson.loads((SAMPLES / "expectations.json").read_bytes())["evaluation_time"]
NAMES = sorted(
    p.stem for p in SAMPLES.glob("[0-9][0-9]-*.json") if not p.name.endswith(".expected.json")
)
MD_LINK = re.compile(r"\]\((https?://[^)\s]+)\)")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_service(Path(tmp_path_factory.mktemp("serve"))) as base:
        yield base


def _cards(base: str) -> list[dict[str, Any]]:
    from datetime import datetime

    now = datetime.fromisoformat(NOW_TEXT.replace("Z", "+00:00"))
    links = CardLinks(base, rules_page(DEFAULT_THRESHOLDS).row_titles)
    drug = SelectedDrug("MedicationRequest/draft-1", "methotrexate", "name 'methotrexate'")
    cards: list[dict[str, Any]] = []
    for name in NAMES:
        doc = orjson.loads((SAMPLES / f"{name}.json").read_bytes())
        a = evaluate(doc, now=now)
        cards += wire(patient_view_response(a, service_id="pv", links=links))["cards"]
        draft = {
            "resourceType": "MedicationRequest",
            "id": "draft-1",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Methotrexate 15 MG Oral Tablet"},
        }
        b = evaluate({**doc, "entry": [*doc.get("entry", ()), {"resource": draft}]}, now=now)
        cards += wire(medication_check_response(b, [drug], service_id="mc", links=links))["cards"]
    return cards


def _urls(card: dict[str, Any]) -> list[str]:
    urls = [card["source"]["url"], *(link["url"] for link in card.get("links", ()))]
    return urls + MD_LINK.findall(card.get("detail", ""))


def test_every_card_link_resolves_to_an_html_page_and_its_anchor(service: str) -> None:
    assert BUILT_MARKER.is_file(), "the trend app is not built: run `make app`"
    cards = _cards(service)
    assert len(cards) > 20
    pages: dict[str, tuple[int, str, str]] = {}
    checked = 0
    with httpx.Client(trust_env=False, timeout=10) as http:
        for card in cards:
            assert card["links"][0]["type"] == "smart"
            for url in _urls(card):
                page, fragment = urldefrag(url)
                assert page.startswith(service), url
                if page not in pages:
                    r = http.get(page)
                    pages[page] = (r.status_code, r.headers.get("content-type", ""), r.text)
                status, ctype, body = pages[page]
                assert status == 200 and ctype.startswith("text/html"), (url, status, ctype)
                if fragment:
                    assert f'id="{fragment}"' in body, url
                checked += 1
    assert checked > 3 * len(cards)
    # The rows cards name are rows of the page, and so is every reference they cite.
    cited = {f for c in cards for f in re.findall(r"/rules#(ref-[a-z0-9-]+)", c["detail"])}
    assert cited <= {r.anchor for r in BY_SHORT.values()}


def test_a_hook_call_links_to_the_service_it_reached(service: str) -> None:
    from datetime import UTC, datetime, timedelta

    request = (
        Path(__file__).parents[1] / "fixtures" / "cds" / "patient-view-febrile-neutropenia.json"
    )
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    body = request.read_text().replace("2026-03-09", yesterday).encode()
    r = httpx.post(
        f"{service}/cds-services/leukopenia-patient-view",
        content=body,
        headers={"Content-Type": "application/json"},
        trust_env=False,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert cards
    for card in cards:
        assert card["source"]["url"].startswith(f"{service}/rules#row-")
        assert card["links"] == [
            {
                "label": "CBC trend and assessment (fhir-leuko)",
                "url": f"{service}/app/",
                "type": "smart",
            }
        ]
        assert httpx.get(card["source"]["url"], trust_env=False).status_code == 200

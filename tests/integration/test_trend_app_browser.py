"""The trend app in a real browser: Debian's headless Chromium, driven by Playwright.

The app runs in open-server mode against the local FHIR server with a sample patient loaded;
the test reads what was drawn (uPlot's canvas pixels at the plotted values, the bands), the
table view and the assessment from the page, and keeps a screenshot in pytest's tmp dir.

Set-up: ``make test`` installs Chromium with apt-get where it is missing
(tests/integration/install-browser.sh) and builds the app's libraries (``make app``).
Playwright never downloads a browser here: it is pointed at /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhirserver.harness import fhir_server, fresh_fhir_server  # noqa: F401
from web_support import load_into, running_service, sample_resources

from fhir_leuko.web.site import BUILT_MARKER

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE = "22-preliminary-moderate-neutropenia"
PANEL_LOINC = {"wbc": "6690-2", "anc": "751-8", "hb": "718-7", "plt": "777-3"}
FINAL_RGB = (0x0B, 0x57, 0xA4)
BAND_RGB = {
    1: (0xFD, 0xE2, 0xE1),
    2: (0xF9, 0xC4, 0xC0),
    3: (0xF2, 0x9A, 0x93),
    4: (0xE8, 0x66, 0x5C),
}


def _close(rgb: list[int] | tuple[int, ...], want: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(rgb[:3], want, strict=True))


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: run tests/integration/install-browser.sh (root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def _expected(resources: list[dict[str, Any]]) -> dict[str, list[tuple[float, str]]]:
    """Per panel, the sample's values oldest first, with their status (all in 10*3/uL,
    which is the same number in 10^9/L; Hb in g/dL)."""
    out: dict[str, list[tuple[str, float, str]]] = {k: [] for k in PANEL_LOINC}
    for r in resources:
        if r["resourceType"] != "Observation":
            continue
        code = r["code"]["coding"][0]["code"]
        for key, loinc in PANEL_LOINC.items():
            if code == loinc:
                out[key].append((r["effectiveDateTime"], r["valueQuantity"]["value"], r["status"]))
    return {k: [(v, s) for _, v, s in sorted(xs)] for k, xs in out.items()}


_READ_CHARTS = """() => window.leuko.charts.map((u) => {
  const panel = u.leukoPanel;
  const px = (x, y) => Array.from(u.ctx.getImageData(Math.round(x), Math.round(y), 1, 1).data);
  const points = panel.points.map((p) => {
    const x = u.valToPos(Date.parse(p.time) / 1000, 'x', true);
    const y = u.valToPos(p.value, 'y', true);
    return {value: p.value, status: p.status, index: p.index, x, y,
            inside: x >= u.bbox.left && x <= u.bbox.left + u.bbox.width
                    && y >= u.bbox.top && y <= u.bbox.top + u.bbox.height,
            centre: px(x, y)};
  });
  const bands = panel.bands.map((b) => {
    const top = u.valToPos(Math.min(b.high, u.scales.y.max), 'y', true);
    const bottom = u.valToPos(Math.max(b.low, u.scales.y.min), 'y', true);
    const samples = [];
    for (let i = 1; i < 10; i += 1) {
      const x = u.bbox.left + (u.bbox.width * i) / 10;
      for (let y = Math.ceil(top) + 1; y < bottom - 1; y += 1) samples.push(px(x, y));
    }
    return {level: b.level, height: bottom - top, samples};
  });
  return {key: panel.key, plotted: u.data[1].filter((v) => v !== null), points, bands};
})"""


def test_the_app_draws_the_sample_patients_counts_bands_and_table(
    browser: Any,
    fresh_fhir_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert BUILT_MARKER.is_file(), "the app's libraries are not built: run `make app`"
    resources = sample_resources(SAMPLE, now=datetime.now(UTC))
    load_into(fresh_fhir_server, resources)
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    expected = _expected(resources)

    with running_service(tmp_path) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{base}/app/?iss={fresh_fhir_server}&patient={patient}")
        try:
            page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        finally:
            page.screenshot(path=str(tmp_path / "trend-app.png"), full_page=True)
        status = page.inner_text("#status")
        assert page.get_attribute("body", "data-ready") == "true", (status, problems)

        # The chart: four panels, each value of the sample plotted where uPlot put it.
        charts = page.evaluate(_READ_CHARTS)
        assert [c["key"] for c in charts] == ["wbc", "anc", "hb", "plt"]
        for chart in charts:
            want = expected[chart["key"]]
            assert chart["plotted"] == [v for v, _ in want], chart["key"]
            assert [(p["value"], p["status"]) for p in chart["points"]] == want
            for p in chart["points"]:
                assert p["inside"], (chart["key"], p)
                if p["status"] == "final":
                    assert _close(p["centre"], FINAL_RGB), (chart["key"], p)  # filled dot
                else:
                    assert _close(p["centre"], (255, 255, 255), 30), (chart["key"], p)  # hollow
            assert [p["index"] for p in chart["points"]] == [False, True]  # the newest draw
            # The bands: below the lower limit (ANC: one band per grade), drawn in their colour.
            assert chart["bands"], chart["key"]
            for band in chart["bands"]:
                if band["height"] < 6:
                    continue  # e.g. "profound" (ANC < 0.1) is a sliver at this scale
                hits = sum(_close(s, BAND_RGB[band["level"]], 12) for s in band["samples"])
                assert hits >= 0.6 * len(band["samples"]), (chart["key"], band["level"])
        assert {b["level"] for b in charts[1]["bands"]} == {1, 2, 3, 4}

        # Keyboard: the chart takes focus and the arrow keys read the draws out.
        page.focus("#chart")
        page.keyboard.press("End")
        readout = page.inner_text("#readout")
        assert "WBC 2.9 (preliminary) (index draw)" in readout

        # The table view, switched on by keyboard, holds the same values.
        page.focus("#show-table")
        page.keyboard.press("Enter")
        assert page.is_visible("#table-view table") and not page.is_visible("#chart")
        rows = page.eval_on_selector_all(
            "#table-view tbody tr",
            "rows => rows.map(r => ({cls: r.className, "
            "cells: Array.from(r.querySelectorAll('td')).map(c => c.textContent)}))",
        )
        assert len(rows) == 2
        newest, oldest = rows
        assert newest["cls"] == "preliminary index" and oldest["cls"] == "final"
        assert newest["cells"][:4] == [f"{expected[k][1][0]:g}" for k in PANEL_LOINC]
        assert oldest["cells"][:4] == [f"{expected[k][0][0]:g}" for k in PANEL_LOINC]
        assert newest["cells"][4] == "preliminary, index draw"
        page.screenshot(path=str(tmp_path / "trend-app-table.png"), full_page=True)

        # The assessment beside it, with the row of the decision table that decided it.
        assessment = page.inner_text("#assessment")
        assert "Risk moderate" in assessment and "Findings" in assessment
        row_link = page.get_attribute("#assessment a[href*='/rules#row-']", "href")
        assert row_link is not None and row_link.startswith(f"{base}/rules#row-")
        assert not problems, problems
    print(f"screenshot: {tmp_path / 'trend-app.png'}")


# --- SMART App Launch 2.0: EHR launch, discovery, authorisation code with PKCE ---------------

EHR = "https://ehr.invalid"
ISS = f"{EHR}/fhir"
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "*"}


def test_an_ehr_launch_signs_in_with_pkce_and_reads_with_the_token(
    browser: Any,
    fresh_fhir_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The EHR and its authorisation server are played by routes in the browser; the FHIR
    reads go on to the local FHIR server only when they carry the issued token."""
    import base64
    import hashlib
    from urllib.parse import parse_qs, urlencode, urlparse

    assert BUILT_MARKER.is_file(), "the app's libraries are not built: run `make app`"
    resources = sample_resources(SAMPLE, now=datetime.now(UTC))
    load_into(fresh_fhir_server, resources)
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    seen: dict[str, Any] = {"fhir": []}

    def discovery(route: Any) -> None:
        config = {
            "authorization_endpoint": f"{EHR}/auth/authorize",
            "token_endpoint": f"{EHR}/auth/token",
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "client-public", "context-ehr-patient"],
        }
        route.fulfill(status=200, json=config, headers=CORS)

    def authorize(route: Any) -> None:
        query = {k: v[0] for k, v in parse_qs(urlparse(route.request.url).query).items()}
        seen["authorize"] = query
        back = f"{query['redirect_uri']}?{urlencode({'code': 'code-1', 'state': query['state']})}"
        route.fulfill(status=302, headers={"Location": back})

    def token(route: Any) -> None:
        if route.request.method == "OPTIONS":
            route.fulfill(status=204, headers=CORS)
            return
        form = {k: v[0] for k, v in parse_qs(route.request.post_data or "").items()}
        seen["token"] = form
        body = {
            "access_token": "token-1",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": seen["authorize"]["scope"],
            "patient": patient,
        }
        route.fulfill(status=200, json=body, headers=CORS)

    def fhir(route: Any) -> None:
        request = route.request
        if request.method == "OPTIONS":
            route.fulfill(status=204, headers=CORS)
            return
        auth = request.headers.get("authorization")
        seen["fhir"].append((request.url, auth))
        if auth != "Bearer token-1":
            route.fulfill(status=401, headers=CORS, body="")
            return
        response = route.fetch(url=request.url.replace(ISS, fresh_fhir_server), headers={})
        route.fulfill(response=response, headers={**response.headers, **CORS})

    with running_service(tmp_path) as base:
        page = browser.new_page()
        page.route(f"{ISS}/**", fhir)  # registered first: later routes take precedence
        page.route(f"{ISS}/.well-known/smart-configuration", discovery)
        page.route(f"{EHR}/auth/authorize*", authorize)
        page.route(f"{EHR}/auth/token", token)
        page.goto(f"{base}/app/?{urlencode({'iss': ISS, 'launch': 'launch-1'})}")
        page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        status = page.inner_text("#status")
        assert page.get_attribute("body", "data-ready") == "true", status

    asked = seen["authorize"]
    assert asked["response_type"] == "code" and asked["client_id"] == "fhir-leuko-trend"
    assert asked["launch"] == "launch-1" and asked["aud"] == ISS
    assert set(asked["scope"].split()) >= {"launch", "patient/Observation.rs", "patient/Patient.r"}
    assert asked["redirect_uri"] == f"{base}/app/"
    # PKCE: the verifier sent with the code hashes to the challenge sent before it (S256).
    assert asked["code_challenge_method"] == "S256"
    verifier = seen["token"]["code_verifier"]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == asked["code_challenge"]
    assert seen["token"]["grant_type"] == "authorization_code"
    assert seen["token"]["code"] == "code-1"
    # Every FHIR read carried the token; the CBCs were read for the launch's patient.
    assert seen["fhir"] and all(auth == "Bearer token-1" for _, auth in seen["fhir"])
    assert any("Observation?patient=" + patient in url for url, _ in seen["fhir"])

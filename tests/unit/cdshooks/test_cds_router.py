"""The HTTP service as an EHR sees it: discovery, calls, errors, JWT, CORS and feedback."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cds_conformance import assert_conformant
from fastapi.testclient import TestClient

from fhir_leuko.app import create_app
from fhir_leuko.cdshooks import services
from fhir_leuko.cdshooks.feedback import FeedbackStore
from fhir_leuko.config import IssuerTrustConfig, ServiceSettings, Settings
from fhir_leuko.fhirio import codes
from tests.builders import NOW, at, bundle, cbc, condition, med, order, patient
from tests.jwtkeys import EC_KEY, RSA_KEY, public_jwk, write_jwks

FIXTURES = Path(__file__).parents[2] / "fixtures" / "cds"
BASE = "https://cds.example.org"
PV = "/cds-services/leukopenia-patient-view"
OS = "/cds-services/leukopenia-medication-check"
SANDBOX = "https://sandbox.cds-hooks.org"

EHR_ISS = "https://ehr.example.org/api/FHIR/R4"
EHR_KID = "ehr-rs384-2026"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"

RSA_JWK = public_jwk(RSA_KEY, EHR_KID, use="sig")
EC_JWK = public_jwk(EC_KEY, SANDBOX_KID)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def pv_request(**prefetch: Any) -> dict[str, Any]:
    """A patient-view call with every prefetch key; keyword arguments replace keys."""
    keys: dict[str, Any] = {q.key: None for q in services.PATIENT_VIEW.prefetch}
    keys["patient"] = patient()
    keys["cbc"] = bundle(cbc(1.2, 0.4), type_="searchset")
    keys.update(prefetch)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": {k: v for k, v in keys.items() if v != "omit"},
    }


def make_settings(tmp_path: Path, **service: Any) -> Settings:
    jwks = write_jwks(tmp_path / "ehr-jwks.json", RSA_JWK)
    svc = {
        "public_base_url": BASE,
        "feedback_db": str(tmp_path / "feedback.sqlite3"),
        "cors_origins": (SANDBOX,),
        **service,
    }
    return Settings(
        service=ServiceSettings(**svc),
        issuers={
            EHR_ISS: IssuerTrustConfig(jwks_file=str(jwks)),
            SANDBOX_ISS: IssuerTrustConfig(jku_allowlist=(SANDBOX_JKU,)),
        },
    )


@pytest.fixture
def client(tmp_path: Path, app_client: Callable[..., TestClient]) -> TestClient:
    """Insecure-dev mode: the JWT is tested separately below."""
    return app_client(make_settings(tmp_path, insecure_dev=True))


@pytest.fixture
def secured(tmp_path: Path, app_client: Callable[..., TestClient]) -> TestClient:
    return app_client(make_settings(tmp_path))


def epic_token(aud: str, **claims: Any) -> str:
    """Like Epic: RS384, 15 min, with nbf and sub."""
    now = int(__import__("time").time())
    payload = {
        "iss": EHR_ISS,
        "aud": aud,
        "iat": now,
        "nbf": now - 300,
        "exp": now + 900,
        "jti": str(uuid.uuid4()),
        "sub": "cds-client-1",
        **claims,
    }
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None},
        RSA_KEY,
        algorithm="RS384",
        headers={"kid": EHR_KID, "typ": "JWT"},
    )


def sandbox_token(aud: str) -> str:
    """Like the public sandbox: ES384, jku, 300 s, no sub, no nbf, no tenant."""
    now = int(__import__("time").time())
    payload = {
        "iss": SANDBOX_ISS,
        "aud": aud,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(
        payload,
        EC_KEY,
        algorithm="ES384",
        headers={"kid": SANDBOX_KID, "jku": SANDBOX_JKU, "typ": "JWT"},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- Discovery -----------------------------------------------------------------------------------


def test_discovery_lists_both_services_with_their_prefetch(client: TestClient) -> None:
    body = client.get("/cds-services").json()
    by_id = {s["id"]: s for s in body["services"]}
    pv = by_id["leukopenia-patient-view"]
    assert pv["hook"] == "patient-view"
    assert pv["title"] and pv["description"] and pv["usageRequirements"]
    assert set(pv["prefetch"]) >= {
        "patient",
        "cbc",
        "temperatures",
        "medications",
        "conditions",
        "openOrders",
    }
    assert pv["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    cbc_query = pv["prefetch"]["cbc"]
    assert "_sort=-date" in cbc_query
    assert all(f"{codes.LOINC}|{c}" in cbc_query for c in codes.CBC_LOINC)
    assert "status=draft,active" in pv["prefetch"]["openOrders"]
    assert by_id["leukopenia-medication-check"]["hook"] == "order-select"


def test_templates_use_only_the_patient_token(client: TestClient) -> None:
    for service in client.get("/cds-services").json()["services"]:
        for template in service["prefetch"].values():
            rest = template.replace("{{context.patientId}}", "")
            assert "{{" not in rest, template


# --- Calls ---------------------------------------------------------------------------------------


def test_patient_view_with_full_prefetch_returns_conformant_cards(client: TestClient) -> None:
    r = client.post(PV, json=pv_request())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert_conformant(body)
    assert body["cards"][0]["indicator"] == "critical"


def test_no_leukopenia_is_an_empty_card_list(client: TestClient) -> None:
    r = client.post(PV, json=pv_request(cbc=bundle(cbc(6.5, 3.9), type_="searchset")))
    assert r.json() == {"cards": []}


def test_null_prefetch_means_no_data_not_an_error(client: TestClient) -> None:
    r = client.post(PV, json=pv_request(cbc=None))
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_missing_optional_key_without_a_server_is_named_on_the_card(client: TestClient) -> None:
    r = client.post(PV, json=pv_request(temperatures="omit"))
    detail = r.json()["cards"][0]["detail"]
    assert "Not available: body temperatures" in detail


def test_missing_required_key_without_a_server_is_412(client: TestClient) -> None:
    r = client.post(PV, json=pv_request(cbc="omit"))
    assert r.status_code == 412
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "'cbc' was not prefetched" in outcome["issue"][0]["diagnostics"]


def test_spec_example_request_is_accepted_and_fetches_what_it_lacks(tmp_path: Path) -> None:
    # The spec's own example prefetches only "patientToGreet", a key we do not ask for.
    settings = make_settings(
        tmp_path, insecure_dev=True, fhir_server_allowlist=("https://fhir.example.org",)
    )
    with (
        respx.mock(base_url="https://fhir.example.org") as fhir,
        TestClient(create_app(settings)) as c,
    ):
        fhir.get("/Patient/1288992").respond(
            json={
                "resourceType": "Patient",
                "id": "1288992",
                "gender": "male",
                "birthDate": "1925-12-23",
            }
        )
        empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
        fhir.get("/Observation").respond(json=empty)
        fhir.get("/DiagnosticReport").respond(json=empty)
        fhir.get("/MedicationRequest").respond(json=empty)
        fhir.get("/Condition").respond(json=empty)
        fhir.get("/ServiceRequest").respond(json=empty)
        r = c.post(PV, json=fixture("spec-patient-view.json"))
        assert r.status_code == 200, r.text
        assert r.json() == {"cards": []}
        sent = fhir.calls.last.request
        assert sent.headers["Authorization"] == "Bearer some-opaque-fhir-access-token"


def test_spec_example_server_not_allowlisted_is_412_without_any_call(client: TestClient) -> None:
    with respx.mock(assert_all_called=False) as anything:
        r = client.post(PV, json=fixture("spec-patient-view.json"))
    assert r.status_code == 412
    assert "allowlist" in r.json()["issue"][0]["diagnostics"]
    assert not anything.calls


def test_quick_start_example_is_febrile_neutropenia(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's first call. Its dates are the day before this clock.
    monkeypatch.setattr("fhir_leuko.cdshooks.router.utc_now", lambda: NOW)
    r = client.post(PV, json=fixture("patient-view-febrile-neutropenia.json"))
    body = r.json()
    assert_conformant(body)
    [card] = body["cards"]
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Febrile neutropenia")


def test_spec_order_select_example_without_risky_drug_needs_no_data(client: TestClient) -> None:
    # Amoxicillin and a pureed diet: nothing to check, so no prefetch and no fetch are needed.
    r = client.post(OS, json=fixture("spec-order-select-r4.json"))
    assert r.status_code == 200
    assert r.json() == {"cards": []}


def test_sandbox_methotrexate_with_neutropenia_warns(client: TestClient) -> None:
    request = fixture("sandbox-order-select-methotrexate.json")
    request["prefetch"] = {
        "patient": patient(pid="smart-1288992"),
        "cbc": bundle(
            [
                dict(o, subject={"reference": "Patient/smart-1288992"})
                for o in cbc(2.9, 0.9, when=at(0))
            ],
            type_="searchset",
        ),
        "temperatures": None,
    }
    r = client.post(OS, json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert_conformant(body)
    [card] = body["cards"]
    assert card["summary"].startswith("Methotrexate with moderate neutropenia (ANC 0.9")
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/request-123"


def test_sandbox_patient_view_fetches_from_an_open_server(tmp_path: Path) -> None:
    # The sandbox sends no fhirAuthorization: an open test server is read without a token.
    r4 = "https://launch.smarthealthit.org/v/r4/fhir"
    settings = make_settings(tmp_path, insecure_dev=True, fhir_server_allowlist=(r4,))
    searchset = {"resourceType": "Bundle", "type": "searchset"}
    labs = bundle(
        [dict(o, subject={"reference": "Patient/smart-1288992"}) for o in cbc(3.2, 1.3)],
        type_="searchset",
    )
    with respx.mock(base_url=r4) as fhir, TestClient(create_app(settings)) as c:
        fhir.get(
            "/Observation", params={"code": services.CBC.template.split("code=")[1].split("&")[0]}
        ).respond(json=labs)
        fhir.get("/Observation").respond(json=searchset)
        for kind in ("DiagnosticReport", "MedicationRequest", "Condition", "ServiceRequest"):
            fhir.get(f"/{kind}").respond(json=searchset)
        r = c.post(PV, json=fixture("sandbox-patient-view.json"))
        assert r.status_code == 200, r.text
        assert all("Authorization" not in call.request.headers for call in fhir.calls)
    assert "mild neutropenia" in r.json()["cards"][0]["summary"].lower()


# --- Request errors: 400 with a precise message -----------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance is missing"),
        (lambda b: b.update(hook="order-select"), "answers the patient-view hook"),
        (lambda b: b.update(context=[]), "context"),
        (lambda b: b["context"].pop("patientId"), "context.patientId is missing"),
        (lambda b: b["context"].update(patientId="p1&_count=1"), "context.patientId has the wrong"),
        (lambda b: b["context"].update(userId="Device/1"), "context.userId has the wrong format"),
        (lambda b: b.update(hookInstance=42), "hookInstance"),
        (lambda b: b.update(fhirServer="not a url"), "fhirServer has the wrong format"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            "fhirServer is required when fhirAuthorization is sent",
        ),
        (
            lambda b: b.update(
                fhirServer="https://f.example",
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "MAC",
                    "expires_in": 300,
                    "scope": "s",
                    "subject": "c",
                },
            ),
            "fhirAuthorization.token_type",
        ),
        (lambda b: b.update(prefetch=[1]), "prefetch"),
    ],
)
def test_non_conformant_requests_are_400_with_the_field_named(
    client: TestClient, change: Any, message: str
) -> None:
    body = pv_request()
    change(body)
    r = client.post(PV, json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["issue"][0]["diagnostics"]


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post(PV, content=b'{"hook": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["issue"][0]["diagnostics"]


def test_a_leading_byte_order_mark_is_skipped(client: TestClient) -> None:
    """RFC 8259 8.1 lets a parser ignore a UTF-8 BOM; a Windows-built client may send one."""
    bom = b"\xef\xbb\xbf"
    ctype = {"Content-Type": "application/json"}
    r = client.post(PV, content=bom + json.dumps(pv_request()).encode(), headers=ctype)
    assert r.status_code == 200, r.text
    assert r.json()["cards"][0]["indicator"] == "critical"
    feedback = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-03-10T12:00:00Z",
            }
        ]
    }
    r = client.post(PV + "/feedback", content=bom + json.dumps(feedback).encode(), headers=ctype)
    assert r.status_code == 200, r.text


def test_json_that_is_not_an_object_is_400(client: TestClient) -> None:
    r = client.post(PV, content=b"[]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON object" in r.json()["issue"][0]["diagnostics"]


def test_other_media_types_are_415(client: TestClient) -> None:
    r = client.post(PV, content=b"hook=patient-view", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_bodies_over_the_limit_are_413_before_parsing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, insecure_dev=True, max_body_bytes=1000)
    with TestClient(create_app(settings)) as c:
        r = c.post(PV, content=b" " * 1001, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.json()["issue"][0]["code"] == "too-long"


def test_chunked_bodies_over_the_limit_are_413(tmp_path: Path) -> None:
    # No Content-Length to check up front: the guard counts the bytes as they arrive.
    settings = make_settings(tmp_path, insecure_dev=True, max_body_bytes=1000)

    def chunks() -> Iterator[bytes]:
        yield b'{"hook": "patient-view", "pad": "'
        yield b"x" * 2000
        yield b'"}'

    with TestClient(create_app(settings)) as c:
        r = c.post(PV, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_order_select_selection_must_be_in_draft_orders(client: TestClient) -> None:
    request = fixture("sandbox-order-select-methotrexate.json")
    request["context"]["selections"] = ["MedicationRequest/other"]
    r = client.post(OS, json=request)
    assert r.status_code == 400
    assert "not in draftOrders" in r.json()["issue"][0]["diagnostics"]


def test_unknown_service_is_404(client: TestClient) -> None:
    r = client.post("/cds-services/nope", json=pv_request())
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


def test_token_bound_to_another_patient_is_refused(client: TestClient) -> None:
    body = pv_request()
    body["fhirServer"] = "https://fhir.example.org"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "c",
        "patient": "other",
    }
    r = client.post(PV, json=body)
    assert r.status_code == 400


def test_prefetched_patient_must_be_the_context_patient(client: TestClient) -> None:
    # Else a child's limits (or another sex's haemoglobin limit) would apply silently.
    r = client.post(PV, json=pv_request(patient=patient(birth="2020-01-01", pid="someone-else")))
    assert r.status_code == 400
    assert "prefetch.patient is not the Patient of context.patientId" in r.text


def _of_p2(resource: dict[str, Any]) -> dict[str, Any]:
    return dict(resource, subject={"reference": "Patient/p2"})


def test_prefetch_results_of_another_patient_are_not_used(client: TestClient) -> None:
    # Patient p2's profound neutropenia, in p1's prefetch, must not act on p1 (normal count).
    mixed = bundle(cbc(6.0, 3.0) + [_of_p2(o) for o in cbc(1.0, 0.05)], type_="searchset")
    r = client.post(PV, json=pv_request(cbc=mixed))
    assert r.status_code == 200
    assert r.json() == {"cards": []}


@pytest.mark.parametrize(
    ("server", "card"),
    [("https://ehr.example.org/fhir", True), ("https://elsewhere.example.org/fhir", False)],
)
def test_an_absolute_subject_counts_only_on_the_calls_fhir_server(
    client: TestClient, server: str, card: bool
) -> None:
    # Patient/p1 on another server is another person (issue: a subject on another server).
    obs = [dict(o, subject={"reference": f"{server}/Patient/p1"}) for o in cbc(1.0, 0.05)]
    body = pv_request(cbc=bundle(obs, type_="searchset"))
    body["fhirServer"] = "https://ehr.example.org/fhir"
    r = client.post(PV, json=body)
    assert r.status_code == 200
    assert bool(r.json()["cards"]) is card
    if card:
        assert "0.05" in json.dumps(r.json())


def test_another_patients_medication_order_and_condition_never_act_on_this_patient(
    client: TestClient,
) -> None:
    # The attack probe's case: p2's clozapine, open repeat CBC and HIV in p1's patient-view.
    own = bundle(cbc(3.2, 0.8), type_="searchset")  # moderate neutropenia: a repeat CBC is due
    alone = client.post(PV, json=pv_request(cbc=own)).json()
    mixed = client.post(
        PV,
        json=pv_request(
            cbc=own,
            medications=bundle(_of_p2(med("clozapine", "2626")), type_="searchset"),
            conditions=bundle(
                _of_p2(condition("HIV infection", ("http://snomed.info/sct", "86406008"))),
                type_="searchset",
            ),
            openOrders=bundle(_of_p2(order("http://loinc.org", "57021-8")), type_="searchset"),
        ),
    ).json()
    text = json.dumps(mixed)
    assert "clozapine" not in text.lower() and "HIV" not in text and "p2" not in text

    def shown(body: dict[str, Any]) -> list[Any]:
        return [
            (c["summary"], c["indicator"], sorted(s["label"] for s in c.get("suggestions", ())))
            for c in body["cards"]
        ]

    assert alone["cards"] and shown(mixed) == shown(alone)
    assert any("CBC" in s["label"] for s in mixed["cards"][0].get("suggestions", ()))


def test_an_unexpected_error_is_a_bare_500_and_its_message_is_not_logged(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Mrs Smith, born 1970-05-01")

    monkeypatch.setattr("fhir_leuko.cdshooks.handlers.patient_view_response", broken)
    with caplog.at_level(logging.DEBUG):
        r = client.post(PV, json=pv_request())
    assert r.status_code == 500
    assert r.json()["issue"][0]["diagnostics"] == "The service could not answer this request"
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "RuntimeError at test_cds_router.py:" in logged  # type and place of the raise
    assert "Mrs Smith" not in logged and "Mrs Smith" not in r.text


# --- CORS and health ----------------------------------------------------------------------------


def test_preflight_from_a_configured_origin_needs_no_jwt(secured: TestClient) -> None:
    r = secured.options(
        PV,
        headers={
            "Origin": SANDBOX,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == SANDBOX
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_preflight_to_a_local_service_answers_private_network_access(secured: TestClient) -> None:
    # Chrome asks before a public page (the sandbox) may call localhost or an intranet host.
    headers = {
        "Origin": SANDBOX,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Private-Network": "true",
    }
    r = secured.options(PV, headers=headers)
    assert r.status_code == 200
    assert r.headers["access-control-allow-private-network"] == "true"


def test_preflight_from_another_origin_is_not_allowed(secured: TestClient) -> None:
    r = secured.options(
        PV, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


def test_healthz_needs_no_jwt(secured: TestClient) -> None:
    assert secured.get("/healthz").json() == {"status": "ok"}


# --- JWT ---------------------------------------------------------------------------------------


def test_epic_style_rs384_token_from_a_configured_jwks_is_accepted(secured: TestClient) -> None:
    r = secured.post(PV, json=pv_request(), headers=bearer(epic_token(BASE + PV)))
    assert r.status_code == 200, r.text


def test_sandbox_style_es384_token_with_allowlisted_jku_is_accepted(secured: TestClient) -> None:
    with respx.mock() as net:
        net.get(SANDBOX_JKU).respond(json={"keys": [EC_JWK]})
        r = secured.get("/cds-services", headers=bearer(sandbox_token(BASE + "/cds-services")))
        assert r.status_code == 200
        r = secured.post(PV, json=pv_request(), headers=bearer(sandbox_token(BASE + PV)))
        assert r.status_code == 200
        assert net.calls.call_count == 1  # the JWKS is cached


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-jwt",
        pytest.param(lambda: epic_token(BASE + "/cds-services/other"), id="aud-other-service"),
        pytest.param(lambda: epic_token(BASE + PV + "/feedback"), id="aud-feedback-url"),
        pytest.param(
            lambda: epic_token(BASE + PV, exp=1_000_000_000, iat=999_999_000, nbf=None),
            id="expired",
        ),
        pytest.param(lambda: epic_token(BASE + PV, iss="https://unknown.example"), id="iss"),
        pytest.param(lambda: epic_token(BASE + PV, jti=None), id="no-jti"),
        pytest.param(
            lambda: jwt.encode(
                {"iss": EHR_ISS, "aud": BASE + PV, "iat": 1, "exp": 2**31, "jti": "x"},
                "secret-secret-secret-secret-32bytes",
                algorithm="HS256",
                headers={"kid": EHR_KID},
            ),
            id="hmac",
        ),
    ],
)
def test_bad_tokens_get_a_bare_401(secured: TestClient, token: Any) -> None:
    value = token() if callable(token) else token
    headers = bearer(value) if value else {}
    r = secured.post(PV, json=pv_request(), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["issue"][0]["diagnostics"] == "Authentication failed"


def test_a_replayed_token_is_refused(secured: TestClient) -> None:
    token = epic_token(BASE + PV)
    assert secured.post(PV, json=pv_request(), headers=bearer(token)).status_code == 200
    assert secured.post(PV, json=pv_request(), headers=bearer(token)).status_code == 401


def test_jku_not_on_the_allowlist_is_never_fetched(secured: TestClient) -> None:
    now = int(__import__("time").time())
    token = jwt.encode(
        {"iss": SANDBOX_ISS, "aud": BASE + PV, "iat": now, "exp": now + 60, "jti": "j1"},
        EC_KEY,
        algorithm="ES384",
        headers={"kid": SANDBOX_KID, "jku": "https://attacker.example/jwks"},
    )
    with respx.mock(assert_all_called=False) as net:
        r = secured.post(PV, json=pv_request(), headers=bearer(token))
    assert r.status_code == 401
    assert not net.calls


def test_discovery_needs_a_jwt_unless_configured_public(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.get("/cds-services").status_code == 401
    with TestClient(create_app(make_settings(tmp_path, public_discovery=True))) as c:
        assert c.get("/cds-services").status_code == 200


def test_tenant_allowlist_per_issuer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    issuers = dict(settings.issuers)
    issuers[EHR_ISS] = IssuerTrustConfig(
        jwks_file=issuers[EHR_ISS].jwks_file, tenants=("hospital-a",)
    )
    app = create_app(Settings(service=settings.service, issuers=issuers))
    with TestClient(app) as c:
        ok = c.post(
            PV, json=pv_request(), headers=bearer(epic_token(BASE + PV, tenant="hospital-a"))
        )
        other = c.post(
            PV, json=pv_request(), headers=bearer(epic_token(BASE + PV, tenant="hospital-b"))
        )
    assert (ok.status_code, other.status_code) == (200, 401)


def test_no_trusted_issuer_is_announced_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(Settings(service=ServiceSettings(public_base_url=BASE)))
    assert any("every CDS Hooks call will be refused" in r.getMessage() for r in caplog.records)


def test_insecure_dev_is_announced_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(make_settings(tmp_path, insecure_dev=True))
    assert any(
        "INSECURE DEV MODE" in r.getMessage() and r.levelno >= logging.WARNING
        for r in caplog.records
    )


def test_logs_hold_no_token_and_no_patient_data(
    secured: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = epic_token(BASE + PV)
    body = pv_request()
    with caplog.at_level(logging.DEBUG):
        secured.post(PV, json=body, headers=bearer(token))
        secured.post(PV, json=body, headers=bearer(token))  # replay: logged as a 401
        secured.post(
            PV + "/feedback",
            headers=bearer(epic_token(BASE + PV + "/feedback")),
            json={
                "feedback": [
                    {
                        "card": "c1",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-03-10T10:00:00Z",
                        "overrideReason": {"userComment": "Mrs Smith, 1970"},
                    }
                ]
            },
        )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in text and token.split(".")[2] not in text
    assert "Mrs Smith" not in text
    assert "p1" not in text.replace("leukopenia", "")  # the patient id
    assert "1970-05-01" not in text


# --- Feedback ----------------------------------------------------------------------------------


def test_feedback_is_stored_for_audit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, insecure_dev=True)
    with TestClient(create_app(settings)) as c:
        card = c.post(PV, json=pv_request()).json()["cards"][0]
        items = [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "outcomeTimestamp": "2026-03-10T10:05:31Z",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            },
            # The sandbox's dismiss: a reason without display.
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-03-10T10:06:00Z",
                "overrideReason": {
                    "reason": {
                        "code": "already-addressed",
                        "system": card["overrideReasons"][0]["system"],
                    }
                },
            },
        ]
        r = c.post(PV + "/feedback", json={"feedback": items})
        assert r.status_code == 200
        assert c.post(PV + "/feedback", json={"feedback": items}).status_code == 200  # resend
    with FeedbackStore(settings.service.feedback_db) as store:
        summary = store.summary("leukopenia-patient-view")
    assert summary["by_outcome"] == {"accepted": 1, "overridden": 1}
    assert summary["by_override_reason"][0]["code"] == "already-addressed"


def test_bad_feedback_is_400(client: TestClient) -> None:
    r = client.post(PV + "/feedback", json={"feedback": [{"card": "x", "outcome": "maybe"}]})
    assert r.status_code == 400
    assert "outcome" in r.json()["issue"][0]["diagnostics"]


def test_feedback_for_an_unknown_service_is_404(client: TestClient) -> None:
    r = client.post("/cds-services/nope/feedback", json={"feedback": [{"card": "x"}]})
    assert r.status_code == 404


def test_feedback_needs_the_feedback_url_as_audience(secured: TestClient) -> None:
    items = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-03-10T10:00:00Z"}
        ]
    }
    wrong = secured.post(PV + "/feedback", json=items, headers=bearer(epic_token(BASE + PV)))
    right = secured.post(
        PV + "/feedback", json=items, headers=bearer(epic_token(BASE + PV + "/feedback"))
    )
    assert (wrong.status_code, right.status_code) == (401, 200)


def test_respx_is_not_needed_for_prefetch_only_calls(client: TestClient) -> None:
    # With every key prefetched, no HTTP leaves the service.
    with respx.mock(assert_all_called=False) as net:
        assert client.post(PV, json=pv_request()).status_code == 200
    assert not net.calls
    assert isinstance(httpx.Response(200), httpx.Response)


def test_with_no_trusted_client_the_service_starts_and_refuses_every_hook_call() -> None:
    # `make serve` on a new machine: it must start, and it must never fail open.
    from fhir_leuko.config import Settings as _Settings

    app = create_app(_Settings())
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post(
            "/cds-services/leukopenia-patient-view",
            json={
                "hook": "patient-view",
                "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                "context": {"userId": "Practitioner/1", "patientId": "1"},
            },
        )
        assert r.status_code == 401
        assert c.get("/cds-services").status_code == 401

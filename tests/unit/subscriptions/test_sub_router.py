"""The notification endpoint as servers call it: every shape of docs/subscriptions.md §5.

The worker is off here: these tests show what is stored and answered, fast, before any
evaluation (the worker's own tests cover what happens next).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint
from fhir_leuko.errors import ConfigError
from fhir_leuko.storage import StorageError
from fhir_leuko.subscriptions import router as router_module
from fhir_leuko.subscriptions.queue import Queue
from fhir_leuko.subscriptions.router import build_router, check_endpoints

NOTIFICATIONS = Path(__file__).resolve().parents[2] / "fixtures" / "notifications"
SECRET = {"Authorization": "Bearer tok-7Qx"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
HAPI_JSON = {"Content-Type": "application/fhir+json; charset=UTF-8"}
MEDPLUM_KEY = "medplum-signing-secret"
T0 = 1_772_604_000.0  # 2026-03-04T06:00:00Z


def body(name: str) -> bytes:
    return (NOTIFICATIONS / name).read_bytes()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        service=ServiceSettings(
            queue_db=str(tmp_path / "queue.sqlite3"),
            worker_enabled=False,
            max_body_bytes=64 * 1024,
            gap_grace_s=30.0,
        ),
        endpoints={
            "hapi": SubscriptionEndpoint(
                fhir_base="https://hapi.example.org/fhir", header_value="Bearer tok-7Qx"
            ),
            "ehr": SubscriptionEndpoint(
                fhir_base="https://ehr.example.org/fhir", header_value="Bearer tok-7Qx"
            ),
            "medplum": SubscriptionEndpoint(
                fhir_base="https://api.medplum.com/fhir/R4", hmac_secret=MEDPLUM_KEY
            ),
        },
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(build_router(settings, clock=lambda: T0))
    with TestClient(app) as c:
        yield c


def jobs(settings: Settings) -> list[dict[str, Any]]:
    db = sqlite3.connect(settings.service.queue_db)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "SELECT kind, dedupe_key, payload, next_attempt_at FROM jobs ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in rows]


def outcome(response: Any) -> dict[str, Any]:
    doc: dict[str, Any] = response.json()
    assert doc["resourceType"] == "OperationOutcome"
    return doc


# ----------------------------------------------------------------- classic R4 (HAPI)


def test_hapi_ping_is_204_and_asks_for_one_catch_up_search(
    client: TestClient, settings: Settings
) -> None:
    r = client.post("/notify/hapi", headers={**SECRET, "Content-Length": "0"})

    assert r.status_code == 204 and r.content == b""
    [job] = jobs(settings)
    assert job["kind"] == "catch-up"
    assert job["payload"] == {"endpoint": "hapi", "sub": "hapi/-", "through": None}


def test_a_burst_of_pings_shares_one_catch_up_search(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(5):
        assert client.post("/notify/hapi", headers=SECRET).status_code == 204

    assert [j["kind"] for j in jobs(settings)] == ["catch-up"]


def test_hapi_payload_put_below_the_endpoint_is_accepted_and_if_match_ignored(
    client: TestClient, settings: Settings
) -> None:
    headers = {**SECRET, **HAPI_JSON, "If-Match": '"2"'}
    r = client.put(
        "/notify/hapi/Observation/obs-wbc-311",
        content=body("r4-payload-observation.json"),
        headers=headers,
    )

    assert r.status_code == 204
    [job] = jobs(settings)
    assert job["kind"] == "change"
    assert job["dedupe_key"] == "res:hapi:Observation/obs-wbc-311@2"
    assert job["payload"]["patient"] == "Patient/pt-58"
    assert "valueQuantity" not in str(job["payload"])  # the result itself is not stored


def test_a_resent_notification_is_204_and_stored_once(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(3):
        r = client.put(
            "/notify/hapi/Observation/obs-wbc-311",
            content=body("r4-payload-observation.json"),
            headers={**SECRET, **HAPI_JSON},
        )
        assert r.status_code == 204

    assert len(jobs(settings)) == 1


def test_hapi_delete_asks_for_a_re_evaluation_of_the_results_patient(
    client: TestClient, settings: Settings
) -> None:
    r = client.delete("/notify/hapi/Observation/obs-wbc-311", headers=SECRET)

    assert r.status_code == 204
    [job] = jobs(settings)
    assert job["dedupe_key"] == "del:hapi:Observation/obs-wbc-311"
    assert job["payload"]["deleted"] is True


def test_hapi_payload_search_transaction_queues_each_result(
    client: TestClient, settings: Settings
) -> None:
    r = client.post(
        "/notify/hapi",
        content=body("hapi-payload-search-transaction.json"),
        headers={**SECRET, **HAPI_JSON},
    )

    assert r.status_code == 204
    assert {j["kind"] for j in jobs(settings)} == {"change"}
    assert len(jobs(settings)) >= 1


# ----------------------------------------------------------------- topic-based (Backport, R5)


def test_backport_handshake_is_acknowledged_and_sets_the_baseline(
    client: TestClient, settings: Settings
) -> None:
    r = client.post(
        "/notify/ehr", content=body("backport-r4-handshake.json"), headers={**SECRET, **FHIR_JSON}
    )

    assert r.status_code == 204 and jobs(settings) == []
    with Queue(settings.service.queue_db) as q:
        state = q.subscription_state("ehr/sub-anc")
    assert state is not None and state.last_contiguous == 0


def test_heartbeat_reporting_events_we_never_got_schedules_their_recovery(
    client: TestClient, settings: Settings
) -> None:
    headers = {**SECRET, **FHIR_JSON}
    client.post("/notify/ehr", content=body("backport-r4-handshake.json"), headers=headers)
    r = client.post("/notify/ehr", content=body("backport-r4-heartbeat.json"), headers=headers)

    assert r.status_code == 204
    [job] = jobs(settings)
    assert job["kind"] == "catch-up" and job["dedupe_key"] == "gap:ehr/sub-anc:17"
    assert job["next_attempt_at"] == T0 + 30.0  # a missing event may still be in flight


@pytest.mark.parametrize(
    ("fixture", "key"),
    [
        ("backport-r4-event-id-only.json", "evt:ehr/sub-anc:17"),
        ("backport-r4-event-full-resource.json", "res:ehr:Observation/obs-neut-312@1"),
        ("r5-subscription-notification.json", "evt:ehr/sub-anc:17"),
        ("backport-r4b-history-status.json", "evt:ehr/sub-anc:23"),
        ("hapi-r4-topic-event-valuedate.json", None),
    ],
)
def test_topic_event_notifications_of_every_shape_queue_their_focus(
    client: TestClient, settings: Settings, fixture: str, key: str | None
) -> None:
    r = client.post("/notify/ehr", content=body(fixture), headers={**SECRET, **FHIR_JSON})

    assert r.status_code == 204
    changes = [j for j in jobs(settings) if j["kind"] == "change"]
    assert len(changes) == 1
    if key is not None:
        assert changes[0]["dedupe_key"] == key
    assert changes[0]["payload"]["focus"].startswith("Observation/")


def test_empty_content_event_asks_for_a_search(client: TestClient, settings: Settings) -> None:
    r = client.post(
        "/notify/ehr",
        content=body("backport-r4-event-empty.json"),
        headers={**SECRET, **FHIR_JSON},
    )

    assert r.status_code == 204
    assert [j["kind"] for j in jobs(settings)] == ["catch-up"]


def _event(number: int, focus: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{number:012d}",
                    "resource": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {
                                "name": "subscription",
                                "valueReference": {"reference": "Subscription/s1"},
                            },
                            {"name": "status", "valueCode": "active"},
                            {"name": "type", "valueCode": "event-notification"},
                            {"name": "events-since-subscription-start", "valueString": str(number)},
                            {
                                "name": "notification-event",
                                "part": [
                                    {"name": "event-number", "valueString": str(number)},
                                    {"name": "focus", "valueReference": {"reference": focus}},
                                ],
                            },
                        ],
                    },
                    "request": {"method": "GET", "url": "Subscription/s1/$status"},
                    "response": {"status": "200"},
                }
            ],
        }
    )


def test_events_out_of_order_are_each_queued_once_and_the_gap_is_watched(
    client: TestClient, settings: Settings
) -> None:
    headers = {**SECRET, **FHIR_JSON}
    for n in (21, 23, 22, 23):  # 23 before 22, then 23 again
        assert (
            client.post(
                "/notify/ehr", content=_event(n, f"Observation/o{n}"), headers=headers
            ).status_code
            == 204
        )

    keys = [j["dedupe_key"] for j in jobs(settings)]
    assert keys == ["evt:ehr/s1:21", "evt:ehr/s1:23", "gap:ehr/s1:23", "evt:ehr/s1:22"]
    with Queue(settings.service.queue_db) as q:
        state = q.subscription_state("ehr/s1")
    assert state is not None and state.last_contiguous == 23  # the gap closed by itself


# ----------------------------------------------------------------- Medplum (HMAC)


def _signed(data: bytes, key: str = MEDPLUM_KEY) -> dict[str, str]:
    sig = hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
    return {
        **FHIR_JSON,
        "X-Signature": sig,
        "X-Medplum-Subscription": "0f3a6c2e-91b4-4d7e-8a55-c1e0b9d4f7a2",
        "X-Medplum-Interaction": "update",
    }


def test_medplum_signed_resource_is_accepted(client: TestClient, settings: Settings) -> None:
    data = body("r4-payload-observation.json")

    r = client.post("/notify/medplum", content=data, headers=_signed(data))

    assert r.status_code == 204
    assert jobs(settings)[0]["dedupe_key"] == "res:medplum:Observation/obs-wbc-311@2"


def test_medplum_delete_with_its_empty_body_is_accepted(
    client: TestClient, settings: Settings
) -> None:
    data = body("medplum-delete.json")
    headers = {
        **_signed(data),
        "X-Medplum-Interaction": "delete",
        "X-Medplum-Deleted-Resource": "Observation/obs-wbc-311",
    }

    assert client.post("/notify/medplum", content=data, headers=headers).status_code == 204
    assert jobs(settings)[0]["payload"]["deleted"] is True


def test_medplum_signature_over_other_bytes_is_refused(
    client: TestClient, settings: Settings
) -> None:
    data = body("r4-payload-observation.json")
    tampered = data.replace(b"2.7", b"9.9")

    r = client.post("/notify/medplum", content=tampered, headers=_signed(data))

    assert r.status_code == 401 and jobs(settings) == []


# ----------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer tok-7Qx-and-more"}],
)
def test_wrong_or_missing_secret_is_401_before_the_body_is_read(
    client: TestClient, settings: Settings, headers: dict[str, str]
) -> None:
    r = client.post("/notify/hapi", content=b"this is not json", headers=headers)

    assert r.status_code == 401
    assert outcome(r)["issue"][0]["code"] == "login"
    assert jobs(settings) == []


def test_unknown_endpoint_name_is_404_outcome(client: TestClient) -> None:
    r = client.post("/notify/nobody", headers=SECRET)

    assert r.status_code == 404 and outcome(r)["issue"][0]["code"] == "not-found"


def test_unknown_shape_is_400_outcome_naming_the_problem(client: TestClient) -> None:
    r = client.post(
        "/notify/ehr",
        content=body("status-reply-searchset.json"),
        headers={**SECRET, **FHIR_JSON},
    )

    assert r.status_code == 400
    assert "searchset" in outcome(r)["issue"][0]["diagnostics"]


def test_xml_notifications_are_400_not_500(client: TestClient) -> None:
    r = client.post(
        "/notify/hapi",
        content=b'<Observation xmlns="http://hl7.org/fhir"/>',
        headers={**SECRET, "Content-Type": "application/fhir+xml"},
    )

    assert r.status_code == 400 and "XML" in outcome(r)["issue"][0]["diagnostics"]


def test_body_over_the_cap_is_413(client: TestClient, settings: Settings) -> None:
    big = b'{"resourceType": "Bundle", "type": "history", "pad": "' + b"x" * 70_000 + b'"}'

    r = client.post("/notify/ehr", content=big, headers={**SECRET, **FHIR_JSON})

    assert r.status_code == 413 and jobs(settings) == []


def test_queue_failure_is_503_so_the_server_resends(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        # What the storage layer turns a locked or failing database into.
        raise StorageError("the database is unavailable (OperationalError)")

    monkeypatch.setattr(router_module, "accept", broken)

    r = client.post("/notify/hapi", headers=SECRET)

    assert r.status_code == 503 and outcome(r)["issue"][0]["code"] == "transient"


def test_an_endpoint_without_a_secret_refuses_to_start(settings: Settings) -> None:
    open_door = dataclasses.replace(
        settings,
        endpoints={"open": SubscriptionEndpoint(fhir_base="https://x.example.org/fhir")},
    )
    with pytest.raises(ConfigError, match="header_value"):
        build_router(open_door)
    with pytest.raises(ConfigError, match="name"):
        check_endpoints({"bad name": SubscriptionEndpoint("https://x/fhir", header_value="s")})


def test_logs_carry_neither_bodies_nor_secrets(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = body("r4-payload-observation.json")
    client.put(
        "/notify/hapi/Observation/obs-wbc-311", content=data, headers={**SECRET, **HAPI_JSON}
    )
    client.post("/notify/hapi", content=b"{not json", headers={"Authorization": "Bearer guess"})

    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fhir_leuko"))
    assert "tok-7Qx" not in ours and "guess" not in ours
    assert "pt-58" not in ours and "obs-wbc-311" not in ours
    assert "r4-payload-put/resource to hapi: 1 new" in ours


def test_the_service_app_serves_notifications_next_to_cds_hooks(settings: Settings) -> None:
    from fhir_leuko.app import create_app

    svc = dataclasses.replace(settings.service, insecure_dev=True)
    app = create_app(dataclasses.replace(settings, service=svc))
    with TestClient(app) as c:
        assert c.post("/notify/hapi", headers=SECRET).status_code == 204
        too_big = c.post("/notify/hapi", content=b"x" * 70_000, headers=SECRET)
        assert too_big.status_code == 413
        assert c.get("/cds-services").status_code == 200
    assert [j["kind"] for j in jobs(settings)] == ["catch-up"]


def test_endpoint_secrets_load_from_the_toml_file(tmp_path: Path) -> None:
    from fhir_leuko.config import load_settings

    toml = tmp_path / "leuko.toml"
    toml.write_text(
        '[endpoints.hapi]\nfhir_base = "https://ehr.example.org/fhir"\n'
        'header_value = "Bearer s3cret"\ntoken = "t"\n'
    )

    endpoint = load_settings(toml, env={}).endpoints["hapi"]

    assert (endpoint.header_value, endpoint.token) == ("Bearer s3cret", "t")


def test_endpoint_settings_and_secrets_come_from_the_environment(tmp_path: Path) -> None:
    from fhir_leuko.config import load_settings

    toml = tmp_path / "leuko.toml"
    toml.write_text('[endpoints.hapi]\nfhir_base = "https://ehr.example.org/fhir"\n')
    env = {
        "FHIR_LEUKO_ENDPOINT__HAPI__HEADER_VALUE": "Bearer from-env",
        "FHIR_LEUKO_ENDPOINT__MEDPLUM__FHIR_BASE": "https://medplum.example.org/fhir/R4",
        "FHIR_LEUKO_ENDPOINT__MEDPLUM__HMAC_SECRET": "k",
    }

    settings = load_settings(toml, env=env)

    assert settings.endpoints["hapi"].header_value == "Bearer from-env"
    assert settings.endpoints["medplum"].hmac_secret == "k"
    assert settings.origins["endpoints.hapi.header_value"] == "environment"
    assert settings.audit()["endpoints"]["hapi"]["header_value"] == "***"


def test_an_endpoint_from_the_environment_needs_its_fhir_base() -> None:
    from fhir_leuko.config import load_settings

    with pytest.raises(ConfigError, match="FHIR_LEUKO_ENDPOINT__X__FHIR_BASE"):
        load_settings(env={"FHIR_LEUKO_ENDPOINT__X__TOKEN": "t"})

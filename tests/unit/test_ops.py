"""Operations endpoints: /healthz, /readyz (database, worker, backlog) and /metrics.

/metrics is read back with prometheus_client's own text parser, and each counter is checked
to move by exactly what the calls made just before did (other tests in the process share the
counters, so only differences are compared).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fhir_leuko.app import _run_checks, create_app
from fhir_leuko.cdshooks import services
from fhir_leuko.config import Settings, SubscriptionEndpoint
from fhir_leuko.metrics import jwt_rejection_reason
from fhir_leuko.subscriptions.queue import Queue
from fhir_leuko.subscriptions.worker import Worker, enqueue_change
from tests.builders import bundle, cbc, patient
from tests.postgres.harness import PgServer, ensure_installed

SECRET = {"Authorization": "Bearer tok-7Qx"}
PV = "/cds-services/leukopenia-patient-view"
PATIENT_ID = "pt-ops-4711"


@pytest.fixture
def settings_for(app_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """``settings_for(**service)``: the shared test settings with one notification endpoint."""
    hapi = SubscriptionEndpoint(
        fhir_base="https://hapi.example.org/fhir", header_value="Bearer tok-7Qx"
    )
    return lambda **service: app_settings(endpoints={"hapi": hapi}, **service)


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def pv_call() -> dict[str, object]:
    prefetch: dict[str, object] = {q.key: None for q in services.PATIENT_VIEW.prefetch}
    prefetch["patient"] = {**patient(), "id": PATIENT_ID}
    draw = [{**o, "subject": {"reference": f"Patient/{PATIENT_ID}"}} for o in cbc(1.2, 0.4)]
    prefetch["cbc"] = bundle(draw, type_="searchset")
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
        "prefetch": prefetch,
    }


@pytest.fixture
def client(
    settings_for: Callable[..., Settings], app_client: Callable[..., TestClient]
) -> TestClient:
    return app_client(settings_for())


def test_healthz_answers_without_touching_anything(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_parse_and_counters_move_with_the_calls(
    client: TestClient, tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    before = samples(client)
    assert client.post(PV, json=pv_call()).status_code == 200
    assert (
        client.post(PV, content=b"{", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert client.post("/notify/hapi", headers=SECRET).status_code == 204  # an R4 ping
    assert client.post("/notify/hapi", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # A job for an endpoint that is no longer configured is dead-lettered at once.
    with Queue(tmp_path / "queue.sqlite3") as q:
        enqueue_change(q, "gone", "Observation/o1", version="1", patient=f"Patient/{PATIENT_ID}")
        worker = Worker(q, settings_for())
        assert [o.state for o in worker.run_until_idle()] == ["dead"]
    after = samples(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    hook = {"service": "leukopenia-patient-view", "endpoint": "hook"}
    assert moved("fhir_leuko_cds_requests_total", **hook, status="200") == 1
    assert moved("fhir_leuko_cds_requests_total", **hook, status="400") == 1
    assert moved("fhir_leuko_cds_request_duration_seconds_count", **hook) == 2
    shapes = {dict(k[1]).get("shape") for k in after if k[0] == "fhir_leuko_notifications_total"}
    assert "unknown" in shapes  # the refused one was never parsed
    assert (
        sum(
            value(after, "fhir_leuko_notifications_total", shape=s, answer="204")
            - value(before, "fhir_leuko_notifications_total", shape=s, answer="204")
            for s in shapes
            if s is not None
        )
        == 1
    )
    assert moved("fhir_leuko_notifications_total", shape="unknown", answer="401") == 1
    assert moved("fhir_leuko_jobs_total", kind="change", outcome="dead") == 1
    assert moved("fhir_leuko_dead_letters_total", kind="change") == 1
    # The queue's gauges come from the database at scrape time: the ping's catch-up job.
    assert value(after, "fhir_leuko_queue_jobs", state="queued") == 1
    assert value(after, "fhir_leuko_queue_jobs", state="dead") == 1
    # No label anywhere carries the patient.
    assert PATIENT_ID not in client.get("/metrics").text


def test_jwt_rejections_are_counted_by_reason(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(insecure_dev=False)
    with TestClient(create_app(settings)) as c:
        before = samples(c)
        assert c.post(PV, json=pv_call()).status_code == 401
        assert (
            c.post(PV, json=pv_call(), headers={"Authorization": "Bearer x.y"}).status_code == 401
        )
        after = samples(c)
    # No issuer is configured: every call is refused before its token is read.
    key = ("fhir_leuko_jwt_rejections_total", frozenset({("reason", "not_configured")}))
    assert after[key] - before.get(key, 0.0) == 2


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("no Authorization header", "missing"),
        ("jti 'a-b' from 'https://ehr' was already used", "replay"),
        ("the JWT has expired", "expired"),
        ("the JWT aud does not name this endpoint ('https://x')", "audience"),
        ("the JWT signature does not verify", "signature"),
        ("issuer 'https://evil' is not on the allowlist", "issuer"),
        ("alg 'HS256' is forbidden by CDS Hooks (none or HMAC)", "algorithm"),
        ("the Bearer token is not a well-formed JWT", "malformed"),
        ("something new", "other"),
    ],
)
def test_rejection_reasons_are_a_small_fixed_vocabulary(message: str, reason: str) -> None:
    assert jwt_rejection_reason(message) == reason


def test_readyz_is_503_when_the_backlog_is_over_the_bound(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    with TestClient(create_app(settings_for(readyz_max_queue_depth=1))) as c:
        assert c.get("/readyz").status_code == 200
        with Queue(tmp_path / "queue.sqlite3") as q:
            for i in range(2):
                q.enqueue("change", {}, dedupe_key=f"k{i}", now=time.time() - 1)
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "readyz_max_queue_depth" in r.json()["checks"]["queue"]


def test_readyz_follows_the_database_and_the_worker(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    bindir = ensure_installed()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (tests/postgres/install.sh installs it)")
    server = PgServer(bindir)  # its own server: this test stops it
    server.start()
    try:
        settings = settings_for(
            database_url=server.url(),
            worker_enabled=True,
            worker_concurrency=2,
            worker_poll_s=0.05,
            db_timeout_s=10.0,  # a call waits this long for a connection ...
            readyz_timeout_s=1.0,  # ... the probe does not
        )
        with TestClient(create_app(settings)) as c:
            r = c.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"] == {"feedback": "ok", "queue": "ok", "worker": "ok"}
            server.stop()
            started = time.monotonic()
            r = c.get("/readyz")
            waited = time.monotonic() - started
            assert r.status_code == 503
            assert r.json()["checks"]["queue"] != "ok"
            # The answer came at the probe's bound, not after the database time-out.
            assert waited < 5, f"/readyz took {waited:.1f} s with the database down"
            assert c.get("/healthz").status_code == 200  # alive, just not ready
            server.start()
            deadline = time.monotonic() + 30
            while (r := c.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert r.status_code == 200, r.text
            # The worker survived the outage: its threads are still there.
            assert r.json()["checks"]["worker"] == "ok"
    finally:
        server.destroy()


def test_the_database_password_never_leaves_the_configuration() -> None:
    from fhir_leuko.config import load_settings, redact_url

    url = "postgresql://fhir_leuko:s3cr3t-pw@db.internal:5432/fhir_leuko?sslmode=require"
    settings = load_settings(env={"FHIR_LEUKO_DATABASE_URL": url})
    assert settings.service.database_url == url
    audited = settings.audit()["service"]["database_url"]
    assert "s3cr3t-pw" not in audited
    assert audited == "postgresql://fhir_leuko:***@db.internal:5432/fhir_leuko?sslmode=require"
    assert (
        redact_url("postgresql://db.internal/fhir_leuko") == "postgresql://db.internal/fhir_leuko"
    )
    assert settings.origins["service.database_url"] == "environment"


def test_fhir_server_errors_seen_by_a_cds_call_are_counted_by_status(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    import respx

    r4 = "https://fhir.example.org/r4"
    settings = settings_for(fhir_server_allowlist=(r4,))
    call = pv_call()
    prefetch = dict(call["prefetch"])  # type: ignore[call-overload]
    prefetch["medications"] = "omit"
    call["prefetch"] = {k: v for k, v in prefetch.items() if v != "omit"}
    call["fhirServer"] = r4
    with respx.mock(base_url=r4) as fhir, TestClient(create_app(settings)) as c:
        fhir.get("/MedicationRequest").respond(status_code=500, json={})
        before = samples(c)
        r = c.post(PV, json=call)
        assert r.status_code == 200, r.text  # the missing medications are a data issue
        after = samples(c)
    key = ("fhir_leuko_fhir_server_errors_total", frozenset({("status", "500"), ("source", "cds")}))
    assert after[key] - before.get(key, 0.0) == 1


def test_readiness_checks_run_side_by_side_and_a_stuck_one_fails_at_the_bound() -> None:
    release = threading.Event()

    def stuck() -> str | None:
        release.wait(30)
        return None

    def broken() -> str | None:
        raise RuntimeError("secret detail")

    checks = {"stuck": stuck, "ok": lambda: None, "busy": lambda: "3 jobs", "broken": broken}

    async def probe() -> tuple[dict[str, str], float]:
        started = time.monotonic()
        results = await _run_checks(checks, timeout_s=0.5, limiter=anyio.CapacityLimiter(8))
        return results, time.monotonic() - started

    try:
        results, waited = anyio.run(probe)
    finally:
        release.set()
    assert results == {
        "stuck": "no answer within 0.5 s",
        "ok": "ok",
        "busy": "3 jobs",
        "broken": "check failed (RuntimeError)",
    }
    assert 0.5 <= waited < 5

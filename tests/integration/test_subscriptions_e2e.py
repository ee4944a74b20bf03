"""New CBC results on a real FHIR server -> notification -> queue -> worker -> RiskAssessment and
ServiceRequests written back to that server, exactly once.

The FHIR server is Medplum's router on 127.0.0.1 (tests/integration/fhirserver). It does not
send notifications itself, so the tests play its notifying side with requests shaped as in
docs/subscriptions.md §5, about resources the server really holds (its ids and versions).
What is checked is always what the server ends up holding, counted by search.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sub_e2e_support as e2e
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhirserver.harness import fhir_server, fresh_fhir_server  # noqa: F401

from fhir_leuko.app import create_app
from fhir_leuko.cdshooks import router as cdshooks_router
from fhir_leuko.config import Settings
from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.subscriptions.queue import Queue
from fhir_leuko.subscriptions.router import build_router
from fhir_leuko.subscriptions.worker import Worker, open_queue
from tests.serve_process import free_port

pytestmark = pytest.mark.integration

PATIENT = "pt-e2e-1"


@pytest.fixture
def fhir(fresh_fhir_server: str) -> Iterator[FhirClient]:  # noqa: F811
    with e2e.local_client(fresh_fhir_server) as client:
        yield client


@pytest.fixture
def settings(fresh_fhir_server: str, tmp_path: Path) -> Settings:  # noqa: F811
    return e2e.settings_for(fresh_fhir_server, tmp_path / "queue.sqlite3")


@pytest.fixture
def receiver(settings: Settings) -> Iterator[TestClient]:
    """Our notification endpoint (worker off: the tests run it when they choose)."""
    app = FastAPI()
    app.include_router(build_router(settings))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def queue(settings: Settings) -> Iterator[Queue]:
    with open_queue(settings) as q:
        yield q


@pytest.fixture
def worker(queue: Queue, settings: Settings) -> Iterator[Worker]:
    w = Worker(queue, settings, client_factory=e2e.client_factory)
    yield w
    w.close()


def send(receiver: TestClient, d: e2e.Delivery) -> None:
    r = receiver.request(d.method, d.path, headers=d.headers, content=d.body)
    assert r.status_code == 204, r.text


def written(fhir: FhirClient, patient: str = PATIENT) -> tuple[int, int]:
    return e2e.count(fhir, "RiskAssessment", patient), e2e.count(fhir, "ServiceRequest", patient)


def our_identifiers(fhir: FhirClient, rtype: str, patient: str) -> list[str]:
    found = fhir.search(rtype, [("subject", f"Patient/{patient}")])
    return [i["value"] for r in found for i in r["identifier"]]


# ----------------------------------------------------------------- every shape, once


@pytest.mark.parametrize("shape", e2e.SHAPES)
def test_every_notification_shape_leads_to_one_assessment_written_back(
    shape: str, fhir: FhirClient, receiver: TestClient, queue: Queue, worker: Worker
) -> None:
    e2e.seed_patient(fhir, PATIENT)
    wbc, anc = e2e.seed_cbc(fhir, PATIENT, wbc=2.4, anc=0.7)

    send(receiver, e2e.delivery(shape, anc, number=1))
    e2e.drain(worker, queue)
    ras, srs = written(fhir)

    assert ras == 1 and srs >= 1
    assert queue.dead_letters() == []

    # The server resends, the other result of the draw is notified, and a second
    # Subscription (another shape) reports the same change: nothing new is written.
    send(receiver, e2e.delivery(shape, anc, number=1))
    send(receiver, e2e.delivery(shape, wbc, number=2))
    send(receiver, e2e.delivery("r4-payload-put", anc))
    e2e.drain(worker, queue)

    assert written(fhir) == (ras, srs)
    assert sorted(set(our_identifiers(fhir, "ServiceRequest", PATIENT))) == sorted(
        our_identifiers(fhir, "ServiceRequest", PATIENT)
    )
    [ra] = fhir.search("RiskAssessment", [("subject", f"Patient/{PATIENT}")])
    assert ra["identifier"][0]["system"] == codes.RA_IDENTIFIER_SYSTEM
    assert {b["reference"] for b in ra["basis"]} >= {f"Observation/{anc['id']}"}
    # The ServiceRequests point at the RiskAssessment the server holds (urn:uuid resolved).
    for sr in fhir.search("ServiceRequest", [("subject", f"Patient/{PATIENT}")]):
        assert sr["supportingInfo"][0]["reference"] == f"RiskAssessment/{ra['id']}"


# ----------------------------------------------------------------- order and gaps


def test_events_out_of_order_end_with_the_newest_draw_assessed_once(
    fhir: FhirClient, receiver: TestClient, queue: Queue, worker: Worker
) -> None:
    e2e.seed_patient(fhir, PATIENT)
    older = e2e.seed_cbc(fhir, PATIENT, wbc=3.6, anc=1.2, hours_ago=30)  # events 1, 2
    newer = e2e.seed_cbc(fhir, PATIENT, wbc=1.9, anc=0.3, hours_ago=2)  # events 3, 4
    handshake = e2e.Delivery(
        "POST",
        "/notify/local",
        {**e2e.AUTH, **e2e.FHIR_JSON},
        e2e.topic_bundle("sub-cbc", 0, None, "empty").replace(
            b'"event-notification"', b'"handshake"'
        ),
    )
    send(receiver, handshake)

    for number, obs in ((4, newer[1]), (3, newer[0]), (2, older[1]), (1, older[0])):
        send(receiver, e2e.delivery("backport-id-only", obs, number=number))
        worker.run_until_idle()  # late events are processed after the newer ones
    e2e.drain(worker, queue)

    [ra] = fhir.search("RiskAssessment", [("subject", f"Patient/{PATIENT}")])
    basis = {b["reference"] for b in ra["basis"]}
    assert {f"Observation/{o['id']}" for o in newer} <= basis
    state = queue.subscription_state("local/sub-cbc")
    assert state is not None and state.last_contiguous == 4


def test_a_gap_that_never_fills_is_recovered_by_searching_the_server(
    fhir: FhirClient, receiver: TestClient, queue: Queue, worker: Worker
) -> None:
    e2e.seed_patient(fhir, PATIENT)
    e2e.seed_patient(fhir, "pt-e2e-lost")
    lost = e2e.seed_cbc(fhir, "pt-e2e-lost", wbc=2.2, anc=0.6)  # its events never arrive
    seen = e2e.seed_cbc(fhir, PATIENT, wbc=2.4, anc=0.7)
    send(
        receiver,
        e2e.Delivery(
            "POST",
            "/notify/local",
            {**e2e.AUTH, **e2e.FHIR_JSON},
            e2e.topic_bundle("sub-cbc", 0, None, "empty").replace(
                b'"event-notification"', b'"handshake"'
            ),
        ),
    )

    send(receiver, e2e.delivery("backport-id-only", seen[1], number=3))
    e2e.drain(worker, queue)  # waits out the grace period, then searches

    assert written(fhir, "pt-e2e-lost")[0] == 1 and written(fhir)[0] == 1
    state = queue.subscription_state("local/sub-cbc")
    assert state is not None and state.last_contiguous == 3 and state.watermark
    assert lost[0]["id"] != seen[0]["id"]


# ----------------------------------------------------------------- server briefly down


def test_server_briefly_down_is_retried_and_written_once(
    fresh_fhir_server: str,  # noqa: F811
    fhir: FhirClient,
    tmp_path: Path,
) -> None:
    e2e.seed_patient(fhir, PATIENT)
    _, anc = e2e.seed_cbc(fhir, PATIENT, wbc=2.4, anc=0.7)
    with e2e.switchable_proxy(fresh_fhir_server) as (proxied_base, set_down):
        settings = e2e.settings_for(proxied_base, tmp_path / "queue.sqlite3")
        app = FastAPI()
        app.include_router(build_router(settings))
        with TestClient(app) as receiver, open_queue(settings) as queue:
            worker = Worker(queue, settings, client_factory=e2e.client_factory)
            set_down(True)
            send(receiver, e2e.delivery("r4-payload-put", anc))
            outcomes = worker.run_until_idle()
            time.sleep(0.3)
            outcomes += worker.run_until_idle()

            assert [o.state for o in outcomes] == ["done", "retry", "retry"]
            assert written(fhir) == (0, 0)

            set_down(False)
            e2e.drain(worker, queue)
            worker.close()

            assert written(fhir)[0] == 1 and queue.dead_letters() == []
            [evaluation] = [queue.get(o.job_id) for o in outcomes if o.kind == "evaluate"][:1]
            assert evaluation is not None and evaluation.state == "done"
            assert evaluation.attempts == 3


# ----------------------------------------------------------------- crash


def _start_worker(
    base: str, queue_db: Path, marker: Path | None, pause_at: str | None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(e2e.PAUSE_ENV, None)
    if pause_at and marker:
        env[e2e.PAUSE_ENV] = pause_at
        env[e2e.MARKER_ENV] = str(marker)
    script = Path(e2e.__file__)
    return subprocess.Popen(
        [sys.executable, str(script), "--fhir-base", base, "--queue-db", str(queue_db)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _job_states(queue_db: Path) -> dict[str, int]:
    db = sqlite3.connect(queue_db)
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    finally:
        db.close()
    return {state: n for state, n in rows}


@pytest.mark.parametrize("stage", ["claimed", "fetched", "written"])
def test_worker_killed_mid_job_loses_nothing_and_writes_nothing_twice(
    stage: str,
    fresh_fhir_server: str,  # noqa: F811
    fhir: FhirClient,
    receiver: TestClient,
    settings: Settings,
    tmp_path: Path,
) -> None:
    patients = (PATIENT, "pt-e2e-2")
    for patient in patients:
        e2e.seed_patient(fhir, patient)
        _, anc = e2e.seed_cbc(fhir, patient, wbc=2.3, anc=0.6)
        send(receiver, e2e.delivery("r4-payload-put", anc))  # 204: stored, nobody working yet
    queue_db = Path(settings.service.queue_db)
    marker = tmp_path / "paused"

    first = _start_worker(fresh_fhir_server, queue_db, marker, stage)
    try:
        _wait_for(marker.exists, 30, f"the worker to reach {stage!r}")
        if stage == "written":
            assert written(fhir, PATIENT)[0] == 1  # written, but the job is not marked done
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert _job_states(queue_db).get("running") == 1  # the crash left it leased

    second = _start_worker(fresh_fhir_server, queue_db, None, None)
    try:
        _wait_for(
            lambda: set(_job_states(queue_db)) == {"done"}, 30, "the restarted worker to finish"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(10)
        except subprocess.TimeoutExpired:
            second.kill()

    for patient in patients:
        ras, srs = written(fhir, patient)
        identifiers = our_identifiers(fhir, "ServiceRequest", patient)
        assert ras == 1 and srs >= 1
        assert len(identifiers) == len(set(identifiers)) == srs


# ----------------------------------------------------------------- the service as deployed


def test_the_service_acknowledges_over_http_and_its_worker_thread_writes_back(
    fresh_fhir_server: str,  # noqa: F811
    fhir: FhirClient,
    tmp_path: Path,
) -> None:
    import dataclasses

    settings = e2e.settings_for(fresh_fhir_server, tmp_path / "queue.sqlite3")
    settings = dataclasses.replace(
        settings,
        service=dataclasses.replace(settings.service, worker_enabled=True, insecure_dev=True),
    )
    routers = (
        cdshooks_router.build_router,
        functools.partial(build_router, worker_kwargs={"client_factory": e2e.client_factory}),
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, routers=routers),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, 10, "uvicorn to start")
        e2e.seed_patient(fhir, PATIENT)
        _, anc = e2e.seed_cbc(fhir, PATIENT, wbc=2.4, anc=0.7)
        d = e2e.delivery("backport-full-resource", anc)
        with httpx.Client(trust_env=False, base_url=f"http://127.0.0.1:{port}") as http:
            started = time.monotonic()
            r = http.request(d.method, d.path, headers=d.headers, content=d.body)
            acknowledged_in = time.monotonic() - started

        assert r.status_code == 204 and acknowledged_in < 1.0
        _wait_for(lambda: written(fhir)[0] == 1, 20, "the worker thread to write back")
        assert written(fhir)[1] >= 1
    finally:
        server.should_exit = True
        thread.join(10)

"""A locked SQLite file must not freeze the server: the blocked call answers 503, others go on.

Feedback, the shared JWT replay cache and the notification queue write to SQLite files. Those
writes run in worker threads, so while another process holds an exclusive lock on a file,
``/healthz``, discovery and CDS calls that do not need the file answer at once, and the call
that does waits at most ``service.db_timeout_s`` and answers 503 (the client retries). The
proof of "at once" is ordering, not a stopwatch: the other calls return while the blocked call
is still waiting.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from test_cds_router import PV, bearer, epic_token, make_settings, pv_request

from fhir_leuko.app import create_app

BASE = "https://cds.example.org"
TIMEOUT_S = 3.0
FEEDBACK = {
    "feedback": [
        {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": "2026-03-04T09:15:27Z"}
    ]
}


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Another process's write transaction holding the file (no writer can get in)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


class Background:
    """One request in a thread; ``response`` is set when it returns."""

    def __init__(self, client: TestClient, method: str, url: str, **kwargs: object) -> None:
        self.response: httpx.Response | None = None
        self._thread = threading.Thread(
            target=lambda: setattr(self, "response", client.request(method, url, **kwargs))  # type: ignore[arg-type]
        )
        self._thread.start()

    @property
    def waiting(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> httpx.Response:
        self._thread.join(TIMEOUT_S * 4)
        assert self.response is not None
        return self.response


def test_a_locked_feedback_file_is_a_503_and_other_calls_go_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, insecure_dev=True, db_timeout_s=TIMEOUT_S)
    path = Path(settings.service.feedback_db)
    with TestClient(create_app(settings)) as client:
        fb = "/cds-services/leukopenia-patient-view/feedback"
        assert client.post(fb, json=FEEDBACK).status_code == 200  # creates the file
        with exclusive_lock(path):
            blocked = Background(client, "POST", fb, json=FEEDBACK)
            time.sleep(0.3)  # let it reach the lock
            assert blocked.waiting
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert client.get("/cds-services").status_code == 200
            assert client.post(PV, json=pv_request()).status_code == 200
            elapsed = time.monotonic() - started
            assert blocked.waiting, "the other calls waited for the locked file"
            assert elapsed < TIMEOUT_S
            response = blocked.join()
        assert response.status_code == 503
        assert response.json()["resourceType"] == "OperationOutcome"
        # The lock is gone: the same feedback is stored now (and the first copy is kept).
        assert client.post(fb, json=FEEDBACK).status_code == 200


def test_a_locked_replay_cache_is_a_503_that_does_not_use_up_the_token(tmp_path: Path) -> None:
    replay = tmp_path / "replay.sqlite3"
    settings = make_settings(
        tmp_path,
        workers=2,  # several processes: the replay cache is the shared SQLite file
        replay_db=str(replay),
        db_timeout_s=TIMEOUT_S,
        public_discovery=True,
    )
    with TestClient(create_app(settings)) as client:
        assert client.post(PV, json=pv_request(), headers=bearer(epic_token(BASE + PV))).is_success
        token = epic_token(BASE + PV)
        with exclusive_lock(replay):
            blocked = Background(client, "POST", PV, json=pv_request(), headers=bearer(token))
            time.sleep(0.3)
            assert blocked.waiting
            assert client.get("/healthz").status_code == 200
            assert client.get("/cds-services").status_code == 200
            assert blocked.waiting, "the other calls waited for the locked file"
            response = blocked.join()
        assert response.status_code == 503
        # The token was not judged, so the client's retry with it is served, once.
        assert client.post(PV, json=pv_request(), headers=bearer(token)).status_code == 200
        assert client.post(PV, json=pv_request(), headers=bearer(token)).status_code == 401


def test_a_locked_queue_file_is_a_503_so_the_server_resends(tmp_path: Path) -> None:
    import dataclasses

    from fhir_leuko.config import SubscriptionEndpoint

    settings = make_settings(
        tmp_path,
        insecure_dev=True,
        queue_db=str(tmp_path / "queue.sqlite3"),
        worker_enabled=False,
        db_timeout_s=TIMEOUT_S,
    )
    settings = dataclasses.replace(
        settings,
        endpoints={
            "hapi": SubscriptionEndpoint(
                fhir_base="https://hapi.example.org/fhir", header_value="Bearer tok-7Qx"
            )
        },
    )
    ping = {"Authorization": "Bearer tok-7Qx"}
    with TestClient(create_app(settings)) as client:
        with exclusive_lock(tmp_path / "queue.sqlite3"):
            blocked = Background(client, "POST", "/notify/hapi", headers=ping)
            time.sleep(0.3)
            assert blocked.waiting
            assert client.get("/healthz").status_code == 200
            assert client.post(PV, json=pv_request()).status_code == 200
            assert blocked.waiting, "the other calls waited for the locked file"
            response = blocked.join()
        assert response.status_code == 503
        assert response.json()["issue"][0]["code"] == "transient"
        assert client.post("/notify/hapi", headers=ping).status_code == 204  # the resend

"""Helpers of the Subscription end-to-end tests: data on the real local FHIR server, the
notifications a server would send about it (every shape of docs/subscriptions.md §5), a
switchable proxy that plays "server briefly down", and the worker as its own process.

Run as a script, this module *is* that worker process (see ``worker_main``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import os
import signal
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make fhir_leuko and tests importable
    sys.path.insert(0, str(ROOT))

from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint  # noqa: E402
from fhir_leuko.fhirio.client import FhirClient  # noqa: E402
from fhir_leuko.subscriptions.queue import Job, Queue  # noqa: E402
from fhir_leuko.subscriptions.worker import Worker  # noqa: E402

JSON = dict[str, Any]
SECRET = "Bearer e2e-notify-secret"
HMAC_KEY = "e2e-medplum-signing-key"
LOINC = "http://loinc.org"


# --------------------------------------------------------------------------- configuration


def settings_for(fhir_base: str, queue_db: Path, **service: Any) -> Settings:
    """Two endpoints on the same server: ``local`` (secret header) and ``medplum`` (HMAC)."""
    defaults: dict[str, Any] = {
        "queue_db": str(queue_db),
        "worker_enabled": False,
        "worker_backoff_s": 0.2,
        "worker_backoff_cap_s": 1.0,
        "worker_lease_s": 2.0,
        "worker_poll_s": 0.05,
        "gap_grace_s": 0.5,
    }
    defaults.update(service)
    return Settings(
        service=ServiceSettings(**defaults),
        endpoints={
            "local": SubscriptionEndpoint(fhir_base=fhir_base, header_value=SECRET),
            "medplum": SubscriptionEndpoint(fhir_base=fhir_base, hmac_secret=HMAC_KEY),
        },
    )


def local_client(base: str, **kwargs: Any) -> FhirClient:
    """trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic."""
    return FhirClient(base, client=httpx.Client(trust_env=False), **kwargs)


def client_factory(name: str, endpoint: SubscriptionEndpoint) -> FhirClient:
    return local_client(endpoint.fhir_base, max_retries=0, timeouts=5.0)


def drain(worker: Worker, queue: Queue, timeout: float = 20.0) -> None:
    """Run jobs until none is queued or running (real time: catch-ups wait ~2 s buckets)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_until_idle()
        stats = queue.stats()
        if stats["queued"] == 0 and stats["running"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"work left after {timeout} s: {queue.stats()}")


# --------------------------------------------------------------------------- data


def instant(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def observation(
    patient: str, code: str, value: float, when: datetime | str, unit: str = "10*3/uL"
) -> JSON:
    """A final lab Observation; ``when`` a datetime (sent as an instant) or a FHIR dateTime."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when if isinstance(when, str) else instant(when),
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def seed_patient(client: FhirClient, patient: str) -> None:
    client.update(
        {"resourceType": "Patient", "id": patient, "birthDate": "1961-09-30", "gender": "male"}
    )


def seed_cbc(
    client: FhirClient, patient: str, wbc: float, anc: float, hours_ago: float = 3.0
) -> list[JSON]:
    """One draw (WBC and ANC) as the lab system would create it; the server's copies."""
    when = datetime.now(UTC) - timedelta(hours=hours_ago)
    return [
        client.create(observation(patient, "6690-2", wbc, when)),
        client.create(observation(patient, "751-8", anc, when)),
    ]


def count(client: FhirClient, rtype: str, patient: str) -> int:
    return len(client.search(rtype, [("subject", f"Patient/{patient}")]))


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True)
class Delivery:
    """One HTTP request a FHIR server makes to our endpoint."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


def _status(sub: str, kind: str, number: int | None, focus: str | None, r5: bool) -> JSON:
    if r5:
        status: JSON = {
            "resourceType": "SubscriptionStatus",
            "status": "active",
            "type": kind,
            "subscription": {"reference": f"Subscription/{sub}"},
        }
        if number is not None:
            status["eventsSinceSubscriptionStart"] = str(number)
            event: JSON = {"eventNumber": str(number), "timestamp": instant(datetime.now(UTC))}
            if focus:
                event["focus"] = {"reference": focus}
            status["notificationEvent"] = [event]
        return status
    params: list[JSON] = [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{sub}"}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
    ]
    if number is not None:
        params.append({"name": "events-since-subscription-start", "valueString": str(number)})
        parts: list[JSON] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": instant(datetime.now(UTC))},
        ]
        if focus:
            parts.append({"name": "focus", "valueReference": {"reference": focus}})
        params.append({"name": "notification-event", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


def topic_bundle(
    sub: str,
    number: int,
    resource: JSON | None,
    content: str,
    *,
    r5: bool = False,
) -> bytes:
    """Backport R4 (``Parameters``) or R5 (``SubscriptionStatus``) event notification."""
    focus = f"Observation/{resource['id']}" if resource is not None and content != "empty" else None
    entries: list[JSON] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": _status(sub, "event-notification", number, focus, r5),
            "request": {"method": "GET", "url": f"Subscription/{sub}/$status"},
            "response": {"status": "200"},
        }
    ]
    if focus is not None and resource is not None:
        entry: JSON = {
            "fullUrl": focus,
            "request": {"method": "PUT", "url": focus},
            "response": {"status": "200"},
        }
        if content == "full-resource":
            entry["resource"] = resource
        entries.append(entry)
    bundle = {
        "resourceType": "Bundle",
        "type": "subscription-notification" if r5 else "history",
        "timestamp": instant(datetime.now(UTC)),
        "entry": entries,
    }
    return orjson.dumps(bundle)


FHIR_JSON = {"Content-Type": "application/fhir+json"}
AUTH = {"Authorization": SECRET}


def delivery(shape: str, resource: JSON, number: int = 1) -> Delivery:
    """The request a server sends about ``resource`` (a server-held Observation) in ``shape``."""
    rid = resource["id"]
    if shape == "r4-ping":
        return Delivery("POST", "/notify/local", {**AUTH, "Content-Length": "0"})
    if shape == "r4-payload-put":
        version = resource["meta"]["versionId"]
        headers = {**AUTH, **FHIR_JSON, "If-Match": f'W/"{version}"'}
        return Delivery("PUT", f"/notify/local/Observation/{rid}", headers, orjson.dumps(resource))
    if shape == "hapi-transaction":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"Observation/{rid}",
                    "resource": resource,
                    "request": {"method": "PUT", "url": f"Observation/{rid}"},
                }
            ],
        }
        return Delivery("POST", "/notify/local", {**AUTH, **FHIR_JSON}, orjson.dumps(bundle))
    if shape.startswith("backport-"):
        content = shape.removeprefix("backport-")
        body = topic_bundle("sub-cbc", number, resource, content)
        return Delivery("POST", "/notify/local", {**AUTH, **FHIR_JSON}, body)
    if shape == "r5":
        body = topic_bundle("sub-cbc-r5", number, resource, "id-only", r5=True)
        return Delivery("POST", "/notify/local", {**AUTH, **FHIR_JSON}, body)
    if shape == "medplum":
        body = orjson.dumps(resource)
        sig = hmac.new(HMAC_KEY.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            **FHIR_JSON,
            "X-Signature": sig,
            "X-Medplum-Subscription": "5b0d0c8e-1f6e-4c1b-9f39-2d7a0e6c4b11",
            "X-Medplum-Interaction": "update",
        }
        return Delivery("POST", "/notify/medplum", headers, body)
    raise ValueError(shape)


SHAPES = (
    "r4-ping",
    "r4-payload-put",
    "hapi-transaction",
    "backport-empty",
    "backport-id-only",
    "backport-full-resource",
    "r5",
    "medplum",
)


# --------------------------------------------------------------------------- server down


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, *args: Any) -> None:  # quiet: bodies and URLs stay out of logs
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        if self.server.down:
            page = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            self.send_response(503)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        with httpx.Client(trust_env=False, timeout=10.0) as http_client:
            r = http_client.request(
                self.command, self.server.upstream + self.path, headers=headers, content=body
            )
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in (
                "transfer-encoding",
                "content-length",
                "connection",
                "content-encoding",
            ):
                self.send_header(k, v.replace(self.server.upstream, self.server.public))
        content = r.content.replace(self.server.upstream.encode(), self.server.public.encode())
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = _forward


class _ProxyServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    down = False
    delay_s = 0.0
    upstream = ""
    public = ""


@contextmanager
def switchable_proxy(
    upstream_base: str, delay_s: float = 0.0
) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A reverse proxy on 127.0.0.1 in front of the FHIR server; ``set_down(True)`` makes it
    answer 503 with an HTML page, like a load balancer whose backend is restarting.
    ``delay_s`` holds every request that long first (a slower server: jobs take time)."""
    upstream = httpx.URL(upstream_base)
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    server.delay_s = delay_s
    port = server.server_address[1]
    server.upstream = f"{upstream.scheme}://{upstream.host}:{upstream.port}"
    server.public = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def set_down(down: bool) -> None:
        server.down = down

    try:
        yield f"{server.public}{upstream.path}", set_down
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- worker process

PAUSE_ENV = "FHIR_LEUKO_E2E_PAUSE_AT"  # a Worker stage name: claimed, fetched, written
MARKER_ENV = "FHIR_LEUKO_E2E_MARKER"


def worker_main(argv: list[str] | None = None) -> None:
    """The worker as its own process, as ``serve`` would run it, for the crash test.

    With ``FHIR_LEUKO_E2E_PAUSE_AT=<stage>`` the first evaluation to reach that stage writes its id
    to ``FHIR_LEUKO_E2E_MARKER`` and the process then sleeps until it is killed: a crash at
    exactly that point, without timing games.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--fhir-base", required=True)
    p.add_argument("--queue-db", required=True)
    args = p.parse_args(argv)
    settings = settings_for(args.fhir_base, Path(args.queue_db))
    pause_at = os.environ.get(PAUSE_ENV)
    marker = os.environ.get(MARKER_ENV)

    def on_stage(stage: str, job: Job) -> None:
        if stage == pause_at and job.kind == "evaluate" and marker:
            Path(marker).write_text(f"{job.id} {job.kind}")
            while True:
                time.sleep(60)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Queue(args.queue_db) as queue:
        worker = Worker(queue, settings, client_factory=client_factory, on_stage=on_stage)
        try:
            worker.run(stop)
        finally:
            worker.close()


if __name__ == "__main__":
    worker_main()

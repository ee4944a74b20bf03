"""Two ``fhir-leuko serve`` replicas sharing one PostgreSQL database, driven as a FHIR server and
an EHR would drive them.

- Notifications about new CBCs of ten patients are sent to both replicas (each one twice:
  once to each replica, as a server retrying through a load balancer would), while the FHIR
  server answers slowly so jobs are in flight; one replica is killed with SIGKILL while it
  holds jobs. The other takes over the leases when they expire. Every patient ends up with
  exactly one RiskAssessment and no ServiceRequest twice, and every job is done.
- A CDS client's JWT accepted by one replica is refused by the other (shared replay cache).

What is checked is what the FHIR server holds (counted by search) and the shared queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import sub_e2e_support as e2e
from fhirserver.harness import fhir_server, fresh_fhir_server  # noqa: F401

from fhir_leuko.fhirio.client import FhirClient
from tests.jwtkeys import RSA_KEY, public_jwk, sign, write_jwks
from tests.postgres.harness import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "https://cds.example.org"  # both replicas behind one public name
ISS = "https://ehr.example.org/fhir"
PATIENTS = [f"pt-replica-{i}" for i in range(10)]


@contextmanager
def replica(
    tmp_path: Path, name: str, database_url: str, fhir_base: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One ``fhir-leuko serve`` process on a free loopback port; yields its URL."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FHIR_LEUKO_") and k.lower() not in ("http_proxy", "https_proxy")
    } | {
        "PYTHONPATH": str(ROOT),
        "NO_PROXY": "127.0.0.1,localhost",
        "FHIR_LEUKO_CONFIG": str(tmp_path / "leuko.toml"),
        "FHIR_LEUKO_PORT": str(port),
        "FHIR_LEUKO_PUBLIC_BASE_URL": PUBLIC,
        "FHIR_LEUKO_DATABASE_URL": database_url,
        "FHIR_LEUKO_WORKER_CONCURRENCY": "2",
        "FHIR_LEUKO_WORKER_LEASE_S": "4",
        "FHIR_LEUKO_WORKER_POLL_S": "0.05",
        "FHIR_LEUKO_WORKER_BACKOFF_S": "0.2",
        "FHIR_LEUKO_ENDPOINT__LOCAL__FHIR_BASE": fhir_base,
        "FHIR_LEUKO_ENDPOINT__LOCAL__HEADER_VALUE": e2e.SECRET,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhir_leuko", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(base, proc, log), 60, f"replica {name} to be ready")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"replica exited with {proc.returncode}: {log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{base}/readyz", timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_states(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    return {state: int(n) for state, n in rows}


def token(aud: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return sign(claims, "k1", typ="JWT")


def write_config(tmp_path: Path) -> None:
    jwks = write_jwks(tmp_path / "jwks.json", public_jwk(RSA_KEY, "k1", use="sig"))
    (tmp_path / "leuko.toml").write_text(f'[issuers."{ISS}"]\njwks_file = "{jwks}"\n')


def send(base: str, d: e2e.Delivery) -> None:
    r = httpx.request(
        d.method, base + d.path, headers=d.headers, content=d.body, timeout=10, trust_env=False
    )
    assert r.status_code == 204, r.text


def test_two_replicas_share_the_work_survive_a_kill_and_write_each_result_once(
    fresh_fhir_server: str,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    write_config(tmp_path)
    with e2e.local_client(fresh_fhir_server) as fhir:
        results = []
        for patient in PATIENTS:
            e2e.seed_patient(fhir, patient)
            _, anc = e2e.seed_cbc(fhir, patient, wbc=2.3, anc=0.6)
            results.append(anc)

        # Every FHIR request takes 0.25 s more: an evaluation holds its lease about half a second
        # (its reads run at once, then the write-back).
        with (
            e2e.switchable_proxy(fresh_fhir_server, delay_s=0.25) as (slow_base, _),
            replica(tmp_path, "a", pg_url, slow_base) as (a, proc_a),
            replica(tmp_path, "b", pg_url, slow_base) as (b, _proc_b),
        ):
            # A CDS client's token: accepted once, refused by the other replica.
            t = token(f"{PUBLIC}/cds-services")
            auth = {"Authorization": f"Bearer {t}"}
            assert httpx.get(f"{a}/cds-services", headers=auth, trust_env=False).status_code == 200
            assert httpx.get(f"{b}/cds-services", headers=auth, trust_env=False).status_code == 401

            # Half the notifications reach a, half b; each is then resent to the other.
            for i, anc in enumerate(results):
                d = e2e.delivery("r4-payload-put", anc)
                first, second = (a, b) if i % 2 == 0 else (b, a)
                send(first, d)
                send(second, d)

            # Both replicas at work (two threads each): at least three jobs running means
            # replica a holds at least one. Kill it there.
            wait_for(lambda: job_states(pg_url).get("running", 0) >= 3, 30, "both replicas busy")
            os.kill(proc_a.pid, signal.SIGKILL)
            proc_a.wait(10)

            wait_for(
                lambda: set(job_states(pg_url)) == {"done"}, 90, "replica b to finish everything"
            )
            with psycopg.connect(pg_url) as conn:
                retaken = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE last_error = 'lease expired before completion'"
                ).fetchone()
            assert retaken is not None and retaken[0] >= 1  # b finished what a had started

        for patient in PATIENTS:
            assert e2e.count(fhir, "RiskAssessment", patient) == 1, patient
            orders = identifiers(fhir, "ServiceRequest", patient)
            assert orders and len(orders) == len(set(orders)), patient


def identifiers(fhir: FhirClient, rtype: str, patient: str) -> list[str]:
    found = fhir.search(rtype, [("subject", f"Patient/{patient}")])
    return [i["value"] for r in found for i in r["identifier"]]

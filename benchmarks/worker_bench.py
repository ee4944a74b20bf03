"""Worker benchmark: evaluations written back per second, one process and three replicas.

A FHIR server stub on 127.0.0.1 answers every request after ``--latency-ms`` (default 50 ms):
the patient, a recent CBC with severe neutropenia (so every evaluation writes a RiskAssessment
and ServiceRequests back), empty searches for the other prefetch queries, and a
transaction-response of creates for the write-back. ``N`` evaluations of ``N`` different
patients are queued, due at one instant after every worker process is up; the clock runs from
that instant until the queue holds no queued or running job. The stub counts the write-back
transactions it received, which must equal ``N``.

Cases (issue "Highly available"): one ``serve``-like worker process (``WorkerThread`` with
``worker_concurrency`` threads) on SQLite and on PostgreSQL, and three such processes sharing
one PostgreSQL. Targets: >= 20 write-backs/s per process; three replicas >= 2.5x that. Everything
runs on this machine and its loopback: the stub, PostgreSQL (a throwaway cluster from
``tests/postgres/harness.py``) and the workers share its cores.

Run: ``.venv/bin/python benchmarks/worker_bench.py [--jobs 300] [--concurrency 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.postgres.harness import PgServer, ensure_installed, free_port  # noqa: E402

HOST = "127.0.0.1"
ENDPOINT = "stub"
TARGET_PER_PROCESS = 20.0
TARGET_SCALE = 2.5


# --------------------------------------------------------------------------- the stub


def _observation(patient: str, n: int, code: str, value: float, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{patient}-{code}-{n}",
        "meta": {"versionId": "1", "lastUpdated": when},
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
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "10*3/uL",
            "system": "http://unitsofmeasure.org",
            "code": "10*3/uL",
        },
    }


def _searchset(resources: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [
                {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {}}
                for r in resources
            ],
        }
    )


def stub_main(port: int, latency_s: float, counter: Path) -> None:
    """The FHIR server stub (its own process): async, so slow answers overlap freely."""
    import uvicorn

    written = 0
    when = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal written
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await asyncio.sleep(latency_s)
        path: str = scope["path"]
        query = scope["query_string"].decode()
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        status = 200
        if scope["method"] == "POST":  # the write-back transaction
            entries = orjson.loads(body).get("entry", [])
            written += 1
            counter.write_text(str(written))
            payload = orjson.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "entry": [
                        {"response": {"status": "201 Created", "location": f"X/{i}/_history/1"}}
                        for i, _ in enumerate(entries)
                    ],
                }
            )
        elif path.startswith("/fhir/Patient/"):
            pid = path.rsplit("/", 1)[-1]
            payload = orjson.dumps(
                {"resourceType": "Patient", "id": pid, "birthDate": "1958-04-02", "gender": "male"}
            )
        elif path == "/fhir/Observation" and "6690-2" in params.get("code", ""):
            patient = params.get("patient", "x")
            payload = _searchset(
                [
                    _observation(patient, 1, "6690-2", 1.9, when),
                    _observation(patient, 1, "751-8", 0.3, when),
                ]
            )
        else:
            payload = _searchset([])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/fhir+json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- a worker process


def settings_for(database: str, fhir_base: str, concurrency: int) -> Any:
    from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint

    service = ServiceSettings(
        worker_concurrency=concurrency,
        worker_poll_s=0.05,
        worker_lease_s=120.0,
        log_level="warning",
    )
    if database.startswith("postgresql://"):
        service = dataclasses.replace(service, database_url=database)
    else:
        service = dataclasses.replace(service, queue_db=database)
    return Settings(
        service=service,
        endpoints={ENDPOINT: SubscriptionEndpoint(fhir_base=fhir_base, header_value="x")},
    )


def worker_main(database: str, fhir_base: str, concurrency: int, ready: Path) -> None:
    """One replica's worker (what ``serve`` runs in its process), until SIGTERM."""
    from fhir_leuko.subscriptions.worker import WorkerThread

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = WorkerThread(settings_for(database, fhir_base, concurrency))
    worker.start()
    ready.write_text("up")
    stop.wait()
    worker.stop()


# --------------------------------------------------------------------------- one case


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(pg: PgServer | None) -> float:
    """CPU time of the cluster: its postmaster and the processes it started (the backends
    serving the workers' pooled connections live through a case)."""
    if pg is None:
        return 0.0
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        if pid == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_case(
    label: str,
    database: str,
    fhir_base: str,
    counter: Path,
    *,
    stub_pid: int,
    pg: PgServer | None = None,
    processes: int,
    jobs: int,
    concurrency: int,
) -> float:
    from fhir_leuko.subscriptions.queue import Queue
    from fhir_leuko.subscriptions.worker import patient_key

    prefix = "".join(c for c in label.lower() if c.isalnum())
    with tempfile.TemporaryDirectory() as tmp:
        readies = [Path(tmp) / f"ready-{i}" for i in range(processes)]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--as-worker",
                    database,
                    fhir_base,
                    str(concurrency),
                    str(ready),
                ],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for ready in readies
        ]
        try:
            with Queue(database) as queue:
                deadline = time.monotonic() + 60
                while not all(r.exists() for r in readies):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{label}: the workers did not start")
                    time.sleep(0.05)
                before = int(counter.read_text()) if counter.exists() else 0
                due = time.time() + 2.0  # every job due at one instant, after the enqueueing
                for i in range(jobs):
                    queue.enqueue_patient(
                        patient_key(ENDPOINT, f"Patient/{prefix}-{i}"), "bench", now=due
                    )
                while time.time() < due:
                    time.sleep(0.001)
                cpu_before = [cpu_seconds(w.pid) for w in workers] + [cpu_seconds(stub_pid)]
                pg_before = postgres_cpu_seconds(pg)
                started = time.perf_counter()
                while True:
                    stats = queue.stats()
                    if stats["queued"] == 0 and stats["running"] == 0:
                        break
                    time.sleep(0.02)
                elapsed = time.perf_counter() - started
                cpu_after = [cpu_seconds(w.pid) for w in workers] + [cpu_seconds(stub_pid)]
                pg_cpu = postgres_cpu_seconds(pg) - pg_before
                dead = stats["dead"]
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(60)
    written = (int(counter.read_text()) if counter.exists() else 0) - before
    rate = jobs / elapsed
    worker_cpu = sum(cpu_after[:-1]) - sum(cpu_before[:-1])
    stub_cpu = cpu_after[-1] - cpu_before[-1]
    print(
        f"{label:<28} {processes:>3} proc x {concurrency} thr  {jobs:>5} jobs  "
        f"{elapsed:6.2f} s  {rate:7.1f} write-backs/s  ({written} transactions, {dead} dead)"
        f"  CPU per job: workers {1000 * worker_cpu / jobs:.1f} ms, stub"
        f" {1000 * stub_cpu / jobs:.1f} ms"
        + (f", PostgreSQL {1000 * pg_cpu / jobs:.1f} ms" if pg is not None else "")
    )
    if written != jobs or dead:
        raise SystemExit(f"{label}: {written} write-backs for {jobs} jobs, {dead} dead")
    return rate


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--as-stub":
        stub_main(int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--jobs", type=int, default=300, help="evaluations per process (default 300)")
    p.add_argument("--concurrency", type=int, default=4, help="worker_concurrency (default 4)")
    p.add_argument("--latency-ms", type=float, default=50.0)
    args = p.parse_args()

    bindir = ensure_installed()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: run tests/postgres/install.sh as root")
    with tempfile.TemporaryDirectory() as tmp:
        counter = Path(tmp) / "written"
        port = free_port()
        stub = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--as-stub",
                str(port),
                str(args.latency_ms / 1000),
                str(counter),
            ]
        )
        pg = PgServer(bindir)
        pg.start()
        try:
            import httpx

            fhir_base = f"http://{HOST}:{port}/fhir"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{fhir_base}/metadata", timeout=1, trust_env=False)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the stub did not start") from None
                    time.sleep(0.1)
            print(
                f"FHIR stub latency {args.latency_ms:g} ms per request; "
                f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
            )
            sqlite = str(Path(tmp) / "queue.sqlite3")
            run_case(
                "1 process, SQLite",
                sqlite,
                fhir_base,
                counter,
                stub_pid=stub.pid,
                processes=1,
                jobs=args.jobs,
                concurrency=args.concurrency,
            )
            one = run_case(
                "1 process, PostgreSQL",
                pg.fresh_url(),
                fhir_base,
                counter,
                stub_pid=stub.pid,
                pg=pg,
                processes=1,
                jobs=args.jobs,
                concurrency=args.concurrency,
            )
            three = run_case(
                "3 replicas, one PostgreSQL",
                pg.fresh_url(),
                fhir_base,
                counter,
                stub_pid=stub.pid,
                pg=pg,
                processes=3,
                jobs=3 * args.jobs,
                concurrency=args.concurrency,
            )
            print(
                f"per process {one:.1f}/s (target >= {TARGET_PER_PROCESS:g}): "
                f"{'met' if one >= TARGET_PER_PROCESS else 'NOT met'}; "
                f"3 replicas {three / one:.2f}x one (target >= {TARGET_SCALE:g}x): "
                f"{'met' if three >= TARGET_SCALE * one else 'NOT met'}"
            )
        finally:
            pg.destroy()
            stub.terminate()
            stub.wait(10)


if __name__ == "__main__":
    main()

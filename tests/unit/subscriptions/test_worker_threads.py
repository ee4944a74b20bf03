"""The worker as ``serve`` runs it: ``worker_concurrency`` threads on one queue, graceful stop.

Jobs here are ``change`` jobs that already name their patient: running one asks for an
evaluation and calls no FHIR server. The evaluations they ask for meet a FHIR server that
answers 503 to everything (an in-process transport: nothing leaves the process) and wait for
their retry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.subscriptions.queue import Job, Queue
from fhir_leuko.subscriptions.worker import CHANGE, EVALUATE, WorkerThread, enqueue_change


def settings_for(tmp_path: Path, concurrency: int) -> Settings:
    return Settings(
        service=ServiceSettings(
            queue_db=str(tmp_path / "queue.sqlite3"),
            worker_concurrency=concurrency,
            worker_poll_s=0.01,
        ),
        endpoints={
            "hapi": SubscriptionEndpoint(
                fhir_base="https://hapi.example.org/fhir", header_value="s"
            )
        },
    )


def unavailable(name: str, endpoint: SubscriptionEndpoint) -> FhirClient:
    return FhirClient(
        endpoint.fhir_base,
        transport=httpx.MockTransport(lambda request: httpx.Response(503)),
        max_retries=0,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_jobs_run_in_as_many_threads_as_configured(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, concurrency=3)
    holding: set[int] = set()
    lock = threading.Lock()
    release = threading.Event()

    def on_stage(stage: str, job: Job) -> None:
        if stage == "claimed" and job.kind == CHANGE:
            with lock:
                holding.add(job.id)
            release.wait(10)

    with Queue(settings.service.queue_db) as q:
        for i in range(5):
            enqueue_change(q, "hapi", f"Observation/o{i}", version="1", patient=f"Patient/p{i}")
    worker = WorkerThread(settings, on_stage=on_stage, client_factory=unavailable)
    worker.start()
    try:
        wait_for(lambda: len(holding) == 3, "three jobs in flight")
        assert worker.alive == 3
        time.sleep(0.1)
        assert len(holding) == 3  # no fourth while three threads are busy
        release.set()
        with Queue(settings.service.queue_db) as q:
            wait_for(
                lambda: sum(j.kind == CHANGE and j.state == "done" for j in _all_jobs(q)) == 5,
                "the five changes",
            )
    finally:
        release.set()
        worker.stop()
    assert worker.alive == 0


def test_stop_finishes_the_running_job_and_takes_no_new_one(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, concurrency=1)
    claimed = threading.Event()
    release = threading.Event()

    def on_stage(stage: str, job: Job) -> None:
        if stage == "claimed" and job.kind == CHANGE:
            claimed.set()
            release.wait(10)

    with Queue(settings.service.queue_db) as q:
        for i in range(3):
            enqueue_change(q, "hapi", f"Observation/o{i}", version="1", patient=f"Patient/p{i}")
    worker = WorkerThread(settings, on_stage=on_stage, client_factory=unavailable)
    worker.start()
    assert claimed.wait(10)
    stopping = threading.Thread(target=worker.stop)
    stopping.start()  # SIGTERM: the lifespan's shutdown calls this
    time.sleep(0.1)
    assert stopping.is_alive()  # it waits for the job in hand
    release.set()
    stopping.join(10)
    assert not stopping.is_alive() and worker.alive == 0
    with Queue(settings.service.queue_db) as q:
        states = {(j.kind, j.state) for j in _all_jobs(q)}
        # The job in hand finished (and asked for its evaluation); nothing else was taken.
        assert states == {(CHANGE, "done"), (CHANGE, "queued"), (EVALUATE, "queued")}
        assert q.stats() == {"queued": 3, "running": 0, "done": 1, "dead": 0}


def _all_jobs(q: Queue) -> list[Job]:
    jobs = []
    job_id = 1
    while (job := q.get(job_id)) is not None:
        jobs.append(job)
        job_id += 1
    return jobs

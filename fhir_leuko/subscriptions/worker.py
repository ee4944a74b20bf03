"""The notification worker: queued work in, RiskAssessments and ServiceRequests written back.

Why a worker: a notification is acknowledged as soon as it is stored (the router answers
204 within milliseconds), and everything slow happens here, from the durable queue, so a
crash or a FHIR server that is down loses nothing: a job is retried with backoff until it
succeeds or is dead-lettered with its reason.

Three kinds of job, each safe to run twice (delivery is at least once everywhere):

``change``
    One changed resource (usually a lab Observation) on one server. Resolves the patient
    (from the notification, else by reading the resource) and asks for an evaluation of that
    patient. Stored under a key made of the resource version (or the Subscription event
    number), so a notification repeated by the server, a second Subscription firing for the
    same result, or the catch-up search finding it again make no second job.
``catch-up``
    Search the server for subscribed Observations changed since the last search
    (``_lastUpdated``): for pings without payload, events with ``empty`` content, and gaps in
    event numbers. Every result becomes a ``change`` job (deduplicated by version).
``evaluate``
    Coalesced per patient by the queue. Reads what the server holds *now* for the patient
    (the same queries as the CDS Hooks prefetch, ``fhirio.queries``), evaluates, and writes
    the RiskAssessment and ServiceRequests in one transaction whose entries are conditional
    creates on our deterministic identifiers: running it again creates nothing. Because the
    server's current data is read, an old notification processed late cannot bring back an
    old conclusion.

Supersession (``docs/subscriptions.md``): earlier RiskAssessments are never modified. R4
binds ``RiskAssessment.status`` to ObservationStatus, whose ``cancelled`` ("not started or
not completed"), ``entered-in-error`` ("should never have existed") and ``amended`` (the
*same* record modified) all say something false about a correct earlier assessment. Each
RiskAssessment is a point-in-time record (Event pattern); the newer ``occurrenceDateTime``
is the current one. So that this holds when counts recover, a normal result that follows an
abnormal assessment is written too, as a ``negligible`` RiskAssessment.

Logs name job ids, kinds, endpoint names and counts; never patient ids, resources or bodies.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fhir_leuko import metrics
from fhir_leuko.config import Settings, SubscriptionEndpoint
from fhir_leuko.errors import (
    ConfigError,
    FatalFhirServerError,
    FhirBadRequest,
    FhirNotFound,
    FhirNotSupported,
    InputError,
    TemporaryFhirServerError,
)
from fhir_leuko.fhirio import codes, emit, queries
from fhir_leuko.fhirio.client import (
    FhirClient,
    FhirTimeouts,
    bundle_resources,
)
from fhir_leuko.fhirio.ingest import parse_time
from fhir_leuko.fhirio.refs import (
    last_updated,
    normalise_reference,
    parse_reference,
    subject_patient,
    version_id,
)
from fhir_leuko.fhirio.server import endpoint_auth, fetch_patient_data, write_back
from fhir_leuko.service import evaluate
from fhir_leuko.subscriptions.queue import EVALUATE, Job, Queue

__all__ = [
    "CATCH_UP",
    "CHANGE",
    "ClientFactory",
    "Worker",
    "WorkerThread",
    "default_client_factory",
    "enqueue_catch_up",
    "enqueue_change",
    "enqueue_gap",
    "is_relevant",
    "open_queue",
    "patient_key",
    "subscription_key",
]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

CHANGE = "change"
CATCH_UP = "catch-up"

# A catch-up search starts this long before the last change it saw: a change committed late
# with an earlier lastUpdated is then still found; the queue drops what was seen already.
_CATCH_UP_OVERLAP = timedelta(seconds=60)
# Pings and empty events in the same few seconds share one catch-up search (see below).
_CATCH_UP_BUCKET_S = 2.0
_CATCH_UP_PAGES_PER_JOB = 20
_LATEST_RA_COUNT = 20


# --------------------------------------------------------------------------- keys


def subscription_key(endpoint: str, subscription_id: str | None) -> str:
    """Event numbers and watermarks are per Subscription *on one endpoint*: ids are only
    unique per server, and classic pings name no Subscription at all (``-``)."""
    return f"{endpoint}/{subscription_id or '-'}"


def patient_key(endpoint: str, patient: str) -> str:
    """The queue's per-patient key: the same id on two servers is two patients."""
    return f"{endpoint}|{patient}"


def _split_patient_key(key: str) -> tuple[str, str]:
    endpoint, sep, patient = key.partition("|")
    parsed = parse_reference(patient) if sep else None
    if not endpoint or parsed is None or parsed.type != "Patient":
        raise InputError("evaluation job has no endpoint|Patient/id key")
    return endpoint, parsed.id


def is_relevant(resource: Mapping[str, Any]) -> bool:
    """Worth an evaluation: an Observation with a LOINC code we read, a DiagnosticReport (a
    CBC report is a topic focus on some servers), or the Patient itself."""
    rtype = resource.get("resourceType")
    if rtype in ("Patient", "DiagnosticReport"):
        return True
    if rtype != "Observation":
        return False
    code = resource.get("code")
    for coding in (code.get("coding") if isinstance(code, dict) else None) or ():
        if (
            isinstance(coding, dict)
            and coding.get("system") == codes.LOINC
            and coding.get("code") in codes.LOINC_ANALYTES
        ):
            return True
    return False


# --------------------------------------------------------------------------- enqueueing


def enqueue_change(
    queue: Queue,
    endpoint: str,
    focus: str,
    *,
    version: str | None = None,
    patient: str | None = None,
    resource: Mapping[str, Any] | None = None,
    event_key: str | None = None,
    deleted: bool = False,
    now: float | None = None,
) -> bool:
    """Queue one changed resource; ``False`` when this very change was queued before.

    The key, best first: the version (same on every resend and in catch-up results); the
    Subscription event number; a digest of the included resource (servers that strip
    versions resend identical bytes); else none is possible and the change is always queued
    (harmless: evaluation writes are idempotent). The resource itself is not stored: the
    worker reads current data, and the queue should hold as little PHI as it can.
    """
    if deleted:
        key = f"del:{endpoint}:{focus}" + (f"@{version}" if version else "")
    elif version:
        key = f"res:{endpoint}:{focus}@{version}"
    elif event_key:
        key = event_key
    elif resource is not None:
        digest = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
        key = f"res:{endpoint}:{focus}#{digest[:32]}"
    else:
        key = f"once:{uuid.uuid4().hex}"
    payload = {
        "endpoint": endpoint,
        "focus": focus,
        "version": version,
        "patient": patient,
        "deleted": deleted,
    }
    return queue.enqueue(CHANGE, payload, dedupe_key=key, patient_ref=None, now=now)


def enqueue_catch_up(queue: Queue, endpoint: str, sub_key: str, now: float) -> bool:
    """Ask for one catch-up search of ``sub_key`` that starts after ``now``.

    Pings arrive in bursts (one per changed result), so the requests of one short time bucket
    share a job that becomes due at the bucket's end. A ping is sent after its change was
    committed, so that search, starting after every ping of the bucket, sees every change
    they announced; a ping in the next bucket gets the next search.
    """
    bucket = int(now // _CATCH_UP_BUCKET_S)
    due = (bucket + 1) * _CATCH_UP_BUCKET_S
    return queue.enqueue(
        CATCH_UP,
        {"endpoint": endpoint, "sub": sub_key, "through": None},
        dedupe_key=f"catchup:{sub_key}:{bucket}",
        now=due,
    )


def enqueue_gap(queue: Queue, endpoint: str, sub_key: str, through: int, due: float) -> bool:
    """Recover events up to ``through`` that never arrived, unless they arrive by ``due``
    (Backport IG ``errors.md``: a missing number may still be in flight)."""
    return queue.enqueue(
        CATCH_UP,
        {"endpoint": endpoint, "sub": sub_key, "through": through},
        dedupe_key=f"gap:{sub_key}:{through}",
        now=due,
    )


def open_queue(settings: Settings, *, pool_size: int = 4) -> Queue:
    """The queue as configured (``service.database_url`` else ``service.queue_db``, retry
    policy)."""
    svc = settings.service
    return Queue(
        svc.database_url or svc.queue_db,
        backoff_base_s=svc.worker_backoff_s,
        backoff_cap_s=svc.worker_backoff_cap_s,
        max_attempts=svc.worker_max_attempts,
        busy_timeout_s=svc.db_timeout_s,
        pool_size=pool_size,
    )


# --------------------------------------------------------------------------- clients

ClientFactory = Callable[[str, SubscriptionEndpoint], FhirClient]


def default_client_factory(name: str, endpoint: SubscriptionEndpoint) -> FhirClient:
    """A sync client per endpoint; few retries here, the queue's backoff does the long wait."""
    return FhirClient(
        endpoint.fhir_base,
        auth=endpoint_auth(endpoint),
        timeouts=FhirTimeouts(connect=5.0, read=30.0, write=30.0, pool=5.0, total=60.0),
        max_retries=2,
        max_retry_after=30.0,
    )


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class Outcome:
    """What one job did, for tests and logs (never patient data)."""

    job_id: int
    kind: str
    state: str  # "done", "retry", "dead"; "released" when given back at shutdown
    created: int = 0
    existing: int = 0
    note: str = ""


class _Finished(Exception):
    """The job ends early, successfully: nothing (more) to do here; the message says why."""


class Worker:
    """Claims due jobs from the queue and runs them, one at a time (`WorkerThread` runs
    several, each in its own thread).

    ``on_stage(stage, job)`` is called at ``claimed``, ``fetched`` and ``written`` (after the
    write-back, before the job is marked done): the crash test stops the process there.
    """

    def __init__(
        self,
        queue: Queue,
        settings: Settings,
        *,
        client_factory: ClientFactory = default_client_factory,
        clock: Callable[[], float] = time.time,
        utcnow: Callable[[], datetime] | None = None,
        on_stage: Callable[[str, Job], None] | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self._client_factory = client_factory
        self._clock = clock
        self._utcnow = utcnow or (lambda: datetime.fromtimestamp(clock(), UTC))
        self._on_stage = on_stage
        self._clients: dict[str, FhirClient] = {}
        self._last_purge = 0.0
        self._stopping: threading.Event | None = None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # ------------------------------------------------------------------ loop

    def run_once(self) -> Outcome | None:
        """Run one due job, if any; its outcome, or ``None`` when nothing was due."""
        now = self._clock()
        job = self.queue.claim(now, self.settings.service.worker_lease_s)
        if job is None:
            return None
        if self._stopping is not None and self._stopping.is_set():
            # Shutting down between the claim and the work: give it back, untouched.
            self.queue.release(job.id, attempt=job.attempts)
            return Outcome(job.id, job.kind, "released")
        self._stage("claimed", job)
        try:
            result = self._run(job)
        except TemporaryFhirServerError as err:
            metrics.fhir_error(err.status, "worker")
            return self._failed(job, str(err), _summary(err), retryable=True)
        except FatalFhirServerError as err:
            metrics.fhir_error(err.status, "worker")
            return self._failed(job, str(err), _summary(err), retryable=False)
        except (InputError, ConfigError) as err:
            return self._failed(job, str(err), _summary(err), retryable=False)
        except _Finished as finished:
            result = Outcome(job.id, job.kind, "done", note=str(finished))
        except Exception as err:  # a bug: retry (bounded by max_attempts), say only the type
            logger.debug("job %d raised", job.id, exc_info=True)
            what = f"unexpected {type(err).__name__}"
            return self._failed(job, what, what, retryable=True)
        if not self.queue.complete(job.id, attempt=job.attempts):
            logger.warning("job %d was taken over by another worker; not marked done", job.id)
        metrics.JOBS.labels(kind=_kind_label(job.kind), outcome="done").inc()
        logger.info(
            "job %d (%s) done: %d created, %d existing%s",
            job.id,
            job.kind,
            result.created,
            result.existing,
            f"; {result.note}" if result.note else "",
        )
        return result

    def run_until_idle(self, max_jobs: int = 10_000) -> list[Outcome]:
        """Run every job that is due now (tests, the CLI); stops at ``max_jobs``."""
        done: list[Outcome] = []
        while len(done) < max_jobs:
            outcome = self.run_once()
            if outcome is None:
                break
            done.append(outcome)
        return done

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, polling every ``worker_poll_s`` when idle."""
        self._stopping = stop
        poll = self.settings.service.worker_poll_s
        while not stop.is_set():
            try:
                self._housekeeping()
                if self.run_once() is None:
                    stop.wait(poll)
            except Exception as err:  # never let the thread die (e.g. the disk is full)
                logger.error("notification worker error: %s", type(err).__name__)
                logger.debug("notification worker error", exc_info=True)
                stop.wait(max(poll, 1.0))

    def _housekeeping(self) -> None:
        now = self._clock()
        if now - self._last_purge < 3600:
            return
        self._last_purge = now
        keep = self.settings.service.queue_keep_done_days * 86400
        purged = self.queue.purge_done(now - keep)
        if purged:
            logger.info("purged %d finished jobs older than %g days", purged, keep / 86400)

    def _stage(self, stage: str, job: Job) -> None:
        if self._on_stage is not None:
            self._on_stage(stage, job)

    def _failed(self, job: Job, error: str, summary: str, *, retryable: bool) -> Outcome:
        """Record the full reason in the queue (the dead-letter table holds patient keys
        anyway); the log gets only ``summary``, because a server's OperationOutcome text may
        quote ids ("Resource Patient/123 is not known")."""
        self.queue.fail(job.id, error, self._clock(), retryable=retryable, attempt=job.attempts)
        after = self.queue.get(job.id)
        state = after.state if after is not None else "dead"
        outcome = "retry" if state == "queued" else ("done" if state == "done" else "dead")
        metrics.JOBS.labels(kind=_kind_label(job.kind), outcome=outcome).inc()
        if outcome == "dead":
            metrics.DEAD_LETTERS.labels(kind=_kind_label(job.kind)).inc()
        log = logger.error if outcome == "dead" else logger.warning
        log(
            "job %d (%s) attempt %d failed (%s): %s",
            job.id,
            job.kind,
            job.attempts,
            outcome,
            summary,
        )
        return Outcome(job.id, job.kind, outcome, note=error)

    def _run(self, job: Job) -> Outcome:
        if job.kind == EVALUATE:
            return self._evaluate(job)
        if job.kind == CHANGE:
            return self._change(job)
        if job.kind == CATCH_UP:
            return self._catch_up(job)
        raise InputError(f"unknown job kind {job.kind[:40]!r}")

    def _endpoint(self, name: object) -> tuple[str, SubscriptionEndpoint]:
        if not isinstance(name, str) or name not in self.settings.endpoints:
            raise ConfigError("the job's notification endpoint is no longer configured")
        return name, self.settings.endpoints[name]

    def _client(self, name: str) -> FhirClient:
        client = self._clients.get(name)
        if client is None:
            client = self._client_factory(name, self.settings.endpoints[name])
            self._clients[name] = client
        return client

    # ------------------------------------------------------------------ change

    def _change(self, job: Job) -> Outcome:
        p = job.payload
        name, _ = self._endpoint(p.get("endpoint"))
        focus = str(p.get("focus") or "")
        patient = p.get("patient") if isinstance(p.get("patient"), str) else None
        if patient is None:
            client = self._client(name)
            if p.get("deleted"):
                patient = self._patient_of_deleted(client, focus)
            else:
                resource = self._read_focus(client, focus)
                if not is_relevant(resource):
                    raise _Finished("not a result we assess")
                patient = subject_patient(resource)
                version = version_id(resource)
                if version and not job.dedupe_key.startswith("res:"):
                    # Known by event number or nothing until now: re-key by version, so the
                    # same result reached another way is not evaluated twice.
                    new = enqueue_change(self.queue, name, focus, version=version, patient=patient)
                    raise _Finished("queued by version" if new else "version seen before")
        if patient is None or not patient.startswith("Patient/"):
            raise _Finished("no Patient subject")
        self.queue.enqueue_patient(patient_key(name, patient), focus, now=self._clock())
        return Outcome(job.id, job.kind, "done", note="evaluation requested")

    def _read_focus(self, client: FhirClient, focus: str) -> JSON:
        parsed = parse_reference(focus)
        if parsed is None:
            raise InputError("change job has no Type/id focus")
        try:
            return client.read(parsed.type, parsed.id)
        except FhirNotFound:
            raise _Finished("resource deleted or gone before we read it") from None

    def _patient_of_deleted(self, client: FhirClient, focus: str) -> str | None:
        """A deleted result's patient, from the newest version its history still shows."""
        parsed = normalise_reference(focus)
        if parsed is None:
            raise InputError("deletion job has no Type/id focus")
        try:
            history = client.get_url(f"{parsed[0]}/_history")
        except (FhirNotFound, FhirBadRequest, FhirNotSupported):
            raise _Finished("deleted result's history is unavailable") from None
        for resource in bundle_resources(history):
            if is_relevant(resource) and (patient := subject_patient(resource)):
                return patient
        raise _Finished("deleted result's patient is unknown")

    # ------------------------------------------------------------------ catch-up

    def _catch_up(self, job: Job) -> Outcome:
        p = job.payload
        name, _ = self._endpoint(p.get("endpoint"))
        sub_key = str(p.get("sub") or subscription_key(name, None))
        through = p.get("through")
        state = self.queue.subscription_state(sub_key)
        if isinstance(through, int) and state is not None and state.last_contiguous >= through:
            raise _Finished("the missing events arrived after all")

        mark = parse_time(state.watermark) if state is not None and state.watermark else None
        since = (
            (mark - _CATCH_UP_OVERLAP)
            if mark
            else self._utcnow() - timedelta(seconds=self.settings.service.catchup_lookback_s)
        )
        client = self._client(name)
        queued = seen = pages = 0
        newest, newest_text = mark, None
        more = False
        for page in client.search_bundle_pages(
            "Observation", queries.changed_observations(emit.instant(since))
        ):
            for resource in bundle_resources(page):
                if resource.get("resourceType") != "Observation" or not isinstance(
                    resource.get("id"), str
                ):
                    continue
                seen += 1
                stamp = last_updated(resource)
                changed = parse_time(stamp)
                if changed is not None and (newest is None or changed > newest):
                    newest, newest_text = changed, stamp
                if not is_relevant(resource):
                    continue
                focus = f"Observation/{resource['id']}"
                queued += enqueue_change(
                    self.queue,
                    name,
                    focus,
                    version=version_id(resource),
                    patient=subject_patient(resource),
                    resource=resource,
                )
            if newest_text is not None and newest != mark:
                # Per page, so a crash part-way resumes near where it stopped. The server's own
                # text is kept: it goes back to the same server in the next search.
                self.queue.set_watermark(sub_key, newest_text)
                mark = newest
            pages += 1
            if pages >= _CATCH_UP_PAGES_PER_JOB:
                more = True
                break
        if more:
            # Bounded jobs: the rest is another job, starting from the watermark just saved.
            self.queue.enqueue(
                CATCH_UP,
                {"endpoint": name, "sub": sub_key, "through": through},
                dedupe_key=f"catchup:{sub_key}:more:{uuid.uuid4().hex}",
                now=self._clock(),
            )
        elif isinstance(through, int):
            self.queue.close_gap(sub_key, through)
        note = f"{seen} changed results found, {queued} new" + (", continues" if more else "")
        return Outcome(job.id, job.kind, "done", note=note)

    # ------------------------------------------------------------------ evaluate

    def _evaluate(self, job: Job) -> Outcome:
        name, patient_id = _split_patient_key(str(job.payload.get("patient") or job.patient_ref))
        self._endpoint(name)
        client = self._client(name)
        now = self._utcnow()
        data = fetch_patient_data(client, patient_id, now)
        self._stage("fetched", job)
        assessment = evaluate(
            data,
            now=now,
            thresholds=self.settings.thresholds,
            patient_id=patient_id,
            fhir_base=client.base_url,
        )
        resources = emit.resources(assessment)
        if not resources and self._supersedes_abnormal(client, patient_id):
            resources = [emit.risk_assessment(assessment)]
        if not resources:
            return Outcome(job.id, job.kind, "done", note="nothing to write")
        if not self.settings.service.write_back:
            return Outcome(job.id, job.kind, "done", note="write-back is off")
        created = write_back(client, resources)
        self._stage("written", job)
        return Outcome(job.id, job.kind, "done", created, len(resources) - created)

    def _supersedes_abnormal(self, client: FhirClient, patient_id: str) -> bool:
        """True when our newest RiskAssessment for the patient predicts more than negligible
        risk, so a normal result must be written to take its place."""
        found = client.search(
            "RiskAssessment",
            queries.latest_risk_assessments(patient_id, _LATEST_RA_COUNT),
            limit=_LATEST_RA_COUNT,
        )
        ours = [r for r in found if _is_ours(r)]
        if not ours:
            return False
        newest = max(ours, key=lambda r: parse_time(r.get("occurrenceDateTime")) or _EPOCH)
        return _risk_code(newest) not in (None, "negligible")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _kind_label(kind: str) -> str:
    """A metric label: the kinds we run, anything else (a stored typo) as one value."""
    return kind if kind in (EVALUATE, CHANGE, CATCH_UP) else "other"


def _summary(err: Exception) -> str:
    """What a log line may say about a failure: its type and HTTP status, no message."""
    status = getattr(err, "status", None)
    return type(err).__name__ + (f" (HTTP {status})" if status else "")


def _is_ours(resource: Mapping[str, Any]) -> bool:
    return any(
        isinstance(i, dict) and i.get("system") == codes.RA_IDENTIFIER_SYSTEM
        for i in resource.get("identifier") or ()
    )


def _risk_code(resource: Mapping[str, Any]) -> str | None:
    for prediction in resource.get("prediction") or ():
        concept = prediction.get("qualitativeRisk") if isinstance(prediction, dict) else None
        for coding in (concept or {}).get("coding") or ():
            if isinstance(coding, dict) and coding.get("system") == codes.RISK_PROBABILITY:
                code = coding.get("code")
                return code if isinstance(code, str) else None
    return None


# --------------------------------------------------------------------------- thread


class WorkerThread:
    """The worker in ``service.worker_concurrency`` daemon threads sharing one queue
    connection pool (``serve`` runs one per process).

    The queue never hands out two jobs of one patient at once, so threads (and replicas) only
    ever overlap on different patients. `stop` is the graceful shutdown (SIGTERM): no new job
    is taken, each thread finishes the job it holds, then the pool closes; a job still running
    after ``timeout`` keeps its lease, which expires so another worker reruns it.
    """

    def __init__(self, settings: Settings, **worker_kwargs: Any) -> None:
        self.concurrency = max(1, settings.service.worker_concurrency)
        self._queue = open_queue(settings, pool_size=self.concurrency + 1)
        self.workers = [
            Worker(self._queue, settings, **worker_kwargs) for _ in range(self.concurrency)
        ]
        self.worker = self.workers[0]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=worker.run, args=(self._stop,), name=f"fhir-leuko-worker-{i}", daemon=True
            )
            for i, worker in enumerate(self.workers)
        ]

    @property
    def alive(self) -> int:
        """Threads running now."""
        return sum(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new job, let running jobs finish (up to ``timeout`` in all), close."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            worker.close()
        if self.alive:
            logger.warning(
                "%d worker threads still busy at shutdown; their jobs will be rerun", self.alive
            )
        self._queue.close()

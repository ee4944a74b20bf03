"""The notification worker against a respx HAPI: queued work in, one idempotent transaction out.

Time is a fake clock and sleeping is instant, so retries, leases and grace periods are
exercised without waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint
from fhir_leuko.fhirio import codes, queries
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.fhirio.server import transaction_for
from fhir_leuko.subscriptions.queue import Queue
from fhir_leuko.subscriptions.worker import (
    Worker,
    enqueue_catch_up,
    enqueue_change,
    enqueue_gap,
    patient_key,
    subscription_key,
)
from tests.unit.subscriptions.sub_fake_hapi import (
    BASE,
    PATIENT_ID,
    FakeHapi,
    fhir,
    fixture,
)

# 2026-02-10T12:00:00Z: the fixture CBC (WBC 2.9, ANC 0.8) was drawn at 07:40 that day.
T0 = datetime(2026, 2, 10, 12, 0, tzinfo=UTC).timestamp()
PATIENT = patient_key("hapi", f"Patient/{PATIENT_ID}")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    endpoint = SubscriptionEndpoint(
        fhir_base=BASE, header_value="Bearer notify-secret", token="read-write-token"
    )
    service = ServiceSettings(
        queue_db=str(tmp_path / "queue.sqlite3"), worker_backoff_s=10.0, worker_max_attempts=3
    )
    return Settings(service=service, endpoints={"hapi": endpoint})


@pytest.fixture
def queue(storage_target: str, clock: Clock) -> Iterator[Queue]:
    """The worker's queue on SQLite and on PostgreSQL (the conftest runs each test on both)."""
    with Queue(storage_target, clock=clock, backoff_base_s=10.0, max_attempts=3) as q:
        yield q


@pytest.fixture
def hapi() -> Iterator[FakeHapi]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeHapi(router)


def make_worker(queue: Queue, settings: Settings, clock: Clock, retries: int = 0) -> Worker:
    sleeps: list[float] = []

    def factory(name: str, ep: SubscriptionEndpoint) -> FhirClient:
        return FhirClient(ep.fhir_base, auth=ep.token, max_retries=retries, sleep=sleeps.append)

    worker = Worker(queue, settings, client_factory=factory, clock=clock)
    worker.sleeps = sleeps  # type: ignore[attr-defined]
    return worker


@pytest.fixture
def worker(queue: Queue, settings: Settings, clock: Clock) -> Iterator[Worker]:
    w = make_worker(queue, settings, clock)
    yield w
    w.close()


# ----------------------------------------------------------------- evaluate and write back


def test_new_cbc_writes_risk_assessment_and_orders_in_one_conditional_transaction(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    [outcome] = worker.run_until_idle()

    assert (outcome.kind, outcome.state) == ("evaluate", "done")
    [bundle] = hapi.transactions
    assert bundle["type"] == "transaction"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[0] == "RiskAssessment" and set(kinds[1:]) == {"ServiceRequest"}
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        ident = resource["identifier"][0]
        assert request == {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
        }
        assert entry["fullUrl"].startswith("urn:uuid:") and "id" not in resource
        assert resource["subject"] == {"reference": f"Patient/{PATIENT_ID}"}
    ra_url = bundle["entry"][0]["fullUrl"]
    assert all(
        e["resource"]["supportingInfo"][0]["reference"] == ra_url for e in bundle["entry"][1:]
    )
    assert outcome.created == len(kinds) and outcome.existing == 0
    assert hapi.transaction.calls.last.request.headers["Authorization"] == "Bearer read-write-token"


def test_evaluation_reads_exactly_the_cds_prefetch_queries(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    queue.enqueue_patient(PATIENT, "Observation/5793214")
    worker.run_until_idle()

    asked = {
        (c.request.url.path.rsplit("/", 1)[-1], tuple(sorted(c.request.url.params.multi_items())))
        for c in hapi.router.calls
        if c.request.method == "GET" and "_getpages" not in c.request.url.params
    }
    for query in queries.PATIENT_DATA:
        rtype, _, qs = query.fill(PATIENT_ID).partition("?")
        if query.returns == "Patient":
            assert (PATIENT_ID, ()) in asked
        else:
            assert (rtype, tuple(sorted(parse_qsl(qs)))) in asked, query.key
    # The CBC history was followed through HAPI's _getpages next links (5 results, 3 pages).
    assert hapi.pages.call_count == 2


def test_repeating_the_work_creates_nothing_new(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    queue.enqueue_patient(PATIENT, "Observation/5793214")
    [first] = worker.run_until_idle()
    stored = {k: len(v) for k, v in hapi.stored.items()}

    clock.advance(3600)
    queue.enqueue_patient(PATIENT, "Observation/5793215")
    [second] = worker.run_until_idle()

    assert first.created > 0
    assert second.created == 0 and second.existing >= 1
    assert {k: len(v) for k, v in hapi.stored.items()} == stored


def test_several_results_of_one_draw_make_one_evaluation(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    for ref in ("Observation/5793214", "Observation/5793215"):
        enqueue_change(queue, "hapi", ref, version="1", patient=f"Patient/{PATIENT_ID}")

    outcomes = worker.run_until_idle()

    assert [o.kind for o in outcomes] == ["change", "change", "evaluate"]
    assert len(hapi.transactions) == 1


def test_server_down_then_back_is_retried_with_backoff_and_completes(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    html = (
        Path(__file__).resolve().parents[2] / "fixtures/fhir_server/nginx_503.html"
    ).read_bytes()
    normal = hapi.transaction.side_effect
    hapi.transaction.side_effect = [
        httpx.Response(503, content=html, headers={"Content-Type": "text/html"}),
        httpx.ConnectError("connection refused"),
        normal,
    ]
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    assert [o.state for o in worker.run_until_idle()] == ["retry"]
    assert worker.run_until_idle() == []  # not due before its backoff
    clock.advance(10)
    assert [o.state for o in worker.run_until_idle()] == ["retry"]
    clock.advance(20)
    [done] = worker.run_until_idle()

    assert done.state == "done" and done.created > 0
    assert queue.stats()["done"] == 1 and queue.dead_letters() == []


def test_429_retry_after_is_honoured_by_the_client(
    queue: Queue, settings: Settings, clock: Clock, hapi: FakeHapi
) -> None:
    worker = make_worker(queue, settings, clock, retries=2)
    throttled = fixture("gateway_operationoutcome_429_throttled.json")
    normal = hapi.transaction.side_effect
    hapi.transaction.side_effect = [fhir(throttled, 429, **{"Retry-After": "7"}), normal]
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    [outcome] = worker.run_until_idle()

    assert outcome.state == "done"
    assert worker.sleeps == [7.0]  # type: ignore[attr-defined]


def test_operation_outcome_error_dead_letters_with_the_servers_reason(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    hapi.other_searches["ServiceRequest"].mock(
        return_value=fhir(fixture("hapi_r4_operationoutcome_400_unknown_param.json"), 400)
    )
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    [outcome] = worker.run_until_idle()

    assert outcome.state == "dead"
    [dead] = queue.dead_letters()
    assert dead.last_error is not None and dead.last_error.startswith("not retryable: ")
    assert "400" in dead.last_error and "search ServiceRequest" in dead.last_error
    assert hapi.transactions == []


def test_retries_end_in_the_dead_letter_table(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    hapi.transaction.mock(return_value=httpx.Response(502))
    queue.enqueue_patient(PATIENT, "Observation/5793214")
    states = []
    for _ in range(3):
        states += [o.state for o in worker.run_until_idle()]
        clock.advance(3600)

    assert states == ["retry", "retry", "dead"]
    assert "gave up after 3 attempts" in (queue.dead_letters()[0].last_error or "")


def test_a_worker_killed_mid_job_is_replaced_after_its_lease_and_writes_nothing_twice(
    queue: Queue, settings: Settings, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    class Killed(BaseException):
        pass

    def die_after_writing(stage: str, job: object) -> None:
        if stage == "written":
            raise Killed

    doomed = Worker(queue, settings, client_factory=lambda n, ep: FhirClient(ep.fhir_base))
    doomed._on_stage = die_after_writing
    doomed._clock = clock
    queue.enqueue_patient(PATIENT, "Observation/5793214")
    with pytest.raises(Killed):
        doomed.run_once()
    written = {k: len(v) for k, v in hapi.stored.items()}

    assert worker.run_until_idle() == []  # still leased to the dead worker
    clock.advance(settings.service.worker_lease_s + 1)
    [rerun] = worker.run_until_idle()

    assert rerun.state == "done" and rerun.created == 0
    assert {k: len(v) for k, v in hapi.stored.items()} == written
    assert queue.stats() == {"queued": 0, "running": 0, "done": 1, "dead": 0}


def test_write_back_off_evaluates_but_writes_nothing(
    queue: Queue, settings: Settings, clock: Clock, hapi: FakeHapi
) -> None:
    import dataclasses

    quiet = dataclasses.replace(
        settings, service=dataclasses.replace(settings.service, write_back=False)
    )
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    [outcome] = make_worker(queue, quiet, clock).run_until_idle()

    assert outcome.note == "write-back is off" and hapi.transactions == []


# ----------------------------------------------------------------- supersession


def test_normal_follow_up_supersedes_an_abnormal_assessment_with_a_negligible_one(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    queue.enqueue_patient(PATIENT, "Observation/5793214")
    worker.run_until_idle()
    [abnormal] = hapi.stored["RiskAssessment"]

    # Two days later a normal CBC is the newest result.
    page = fixture("hapi_r4_observation_searchset_page1.json")
    for entry, value in zip(page["entry"], (6.1, 3.4), strict=True):
        entry["resource"]["id"] += "9"
        entry["resource"]["effectiveDateTime"] = "2026-02-12T07:40:00+00:00"
        entry["resource"]["valueQuantity"]["value"] = value
    hapi.cbc_pages[PATIENT_ID] = [page, *hapi.cbc_pages[PATIENT_ID][1:]]
    clock.advance(2 * 86400)
    queue.enqueue_patient(PATIENT, "Observation/57932149")
    [outcome] = worker.run_until_idle()

    assert outcome.created == 1
    old, new = hapi.stored["RiskAssessment"]
    assert old is abnormal and old["status"] == "final"  # never modified
    risk = new["prediction"][0]["qualitativeRisk"]["coding"][0]["code"]
    assert risk == "negligible" and new["occurrenceDateTime"] > old["occurrenceDateTime"]
    assert new["mitigation"] == "None needed."  # valid against our profile, never ""

    clock.advance(3600)
    queue.enqueue_patient(PATIENT, "Observation/57932159")
    [again] = worker.run_until_idle()
    assert again.note == "nothing to write" and len(hapi.stored["RiskAssessment"]) == 2


def test_normal_result_without_an_earlier_assessment_writes_nothing(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    queue.enqueue_patient(patient_key("hapi", "Patient/6100401"), "Observation/6100448")

    [outcome] = worker.run_until_idle()

    assert outcome.note == "nothing to write" and hapi.transactions == []


# ----------------------------------------------------------------- change jobs


def test_same_result_version_is_queued_once_however_it_arrives(queue: Queue) -> None:
    first = enqueue_change(queue, "hapi", "Observation/5793214", version="1", event_key="evt:a:1")
    resent = enqueue_change(queue, "hapi", "Observation/5793214", version="1", event_key="evt:a:1")
    other_sub = enqueue_change(
        queue, "hapi", "Observation/5793214", version="1", event_key="evt:b:9"
    )
    newer = enqueue_change(queue, "hapi", "Observation/5793214", version="2")

    assert (first, resent, other_sub, newer) == (True, False, False, True)


def test_result_without_version_is_deduplicated_by_its_content(queue: Queue) -> None:
    body = fixture("hapi_r4_observation_changed_since.json")["entry"][0]["resource"]
    stripped = {k: v for k, v in body.items() if k != "meta"}
    args = ("hapi", "Observation/5793214")

    assert enqueue_change(queue, *args, resource=stripped) is True
    assert enqueue_change(queue, *args, resource=dict(reversed(stripped.items()))) is False
    assert enqueue_change(queue, *args, resource={**stripped, "status": "amended"}) is True


def test_id_only_change_reads_the_result_and_is_rekeyed_by_version(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    sub = subscription_key("hapi", "sub-anc")
    enqueue_change(queue, "hapi", "Observation/5793214", event_key=f"evt:{sub}:17")

    outcomes = worker.run_until_idle()

    assert [o.kind for o in outcomes] == ["change", "change", "evaluate"]
    assert outcomes[0].note == "queued by version"
    assert hapi.observation_read.call_count == 1
    # The same version reached by another route (a catch-up search) is not queued again.
    assert enqueue_change(queue, "hapi", "Observation/5793214", version="1") is False


def test_result_deleted_before_we_read_it_is_dropped_not_retried(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    enqueue_change(queue, "hapi", "Observation/404404", event_key="evt:hapi/s:3")

    [outcome] = worker.run_until_idle()

    assert outcome.state == "done" and "gone" in outcome.note
    assert queue.dead_letters() == [] and hapi.transactions == []


def test_result_that_is_not_a_cbc_is_not_evaluated(
    queue: Queue, worker: Worker, hapi: FakeHapi
) -> None:
    hapi.observations["7000001"] = {
        "resourceType": "Observation",
        "id": "7000001",
        "meta": {"versionId": "1"},
        "status": "final",
        "code": {"coding": [{"system": codes.LOINC, "code": "2345-7"}]},  # glucose
        "subject": {"reference": "Patient/5793201"},
    }
    enqueue_change(queue, "hapi", "Observation/7000001", event_key="evt:hapi/s:4")

    [outcome] = worker.run_until_idle()

    assert outcome.note == "not a result we assess" and queue.stats()["done"] == 1


def test_job_for_an_endpoint_no_longer_configured_is_dead_lettered(
    queue: Queue, worker: Worker
) -> None:
    queue.enqueue_patient(patient_key("retired", "Patient/1"), "Observation/1")

    [outcome] = worker.run_until_idle()

    assert outcome.state == "dead" and "no longer configured" in outcome.note


# ----------------------------------------------------------------- catch-up and gaps


def test_catch_up_search_queues_each_changed_result_once_and_moves_the_watermark(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    sub = subscription_key("hapi", None)
    enqueue_catch_up(queue, "hapi", sub, clock())
    clock.advance(2)

    outcomes = worker.run_until_idle()

    params = hapi.observation_search.calls[0].request.url.params
    assert params["_lastUpdated"] == "ge2026-02-09T12:00:02Z"  # 24 h lookback, first time
    assert params["_sort"] == "_lastUpdated"
    assert params["code"] == queries.any_code(codes.LOINC, queries.SUBSCRIBED_LOINC)
    assert outcomes[0].note == "3 changed results found, 3 new"
    state = queue.subscription_state(sub)
    assert state is not None and state.watermark == "2026-02-10T10:19:58.731+00:00"
    assert len(hapi.transactions) == 1  # one patient abnormal; the other normal, nothing new

    enqueue_catch_up(queue, "hapi", sub, clock())
    clock.advance(2)
    [again] = [o for o in worker.run_until_idle() if o.kind == "catch-up"]
    assert hapi.observation_search.calls.last.request.url.params["_lastUpdated"] == (
        "ge2026-02-10T10:18:58Z"  # from the watermark, with a minute of overlap
    )
    assert again.note == "3 changed results found, 0 new"


def test_gap_that_fills_itself_within_the_grace_period_needs_no_search(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    sub = subscription_key("hapi", "sub-anc")
    queue.record_event(sub, 21)
    assert queue.record_event(sub, 23).missing == (22,)
    enqueue_gap(queue, "hapi", sub, 23, due=clock() + 30)
    queue.record_event(sub, 22)  # late, out of order

    clock.advance(31)
    [outcome] = worker.run_until_idle()

    assert outcome.note == "the missing events arrived after all"
    assert hapi.observation_search.call_count == 0


def test_gap_that_stays_open_is_recovered_by_a_search_and_closed(
    queue: Queue, worker: Worker, hapi: FakeHapi, clock: Clock
) -> None:
    sub = subscription_key("hapi", "sub-anc")
    queue.record_event(sub, 21)
    queue.record_event(sub, 23)
    enqueue_gap(queue, "hapi", sub, 23, due=clock() + 30)

    assert worker.run_until_idle() == []  # 22 may still be in flight
    clock.advance(31)
    outcomes = worker.run_until_idle()

    catch_ups = [c for c in hapi.observation_search.calls if "_lastUpdated" in c.request.url.params]
    assert outcomes[0].kind == "catch-up" and len(catch_ups) == 1
    state = queue.subscription_state(sub)
    assert state is not None and state.last_contiguous == 23
    assert queue.record_event(sub, 22).duplicate  # arriving now, it is recognised as seen


# ----------------------------------------------------------------- hygiene


def test_transaction_for_builds_conditional_creates_only() -> None:
    resources = [
        {
            "resourceType": "RiskAssessment",
            "id": "a1",
            "identifier": [{"system": "http://x/ra", "value": "v1"}],
        }
    ]
    assert transaction_for(resources)["entry"] == [
        {
            "fullUrl": "urn:uuid:a1",
            "resource": {
                "resourceType": "RiskAssessment",
                "identifier": [{"system": "http://x/ra", "value": "v1"}],
            },
            "request": {
                "method": "POST",
                "url": "RiskAssessment",
                "ifNoneExist": "identifier=http://x/ra|v1",
            },
        }
    ]


def test_logs_name_jobs_and_counts_never_patients(
    queue: Queue, worker: Worker, hapi: FakeHapi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fhir_leuko")
    enqueue_change(queue, "hapi", "Observation/5793214", event_key="evt:hapi/s:1")
    worker.run_until_idle()

    assert "job 1 (change) done" in caplog.text
    assert PATIENT_ID not in caplog.text and "Testpatient" not in caplog.text


def test_a_failure_is_stored_in_full_but_logged_without_the_servers_text(
    queue: Queue, worker: Worker, hapi: FakeHapi, caplog: pytest.LogCaptureFixture
) -> None:
    not_known = fixture("hapi_r4_operationoutcome_404.json")
    not_known["issue"][0]["diagnostics"] = f"HAPI-2001: Resource Patient/{PATIENT_ID} is not known"
    hapi.patient.mock(return_value=fhir(not_known, 404))
    caplog.set_level(logging.DEBUG, logger="fhir_leuko")
    queue.enqueue_patient(PATIENT, "Observation/5793214")

    [outcome] = worker.run_until_idle()

    assert outcome.state == "dead"
    assert f"Patient/{PATIENT_ID} is not known" in (queue.dead_letters()[0].last_error or "")
    assert "FhirNotFound (HTTP 404)" in caplog.text
    assert PATIENT_ID not in caplog.text

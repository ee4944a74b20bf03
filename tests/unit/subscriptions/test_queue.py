"""The durable queue: dedupe, leases, backoff, dead letters, coalescing, gaps, persistence.

Every test that takes ``db_path`` or ``queue`` runs on both backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.storage import SqliteDatabase, StorageError, _enable_wal
from fhir_leuko.subscriptions.queue import EVALUATE, Queue

T0 = 1_772_604_000.0  # 2026-03-04T06:00:00Z; tests pass time explicitly and never sleep


@pytest.fixture
def db_path(storage_target: str) -> str:
    """A SQLite file or a PostgreSQL URL (the conftest runs each test on both)."""
    return storage_target


@pytest.fixture
def queue(db_path: str) -> Iterator[Queue]:
    with Queue(
        db_path, clock=lambda: T0, backoff_base_s=10, backoff_cap_s=100, max_attempts=5
    ) as q:
        yield q


def obs_key(obs_id: str, version: str) -> str:
    return f"res:Observation/{obs_id}/_history/{version}"


# ----------------------------------------------------------------- durability settings


def test_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    db_path = tmp_path / "queue.sqlite3"
    with Queue(db_path) as queue:
        with sqlite3.connect(db_path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert isinstance(queue.database, SqliteDatabase)
        assert queue.database.connection.execute("PRAGMA synchronous").fetchone()[0] == 2


# ----------------------------------------------------------------- dedupe


def test_a_resent_notification_is_enqueued_once(queue: Queue) -> None:
    payload = {"focus": "Observation/obs-wbc-311", "version": "2"}
    assert queue.enqueue("resource", payload, dedupe_key=obs_key("obs-wbc-311", "2")) is True
    assert queue.enqueue("resource", payload, dedupe_key=obs_key("obs-wbc-311", "2")) is False
    assert queue.enqueue("resource", payload, dedupe_key=obs_key("obs-wbc-311", "3")) is True
    assert queue.stats()["queued"] == 2


def test_dedupe_key_is_remembered_after_the_job_is_done(queue: Queue) -> None:
    assert queue.enqueue("event", {}, dedupe_key="sub:sub-anc:event:17", subscription_id="sub-anc")
    job = queue.claim(T0, lease_s=30)
    assert job is not None and queue.complete(job.id)
    assert queue.enqueue("event", {}, dedupe_key="sub:sub-anc:event:17") is False


# ----------------------------------------------------------------- claim and leases


def test_claim_takes_the_oldest_due_job_and_round_trips_fields(queue: Queue) -> None:
    queue.enqueue(
        "resource",
        {"focus": "Observation/obs-1"},
        dedupe_key="a",
        subscription_id="sub-anc",
        patient_ref="Patient/pt-58",
        now=T0,
    )
    queue.enqueue("resource", {"focus": "Observation/obs-2"}, dedupe_key="b", now=T0 + 1)
    job = queue.claim(T0 + 2, lease_s=30)
    assert job is not None
    assert (job.dedupe_key, job.kind, job.state, job.attempts) == ("a", "resource", "running", 1)
    assert (job.subscription_id, job.patient_ref) == ("sub-anc", "Patient/pt-58")
    assert job.payload == {"focus": "Observation/obs-1"}
    assert job.lease_until == T0 + 32
    second = queue.claim(T0 + 2, lease_s=30)
    assert second is not None and second.dedupe_key == "b"
    assert queue.claim(T0 + 2, lease_s=30) is None


def test_a_crashed_workers_job_is_claimable_again_after_its_lease(db_path: str) -> None:
    first = Queue(db_path)
    first.enqueue("resource", {"focus": "Observation/obs-1"}, dedupe_key="k", now=T0)
    crashed = first.claim(T0, lease_s=60)
    assert crashed is not None
    # The worker dies without complete(); a second process opens the same file.
    first.close()
    second = Queue(db_path)
    assert second.claim(T0 + 59, lease_s=60) is None  # still leased
    retaken = second.claim(T0 + 60, lease_s=60)
    assert retaken is not None and retaken.id == crashed.id
    assert retaken.attempts == 2
    assert retaken.last_error == "lease expired before completion"
    assert second.complete(retaken.id, attempt=retaken.attempts)
    assert second.stats() == {"queued": 0, "running": 0, "done": 1, "dead": 0}
    second.close()


def test_a_stale_worker_cannot_finish_a_reclaimed_job(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="k", now=T0)
    slow = queue.claim(T0, lease_s=10)
    fast = queue.claim(T0 + 11, lease_s=10)
    assert slow is not None and fast is not None and slow.id == fast.id
    assert queue.complete(slow.id, attempt=slow.attempts) is False
    assert queue.fail(slow.id, "late", T0 + 12, retryable=True, attempt=slow.attempts) is False
    assert queue.complete(fast.id, attempt=fast.attempts) is True


def test_complete_and_fail_ignore_jobs_that_are_not_running(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="k", now=T0)
    job_id = queue.claim(T0, lease_s=10).id  # type: ignore[union-attr]
    assert queue.complete(job_id)
    assert queue.complete(job_id) is False
    assert queue.fail(job_id, "x", T0, retryable=True) is False
    assert queue.complete(999_999) is False


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="poison", now=T0)
    now = T0
    for attempt in range(1, 6):
        job = queue.claim(now, lease_s=10)
        assert job is not None and job.attempts == attempt
        now += 10  # the worker never reports back
    assert queue.claim(now, lease_s=10) is None
    (dead,) = queue.dead_letters()
    assert dead.dedupe_key == "poison"
    assert dead.last_error == "lease expired after 5 attempts (worker crashed or hung)"


# ----------------------------------------------------------------- backoff and dead letters


def test_backoff_doubles_from_the_base_and_is_capped(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="k", now=T0)
    now = T0
    delays = []
    for _ in range(4):
        job = queue.claim(now, lease_s=5)
        assert job is not None
        assert queue.fail(job.id, "FHIR server answered 503", now, retryable=True)
        stored = queue.get(job.id)
        assert stored is not None and stored.state == "queued"
        assert stored.last_error == "FHIR server answered 503"
        delay = stored.next_attempt_at - now
        delays.append(delay)
        assert queue.claim(now + delay - 0.001, lease_s=5) is None  # not due yet
        now += delay
    assert delays == [10, 20, 40, 80]
    assert [queue.backoff_delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 100, 100, 100]


def test_dead_letter_after_max_attempts_keeps_the_reason(queue: Queue) -> None:
    queue.enqueue("resource", {"focus": "Observation/obs-1"}, dedupe_key="k", now=T0)
    now = T0
    for _ in range(5):
        job = queue.claim(now, lease_s=5)
        assert job is not None
        queue.fail(job.id, "FHIR server timed out", now, retryable=True)
        now += 1000
    assert queue.claim(now, lease_s=5) is None
    (dead,) = queue.dead_letters()
    assert dead.state == "dead" and dead.attempts == 5
    assert dead.last_error == "gave up after 5 attempts: FHIR server timed out"
    assert queue.stats()["dead"] == 1


def test_non_retryable_failure_is_dead_lettered_at_once(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="k", now=T0)
    job = queue.claim(T0, lease_s=5)
    assert job is not None
    queue.fail(job.id, "FHIR server answered 403", T0, retryable=False)
    (dead,) = queue.dead_letters()
    assert dead.last_error == "not retryable: FHIR server answered 403"
    assert dead.attempts == 1


# ----------------------------------------------------------------- coalescing


def test_several_results_of_one_draw_make_one_evaluation(queue: Queue) -> None:
    assert queue.enqueue_patient("Patient/pt-58", "Observation/obs-wbc-311") is True
    assert queue.enqueue_patient("Patient/pt-58", "Observation/obs-neut-312") is False
    assert queue.enqueue_patient("Patient/pt-58", "Observation/obs-neut-312") is False
    assert queue.enqueue_patient("Patient/pt-99", "Observation/obs-wbc-400") is True
    job = queue.claim(T0, lease_s=30)
    assert job is not None and job.kind == EVALUATE and job.patient_ref == "Patient/pt-58"
    assert job.payload == {
        "patient": "Patient/pt-58",
        "reasons": ["Observation/obs-wbc-311", "Observation/obs-neut-312"],
    }
    assert queue.stats()["queued"] == 1  # pt-99


def test_a_running_evaluation_does_not_absorb_a_new_result(queue: Queue) -> None:
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-wbc-311")
    running = queue.claim(T0, lease_s=30)
    assert running is not None
    # The running evaluation may already have read the server; the new lab needs its own.
    assert queue.enqueue_patient("Patient/pt-58", "Observation/obs-plt-313") is True
    assert queue.enqueue_patient("Patient/pt-58", "Observation/obs-hgb-314") is False
    assert queue.stats() == {"queued": 1, "running": 1, "done": 0, "dead": 0}


def test_a_failed_evaluation_folds_into_the_waiting_one(queue: Queue) -> None:
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-wbc-311")
    running = queue.claim(T0, lease_s=30)
    assert running is not None
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-plt-313")
    assert queue.fail(running.id, "FHIR server answered 502", T0 + 1, retryable=True)
    assert queue.stats() == {"queued": 1, "running": 0, "done": 1, "dead": 0}
    waiting = queue.claim(T0 + 1, lease_s=30)
    assert waiting is not None and waiting.id != running.id
    assert waiting.payload["reasons"] == ["Observation/obs-plt-313", "Observation/obs-wbc-311"]
    superseded = queue.get(running.id)
    assert superseded is not None
    assert (
        superseded.last_error == f"superseded by job {waiting.id} after: FHIR server answered 502"
    )


def test_a_patients_next_evaluation_waits_while_one_is_running(queue: Queue) -> None:
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-wbc-311", now=T0)
    running = queue.claim(T0, lease_s=30)
    assert running is not None
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-plt-313", now=T0)
    queue.enqueue_patient("Patient/pt-99", "Observation/obs-wbc-400", now=T0)
    other = queue.claim(T0, lease_s=30)
    assert other is not None and other.patient_ref == "Patient/pt-99"
    assert queue.claim(T0, lease_s=30) is None  # pt-58's second evaluation must wait
    assert queue.complete(running.id, attempt=running.attempts)
    waiting = queue.claim(T0, lease_s=30)
    assert waiting is not None and waiting.patient_ref == "Patient/pt-58"
    assert waiting.payload["reasons"] == ["Observation/obs-plt-313"]


def test_after_a_crash_the_patients_older_job_is_retaken_before_the_newer(queue: Queue) -> None:
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-wbc-311", now=T0)
    crashed = queue.claim(T0, lease_s=30)
    assert crashed is not None
    queue.enqueue_patient("Patient/pt-58", "Observation/obs-plt-313", now=T0)
    assert queue.claim(T0 + 10, lease_s=30) is None  # leased, and the newer one waits
    retaken = queue.claim(T0 + 30, lease_s=30)
    assert retaken is not None and retaken.id == crashed.id and retaken.attempts == 2


def test_a_released_job_is_queued_again_and_the_old_claim_stays_fenced(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="k", now=T0)
    job = queue.claim(T0, lease_s=30)
    assert job is not None
    assert queue.release(job.id, attempt=job.attempts, now=T0)
    again = queue.claim(T0, lease_s=30)
    assert again is not None and again.id == job.id and again.attempts == job.attempts + 1
    assert queue.complete(job.id, attempt=job.attempts) is False
    assert queue.release(job.id, attempt=job.attempts) is False
    assert queue.complete(again.id, attempt=again.attempts) is True


def test_due_count_counts_only_queued_jobs_that_are_due(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="now", now=T0)
    queue.enqueue("resource", {}, dedupe_key="later", now=T0 + 100)
    queue.enqueue("resource", {}, dedupe_key="taken", now=T0)
    assert queue.due_count(T0) == 2
    assert queue.claim(T0, lease_s=30) is not None
    assert queue.due_count(T0) == 1
    assert queue.due_count(T0 + 100) == 2


# ----------------------------------------------------------------- event numbers and gaps


def test_out_of_order_event_opens_then_closes_a_gap(queue: Queue) -> None:
    first = queue.record_event("sub-anc", 21)
    assert (first.has_gap, first.last_contiguous) == (False, 21)
    early = queue.record_event("sub-anc", 23)
    assert early.missing == (22,) and early.missing_count == 1 and early.has_gap
    assert early.highest_seen == 23
    late = queue.record_event("sub-anc", 22)
    assert late.missing == () and not late.has_gap
    assert late.last_contiguous == 23


def test_a_repeated_event_number_is_flagged_duplicate(queue: Queue) -> None:
    queue.record_event("sub-anc", 5)
    queue.record_event("sub-anc", 7)
    assert queue.record_event("sub-anc", 7).duplicate
    assert queue.record_event("sub-anc", 4).duplicate  # below the contiguous mark
    again = queue.record_event("sub-anc", 6)
    assert not again.duplicate and again.last_contiguous == 7


def test_subscriptions_are_tracked_separately(queue: Queue) -> None:
    queue.record_event("sub-anc", 1)
    queue.record_event("sub-wbc", 1)
    assert queue.record_event("sub-wbc", 3).missing == (2,)
    assert queue.record_event("sub-anc", 2).missing == ()


def test_heartbeat_count_above_what_we_received_is_a_gap(queue: Queue) -> None:
    handshake = queue.note_heartbeat("sub-anc", 0, now=T0)
    assert not handshake.has_gap and handshake.last_contiguous == 0
    queue.record_event("sub-anc", 1)
    queue.record_event("sub-anc", 2)
    beat = queue.note_heartbeat("sub-anc", 4, now=T0 + 3600)
    assert beat.missing == (3, 4)
    state = queue.subscription_state("sub-anc")
    assert state is not None and state.last_heard_at == T0 + 3600
    assert state.highest_reported == 4
    queue.record_event("sub-anc", 4)
    assert queue.record_event("sub-anc", 3).missing == ()


def test_first_event_with_gap_after_handshake(queue: Queue) -> None:
    queue.note_heartbeat("sub-anc", 0)
    assert queue.record_event("sub-anc", 3).missing == (1, 2)


def test_close_gap_after_catch_up_search(queue: Queue) -> None:
    queue.record_event("sub-anc", 10)
    queue.record_event("sub-anc", 15)
    closed = queue.close_gap("sub-anc", 14)
    assert (closed.has_gap, closed.last_contiguous) == (False, 15)


def test_a_huge_jump_lists_at_most_a_thousand_numbers(queue: Queue) -> None:
    queue.record_event("sub-anc", 1)
    gap = queue.record_event("sub-anc", 1_000_002)
    assert gap.missing_count == 1_000_000
    assert len(gap.missing) == 1000 and gap.missing[0] == 2


def test_watermark_is_stored_per_subscription(queue: Queue) -> None:
    queue.set_watermark("sub-wbc", "2026-03-04T06:12:08.904+00:00")
    queue.record_event("sub-wbc", 3)
    state = queue.subscription_state("sub-wbc")
    assert state is not None and state.watermark == "2026-03-04T06:12:08.904+00:00"
    assert queue.subscription_state("unknown") is None


# ----------------------------------------------------------------- persistence and threads


def test_jobs_dedupe_keys_and_gaps_survive_reopening(db_path: str) -> None:
    with Queue(db_path) as q:
        q.enqueue("resource", {"focus": "Observation/obs-1"}, dedupe_key="k1", now=T0)
        q.enqueue_patient("Patient/pt-58", "Observation/obs-1", now=T0)
        q.record_event("sub-anc", 21, now=T0)
        q.record_event("sub-anc", 23, now=T0)
        q.set_watermark("sub-anc", "2026-03-04T06:12:08Z")
    with Queue(db_path) as q:
        assert q.enqueue("resource", {}, dedupe_key="k1") is False
        assert q.enqueue_patient("Patient/pt-58", "Observation/obs-2") is False
        job = q.claim(T0, lease_s=10)
        assert job is not None and job.payload == {"focus": "Observation/obs-1"}
        assert q.record_event("sub-anc", 22).missing == ()
        state = q.subscription_state("sub-anc")
        assert state is not None and state.watermark == "2026-03-04T06:12:08Z"


def test_purge_done_forgets_only_old_done_jobs(queue: Queue) -> None:
    queue.enqueue("resource", {}, dedupe_key="old", now=T0)
    queue.enqueue("resource", {}, dedupe_key="new", now=T0)
    job = queue.claim(T0, lease_s=10)
    assert job is not None
    queue.complete(job.id, now=T0)
    assert queue.purge_done(before=T0 + 1) == 1
    assert queue.stats() == {"queued": 1, "running": 0, "done": 0, "dead": 0}


def test_concurrent_workers_never_claim_the_same_job(db_path: str) -> None:
    producer = Queue(db_path)
    for i in range(200):
        producer.enqueue("resource", {"i": i}, dedupe_key=f"k{i}", now=T0)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(q: Queue) -> None:
        while (job := q.claim(T0, lease_s=60)) is not None:
            with lock:
                claimed.append(job.payload["i"])
            q.complete(job.id)

    queues = [producer, Queue(db_path), Queue(db_path)]
    threads = [threading.Thread(target=work, args=(q,)) for q in queues for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(200))
    assert producer.stats()["done"] == 200
    for q in queues:
        q.close()


def test_replicas_evaluating_one_patient_never_overlap(db_path: str) -> None:
    """Three queue objects (three replicas) and six threads drain evaluations of four
    patients that keep asking for more: no two evaluations of a patient run at once."""
    queues = [Queue(db_path) for _ in range(3)]
    running: set[str] = set()
    overlaps: list[str] = []
    done: Counter[str] = Counter()
    lock = threading.Lock()
    patients = [f"Patient/pt-{i}" for i in range(4)]
    for p in patients:
        queues[0].enqueue_patient(p, "first", now=T0)

    def work(q: Queue) -> None:
        idle = 0
        while idle < 20:
            job = q.claim(T0, lease_s=600)
            if job is None:
                idle += 1
                threading.Event().wait(0.005)
                continue
            idle = 0
            ref = str(job.patient_ref)
            with lock:
                if ref in running:
                    overlaps.append(ref)
                running.add(ref)
            if done[ref] < 5:  # a new result arrives while this evaluation runs
                q.enqueue_patient(ref, f"more-{done[ref]}", now=T0)
            threading.Event().wait(0.002)
            with lock:
                running.discard(ref)
                done[ref] += 1
            assert q.complete(job.id, attempt=job.attempts)

    threads = [threading.Thread(target=work, args=(q,)) for q in queues for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in queues:
        q.close()
    assert overlaps == []
    assert all(done[p] == 6 for p in patients), done


def open_together(target: str | Path, n: int = 6) -> tuple[list[Queue], list[BaseException]]:
    """``n`` threads open a `Queue` on ``target`` at once: what opened, and what failed."""
    opened: list[Queue] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Queue(target))
        except BaseException as err:  # pragma: no cover - the failure the tests look for
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return opened, errors


def test_replicas_starting_together_apply_the_schema_once(db_path: str) -> None:
    opened, errors = open_together(db_path)
    assert errors == []
    with opened[0].database.read() as db:
        row = db.execute("SELECT version FROM schema_version WHERE component = 'queue'").fetchone()
    assert row is not None and row["version"] == 1
    assert opened[0].enqueue("resource", {}, dedupe_key="k", now=T0)
    for q in opened:
        q.close()


# ----------------------------------------------------------------- property


KEYS = st.sampled_from(
    [f"sub:sub-anc:event:{n}" for n in range(6)] + ["res:Observation/o/_history/1"]
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), KEYS),
        st.tuples(st.just("work"), st.sampled_from(["complete", "fail", "crash"])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_every_dedupe_key_is_processed_exactly_once(ops: list[tuple[str, str]]) -> None:
    """Whatever mix of duplicate deliveries, transient failures and crashed workers occurs,
    each distinct key ends up completed exactly once (max_attempts is high enough that
    nothing is dead-lettered in 40 operations)."""
    completed: Counter[str] = Counter()
    now = T0
    with tempfile.TemporaryDirectory() as tmp:
        q = Queue(Path(tmp) / "q.sqlite3", backoff_base_s=1, backoff_cap_s=4, max_attempts=100)

        def work(outcome: str) -> None:
            job = q.claim(now, lease_s=5)
            if job is None:
                return
            if outcome == "complete":
                assert q.complete(job.id, attempt=job.attempts, now=now)
                completed[job.dedupe_key] += 1
            elif outcome == "fail":
                q.fail(job.id, "transient", now, retryable=True, attempt=job.attempts)
            # "crash": the lease is left to expire

        for op, arg in ops:
            if op == "enqueue":
                q.enqueue("event", {}, dedupe_key=arg, now=now)
            else:
                work(arg)
            now += 1
        # Drain: time moves on so leases expire and backoffs come due.
        while q.stats()["queued"] + q.stats()["running"]:
            now += 10
            work("complete")
        q.close()
    assert set(completed) == {arg for op, arg in ops if op == "enqueue"}
    assert all(count == 1 for count in completed.values())


class _LockedThenFree:
    """A connection whose journal-mode switch meets ``database is locked`` a few times, as
    SQLite answers (at once, without its busy handler) while another opener upgrades."""

    def __init__(self, failures: int, message: str = "database is locked") -> None:
        self.failures = failures
        self.message = message
        self.calls = 0

    def execute(self, sql: str) -> sqlite3.Cursor:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError(self.message)
        return sqlite3.connect(":memory:").execute("SELECT 'wal'")


def test_the_wal_switch_is_retried_while_another_opener_holds_the_file() -> None:
    db = _LockedThenFree(failures=3)
    _enable_wal(db, deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert db.calls == 4


def test_the_wal_switch_gives_up_at_the_deadline() -> None:
    db = _LockedThenFree(failures=10_000)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _enable_wal(db, deadline=started + 0.2)  # type: ignore[arg-type]
    assert 0.2 <= time.monotonic() - started < 2
    assert db.calls > 1


def test_other_errors_of_the_wal_switch_are_not_retried() -> None:
    db = _LockedThenFree(failures=5, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _enable_wal(db, deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert db.calls == 1


def test_a_file_locked_past_the_timeout_is_reported_as_locked(tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="stayed locked for 0.2 s"):
            SqliteDatabase(path, busy_timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_many_rounds_of_openers_racing_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """Before the WAL switch was retried, about one round in thirty lost an opener."""
    for round_ in range(60):
        path = tmp_path / f"race-{round_}.sqlite3"
        opened, errors = open_together(path)
        for q in opened:
            q.close()
        assert errors == [], f"round {round_}"

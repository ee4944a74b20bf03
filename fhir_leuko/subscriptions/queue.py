"""Durable work queue and per-Subscription event bookkeeping in embedded SQLite.

Why this exists: the notification endpoint must answer within seconds (HAPI retries for about a
minute, then drops the message for good), so it only *persists* work and replies 204; a worker
evaluates afterwards. A job accepted here must survive a crash, so the database runs in WAL mode
with ``synchronous=FULL`` and every change is one ``BEGIN IMMEDIATE`` transaction.

Delivery is at-least-once on both sides: servers resend notifications, and a worker that dies
mid-job leaves a lease that expires so another worker takes the job again. Duplicates are
stopped by ``dedupe_key`` (kept after the job is done) and evaluation writes are idempotent.

Time is always a parameter (seconds since the epoch as float) or the injected ``clock``, so
tests never sleep.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = [
    "EVALUATE",
    "GapInfo",
    "Job",
    "JobState",
    "Queue",
    "SubscriptionState",
]

JobState = Literal["queued", "running", "done", "dead"]

EVALUATE = "evaluate"
"""Job kind for "re-evaluate this patient"; coalesced by `Queue.enqueue_patient`."""

_MAX_ERROR_CHARS = 2000
_MAX_REASONS = 50
_MAX_GAP_LIST = 1000

_SCHEMA_VERSION = 1
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        dedupe_key      TEXT    NOT NULL UNIQUE,
        kind            TEXT    NOT NULL,
        subscription_id TEXT,
        patient_ref     TEXT,
        payload         TEXT    NOT NULL,
        state           TEXT    NOT NULL
                        CHECK (state IN ('queued', 'running', 'done', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL    NOT NULL,
        lease_until     REAL,
        last_error      TEXT,
        created_at      REAL    NOT NULL,
        updated_at      REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_until)",
    "CREATE INDEX IF NOT EXISTS jobs_patient ON jobs (patient_ref, kind, state)",
    """
    CREATE TABLE IF NOT EXISTS subscriptions (
        subscription_id  TEXT PRIMARY KEY,
        last_contiguous  INTEGER NOT NULL,
        highest_seen     INTEGER,
        highest_reported INTEGER,
        last_heard_at    REAL,
        watermark        TEXT
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS seen_events (
        subscription_id TEXT    NOT NULL,
        event_number    INTEGER NOT NULL,
        PRIMARY KEY (subscription_id, event_number)
    ) WITHOUT ROWID
    """,
)


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work as stored; ``attempts`` counts claims, including the current one."""

    id: int
    kind: str
    dedupe_key: str
    subscription_id: str | None
    patient_ref: str | None
    payload: dict[str, Any]
    state: JobState
    attempts: int
    next_attempt_at: float
    lease_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class GapInfo:
    """Which event numbers of a Subscription we have not received (Backport IG ``errors.md``).

    ``missing`` lists at most 1,000 numbers, lowest first; ``missing_count`` is the full count.
    ``duplicate`` is true when the recorded number had already been seen.
    """

    subscription_id: str
    missing: tuple[int, ...]
    missing_count: int
    last_contiguous: int
    highest_seen: int | None
    duplicate: bool = False

    @property
    def has_gap(self) -> bool:
        return self.missing_count > 0


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """What we know about one Subscription's stream; ``last_contiguous`` has no holes below it."""

    subscription_id: str
    last_contiguous: int
    highest_seen: int | None
    highest_reported: int | None
    last_heard_at: float | None
    watermark: str | None


def _dumps(payload: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(payload)).decode("utf-8")


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        dedupe_key=row["dedupe_key"],
        subscription_id=row["subscription_id"],
        patient_ref=row["patient_ref"],
        payload=orjson.loads(row["payload"]),
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class Queue:
    """A thread-safe, crash-safe job queue; several `Queue` objects may share one file.

    Backoff after the k-th failed attempt is ``backoff_base_s * 2 ** (k - 1)`` capped at
    ``backoff_cap_s`` (deterministic, no jitter: one receiver, one worker pool, so there is no
    thundering herd to spread). After ``max_attempts`` claims the job is dead-lettered.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        backoff_base_s: float = 10.0,
        backoff_cap_s: float = 3600.0,
        max_attempts: int = 8,
        busy_timeout_s: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base_s < 0 or backoff_cap_s < 0:
            raise ValueError("backoff delays must not be negative")
        self._clock = clock
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self.max_attempts = max_attempts
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        with self._tx() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front so check-then-act
        sequences (claim, coalesce) are atomic across threads *and* processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # ------------------------------------------------------------------ jobs

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        dedupe_key: str,
        subscription_id: str | None = None,
        patient_ref: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Persist a job; ``False`` when ``dedupe_key`` was seen before (ever), so a resent
        notification (``sub:{id}:event:{n}``, ``res:Observation/{id}/_history/{v}``) is
        processed once."""
        if not kind or not dedupe_key:
            raise ValueError("kind and dedupe_key must be non-empty")
        t = self._now(now)
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs (dedupe_key, kind, subscription_id, patient_ref,"
                " payload, state, attempts, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                (dedupe_key, kind, subscription_id, patient_ref, _dumps(payload), t, t, t),
            )
            return cur.rowcount == 1

    def enqueue_patient(self, patient_ref: str, reason: str, *, now: float | None = None) -> bool:
        """Ask for one evaluation of a patient; ``False`` when one is already waiting.

        Several results of one blood draw arrive as separate notifications; they must make one
        evaluation, not five. A *running* evaluation does not absorb the request, because it
        may have read the server before the new result existed. The reason (e.g. the
        triggering reference) is appended to the waiting job's ``payload["reasons"]``.
        """
        if not patient_ref:
            raise ValueError("patient_ref must be non-empty")
        t = self._now(now)
        with self._tx() as db:
            if self._merge_into_queued_evaluation(db, patient_ref, [reason], t, exclude_id=None):
                return False
            db.execute(
                "INSERT INTO jobs (dedupe_key, kind, patient_ref, payload, state, attempts,"
                " next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                (
                    f"eval:{patient_ref}:{uuid.uuid4().hex}",
                    EVALUATE,
                    patient_ref,
                    _dumps({"patient": patient_ref, "reasons": [reason]}),
                    t,
                    t,
                    t,
                ),
            )
            return True

    def _merge_into_queued_evaluation(
        self,
        db: sqlite3.Connection,
        patient_ref: str,
        reasons: list[str],
        now: float,
        *,
        exclude_id: int | None,
    ) -> int | None:
        """Fold reasons into the waiting evaluation of this patient; its id, or ``None``."""
        row = db.execute(
            "SELECT id, payload FROM jobs WHERE patient_ref = ? AND kind = ? AND state = 'queued'"
            " AND id IS NOT ? ORDER BY id LIMIT 1",
            (patient_ref, EVALUATE, exclude_id),
        ).fetchone()
        if row is None:
            return None
        payload = orjson.loads(row["payload"])
        merged: list[str] = list(payload.get("reasons", []))
        for reason in reasons:
            if reason not in merged and len(merged) < _MAX_REASONS:
                merged.append(reason)
        payload["reasons"] = merged
        db.execute(
            "UPDATE jobs SET payload = ?, updated_at = ? WHERE id = ?",
            (_dumps(payload), now, row["id"]),
        )
        return int(row["id"])

    def claim(self, now: float, lease_s: float) -> Job | None:
        """Take the oldest due job and lease it until ``now + lease_s``.

        Due means queued with ``next_attempt_at <= now``, or running with an expired lease (its
        worker crashed or hung). A job whose lease expired after ``max_attempts`` claims is
        dead-lettered instead of handed out again, so a job that kills its worker cannot loop.
        """
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        with self._tx() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE (state = 'queued' AND next_attempt_at <= ?)"
                    " OR (state = 'running' AND lease_until <= ?) ORDER BY id LIMIT 1",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                expired = row["state"] == "running"
                if expired and row["attempts"] >= self.max_attempts:
                    db.execute(
                        "UPDATE jobs SET state = 'dead', lease_until = NULL, last_error = ?,"
                        " updated_at = ? WHERE id = ?",
                        (
                            f"lease expired after {row['attempts']} attempts"
                            " (worker crashed or hung)",
                            now,
                            row["id"],
                        ),
                    )
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                    " lease_until = ?, updated_at = ?,"
                    " last_error = CASE WHEN ? THEN 'lease expired before completion'"
                    " ELSE last_error END WHERE id = ?",
                    (now + lease_s, now, expired, row["id"]),
                )
                claimed = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
                return _job(claimed)

    def complete(
        self, job_id: int, *, attempt: int | None = None, now: float | None = None
    ) -> bool:
        """Mark a running job done; ``False`` if it is not running (or, with ``attempt``, if
        another worker has re-claimed it since: a stale worker must not finish someone else's
        claim)."""
        t = self._now(now)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'running' AND (? IS NULL OR attempts = ?)",
                (t, job_id, attempt, attempt),
            )
            return cur.rowcount == 1

    def fail(
        self,
        job_id: int,
        error: str,
        now: float,
        *,
        retryable: bool,
        attempt: int | None = None,
    ) -> bool:
        """Record a failed attempt: retry later with backoff, or dead-letter with the reason.

        ``error`` is stored and shown to operators: pass a sentence without PHI. A retried
        evaluation that finds another evaluation of the same patient already waiting folds into
        it (marked done, "superseded") to keep one waiting evaluation per patient.
        """
        error = error[:_MAX_ERROR_CHARS]
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "running":
                return False
            if attempt is not None and row["attempts"] != attempt:
                return False
            attempts = int(row["attempts"])
            if not retryable or attempts >= self.max_attempts:
                why = "not retryable" if not retryable else f"gave up after {attempts} attempts"
                db.execute(
                    "UPDATE jobs SET state = 'dead', lease_until = NULL, last_error = ?,"
                    " updated_at = ? WHERE id = ?",
                    (f"{why}: {error}", now, job_id),
                )
                return True
            if row["kind"] == EVALUATE and row["patient_ref"]:
                reasons = orjson.loads(row["payload"]).get("reasons", [])
                other = self._merge_into_queued_evaluation(
                    db, row["patient_ref"], list(reasons), now, exclude_id=job_id
                )
                if other is not None:
                    db.execute(
                        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = ?,"
                        " updated_at = ? WHERE id = ?",
                        (f"superseded by job {other} after: {error}", now, job_id),
                    )
                    return True
            db.execute(
                "UPDATE jobs SET state = 'queued', lease_until = NULL, next_attempt_at = ?,"
                " last_error = ?, updated_at = ? WHERE id = ?",
                (now + self.backoff_delay(attempts), error, now, job_id),
            )
            return True

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return float(min(self._cap, self._base * 2 ** max(0, attempts - 1)))

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recent first; ``last_error`` says why each was given up."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = 'dead' ORDER BY updated_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_job(r) for r in rows]

    def stats(self) -> dict[str, int]:
        """Job counts per state (all four keys always present), for metrics and health checks."""
        counts = {"queued": 0, "running": 0, "done": 0, "dead": 0}
        with self._lock:
            for row in self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
                counts[row["state"]] = int(row["n"])
        return counts

    def purge_done(self, before: float) -> int:
        """Delete done jobs last touched before ``before``; returns how many.

        Their dedupe keys go with them, so a duplicate arriving after the purge is processed
        again: harmless because evaluation writes are idempotent, but keep ``before`` well
        beyond any server's retry horizon (Medplum: hours).
        """
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE state = 'done' AND updated_at < ?", (before,))
            return cur.rowcount

    # ------------------------------------------------------------------ event numbers

    def record_event(
        self, subscription_id: str, event_number: int, *, now: float | None = None
    ) -> GapInfo:
        """Note that event ``event_number`` arrived and report the numbers still missing.

        Arrival order is not guaranteed (23 may come before 22), so we keep the numbers seen
        above the last contiguous one. A Subscription we have never heard of starts its
        baseline just below its first number: earlier history is the catch-up search's job.
        """
        t = self._now(now)
        with self._tx() as db:
            state = self._state(db, subscription_id)
            if state is None:
                state = SubscriptionState(subscription_id, event_number - 1, None, None, t, None)
            duplicate = event_number <= state.last_contiguous or (
                db.execute(
                    "SELECT 1 FROM seen_events WHERE subscription_id = ? AND event_number = ?",
                    (subscription_id, event_number),
                ).fetchone()
                is not None
            )
            if not duplicate:
                db.execute(
                    "INSERT INTO seen_events (subscription_id, event_number) VALUES (?, ?)",
                    (subscription_id, event_number),
                )
            highest = max(event_number, state.highest_seen or event_number)
            return self._settle(
                db,
                SubscriptionState(
                    subscription_id,
                    state.last_contiguous,
                    highest,
                    state.highest_reported,
                    t,
                    state.watermark,
                ),
                duplicate=duplicate,
            )

    def note_heartbeat(
        self, subscription_id: str, events_since_start: int, *, now: float | None = None
    ) -> GapInfo:
        """Record "last heard" and compare the server's event count with what we received.

        Used for heartbeats, handshakes and ``$status`` replies. A count above what we hold
        means events were generated that never reached us; the gap lists them. A Subscription
        we have no record of takes the count as its baseline (a handshake says ``0``).
        """
        t = self._now(now)
        with self._tx() as db:
            state = self._state(db, subscription_id)
            if state is None:
                state = SubscriptionState(
                    subscription_id, events_since_start, None, events_since_start, t, None
                )
            reported = max(events_since_start, state.highest_reported or events_since_start)
            return self._settle(
                db,
                SubscriptionState(
                    subscription_id,
                    state.last_contiguous,
                    state.highest_seen,
                    reported,
                    t,
                    state.watermark,
                ),
            )

    def close_gap(self, subscription_id: str, through: int, *, now: float | None = None) -> GapInfo:
        """Accept every event up to ``through`` as accounted for, after a catch-up search or
        ``$events`` recovery fetched what the missing notifications would have told us."""
        t = self._now(now)
        with self._tx() as db:
            state = self._state(db, subscription_id)
            if state is None:
                state = SubscriptionState(subscription_id, through, None, None, t, None)
            db.execute(
                "DELETE FROM seen_events WHERE subscription_id = ? AND event_number <= ?",
                (subscription_id, through),
            )
            return self._settle(
                db,
                SubscriptionState(
                    subscription_id,
                    max(state.last_contiguous, through),
                    state.highest_seen,
                    state.highest_reported,
                    state.last_heard_at,
                    state.watermark,
                ),
            )

    def set_watermark(self, subscription_id: str, last_updated: str) -> None:
        """Store the ``_lastUpdated`` a catch-up search should start from next time.

        The caller decides monotonicity: instants in different offsets do not compare as text.
        """
        with self._tx() as db:
            if self._state(db, subscription_id) is None:
                db.execute(
                    "INSERT INTO subscriptions (subscription_id, last_contiguous, watermark)"
                    " VALUES (?, 0, ?)",
                    (subscription_id, last_updated),
                )
            else:
                db.execute(
                    "UPDATE subscriptions SET watermark = ? WHERE subscription_id = ?",
                    (last_updated, subscription_id),
                )

    def subscription_state(self, subscription_id: str) -> SubscriptionState | None:
        with self._lock:
            return self._state(self._db, subscription_id)

    @staticmethod
    def _state(db: sqlite3.Connection, subscription_id: str) -> SubscriptionState | None:
        row = db.execute(
            "SELECT * FROM subscriptions WHERE subscription_id = ?", (subscription_id,)
        ).fetchone()
        if row is None:
            return None
        return SubscriptionState(
            subscription_id=row["subscription_id"],
            last_contiguous=row["last_contiguous"],
            highest_seen=row["highest_seen"],
            highest_reported=row["highest_reported"],
            last_heard_at=row["last_heard_at"],
            watermark=row["watermark"],
        )

    @staticmethod
    def _settle(
        db: sqlite3.Connection, state: SubscriptionState, *, duplicate: bool = False
    ) -> GapInfo:
        """Advance the contiguous mark over seen numbers, save the state, compute the gap."""
        sub = state.subscription_id
        contiguous = state.last_contiguous
        seen = [
            int(r[0])
            for r in db.execute(
                "SELECT event_number FROM seen_events WHERE subscription_id = ?"
                " ORDER BY event_number",
                (sub,),
            )
        ]
        consumed = 0
        for number in seen:
            if number <= contiguous:
                consumed += 1
            elif number == contiguous + 1:
                contiguous = number
                consumed += 1
            else:
                break
        if consumed:
            db.execute(
                "DELETE FROM seen_events WHERE subscription_id = ? AND event_number <= ?",
                (sub, contiguous),
            )
        remaining = seen[consumed:]
        db.execute(
            "INSERT INTO subscriptions (subscription_id, last_contiguous, highest_seen,"
            " highest_reported, last_heard_at, watermark) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (subscription_id) DO UPDATE SET"
            " last_contiguous = excluded.last_contiguous,"
            " highest_seen = excluded.highest_seen,"
            " highest_reported = excluded.highest_reported,"
            " last_heard_at = excluded.last_heard_at",
            (
                sub,
                contiguous,
                state.highest_seen,
                state.highest_reported,
                state.last_heard_at,
                state.watermark,
            ),
        )
        top = max(contiguous, state.highest_seen or 0, state.highest_reported or 0)
        missing_count = top - contiguous - len(remaining)
        missing: list[int] = []
        present = set(remaining)
        number = contiguous + 1
        while number <= top and len(missing) < _MAX_GAP_LIST:
            if number not in present:
                missing.append(number)
            number += 1
        return GapInfo(
            subscription_id=sub,
            missing=tuple(missing),
            missing_count=missing_count,
            last_contiguous=contiguous,
            highest_seen=state.highest_seen,
            duplicate=duplicate,
        )

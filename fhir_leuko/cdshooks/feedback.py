"""CDS Hooks feedback: what clinicians did with our cards, kept for audit.

The spec ("Feedback") lets a client POST ``{"feedback": [...]}`` to
``{baseUrl}/cds-services/{id}/feedback`` each time a user accepts a suggestion or
overrides a card, possibly several times for the same card. It defines no status codes,
so we answer 200 and store idempotently (``docs/cds-hooks.md`` section 5).

Nothing is logged here: ``userComment`` is free text and may hold PHI. We store what the
feedback contains and nothing about the patient or the caller.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypedDict, cast

import orjson

from fhir_leuko.errors import InputError
from fhir_leuko.storage import Migrations, Store

Outcome = Literal["accepted", "overridden"]
OUTCOMES: tuple[Outcome, ...] = ("accepted", "overridden")

# Bounds so one POST cannot fill the disk. Card and suggestion ids are UUIDs in practice;
# a comment is what a clinician types in a dismiss dialog.
_MAX_ITEMS = 1000
_MAX_ID_CHARS = 256
_MAX_CODING_CHARS = 1024
_MAX_COMMENT_CHARS = 4000

# RFC 3339 section 5.6 date-time, with the "T" and "Z" case-insensitive as it allows.
# The offset is required: a local time without one is not an instant.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


@dataclass(frozen=True)
class OverrideReason:
    """Why a user overrode a card: a coded reason, a comment, or both.

    ``display`` is optional here although our cards always send one: the sandbox
    returns only ``code`` and ``system``.
    """

    code: str | None = None
    system: str | None = None
    display: str | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class Feedback:
    """One feedback entry; ``outcome_timestamp`` is timezone-aware UTC."""

    card: str
    outcome: Outcome
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: OverrideReason | None = None


class ReasonCount(TypedDict):
    """How often one coded override reason was given."""

    system: str
    code: str
    display: str | None
    count: int


class FeedbackSummary(TypedDict):
    """Counts for an audit report of one service."""

    service_id: str
    total: int
    by_outcome: dict[str, int]
    by_override_reason: list[ReasonCount]
    overridden_without_reason: int


def parse_feedback(body: bytes | str | Mapping[str, object]) -> list[Feedback]:
    """Validate a feedback request body, raising :class:`InputError` on the first problem.

    Accepts the raw body or the already-decoded JSON object. Unknown fields (such as
    ``extension``) are ignored, as the spec allows.
    """
    decoded: object = body
    if isinstance(body, bytes | str):
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise InputError("the feedback body is not JSON") from err
    if not isinstance(decoded, Mapping):
        raise InputError("the feedback body is not a JSON object")
    items = decoded.get("feedback")
    if items is None:
        raise InputError("the feedback body has no feedback array")
    if not isinstance(items, list):
        raise InputError("feedback is not an array")
    if not items:
        raise InputError("feedback is an empty array")
    if len(items) > _MAX_ITEMS:
        raise InputError(f"feedback has more than {_MAX_ITEMS} entries")
    return [_parse_item(item, f"feedback[{i}]") for i, item in enumerate(items)]


def _parse_item(item: object, where: str) -> Feedback:
    if not isinstance(item, Mapping):
        raise InputError(f"{where} is not an object")
    card = _required(item, "card", where, _MAX_ID_CHARS)
    outcome = item.get("outcome")
    if outcome is None:
        raise InputError(f"{where}.outcome is missing")
    if outcome not in OUTCOMES:
        raise InputError(f"{where}.outcome must be accepted or overridden")
    timestamp = _timestamp(item.get("outcomeTimestamp"), f"{where}.outcomeTimestamp")

    suggestions: tuple[str, ...] = ()
    raw_suggestions = item.get("acceptedSuggestions")
    if outcome == "accepted":
        if raw_suggestions is None:
            raise InputError(f"{where}.acceptedSuggestions is required when outcome is accepted")
        suggestions = _suggestion_ids(raw_suggestions, f"{where}.acceptedSuggestions")
    elif raw_suggestions is not None:
        # Contradictory: an audit record must not count a suggestion as both taken and not.
        raise InputError(f"{where}.acceptedSuggestions is only allowed when outcome is accepted")

    reason: OverrideReason | None = None
    raw_reason = item.get("overrideReason")
    if raw_reason is not None:
        if outcome != "overridden":
            raise InputError(f"{where}.overrideReason is only allowed when outcome is overridden")
        reason = _override_reason(raw_reason, f"{where}.overrideReason")

    return Feedback(
        card=card,
        outcome=cast(Outcome, outcome),
        outcome_timestamp=timestamp,
        accepted_suggestions=suggestions,
        override_reason=reason,
    )


def _suggestion_ids(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InputError(f"{where} is not an array")
    if not value:
        raise InputError(f"{where} is an empty array")
    ids: list[str] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise InputError(f"{where}[{i}] is not an object")
        ids.append(_required(entry, "id", f"{where}[{i}]", _MAX_ID_CHARS))
    return tuple(sorted(set(ids)))


def _override_reason(value: object, where: str) -> OverrideReason:
    if not isinstance(value, Mapping):
        raise InputError(f"{where} is not an object")
    comment = _optional(value, "userComment", where, _MAX_COMMENT_CHARS)
    coding = value.get("reason")
    if coding is None:
        if comment is None:
            # The spec's JSON rules forbid an empty object; 3.0 states it (cds-fb-3).
            raise InputError(f"{where} has neither reason nor userComment")
        return OverrideReason(user_comment=comment)
    if not isinstance(coding, Mapping):
        raise InputError(f"{where}.reason is not an object")
    inner = f"{where}.reason"
    return OverrideReason(
        code=_required(coding, "code", inner, _MAX_CODING_CHARS),
        system=_required(coding, "system", inner, _MAX_CODING_CHARS),
        display=_optional(coding, "display", inner, _MAX_CODING_CHARS),
        user_comment=comment,
    )


def _required(obj: Mapping[str, object], name: str, where: str, max_chars: int) -> str:
    value = _optional(obj, name, where, max_chars)
    if value is None:
        raise InputError(f"{where}.{name} is missing")
    return value


def _optional(obj: Mapping[str, object], name: str, where: str, max_chars: int) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}.{name} is not a string")
    if not value.strip():
        raise InputError(f"{where}.{name} is empty")
    if len(value) > max_chars:
        raise InputError(f"{where}.{name} is longer than {max_chars} characters")
    return value


def _timestamp(value: object, where: str) -> datetime:
    if value is None:
        raise InputError(f"{where} is missing")
    if not isinstance(value, str):
        raise InputError(f"{where} is not a string")
    if not _RFC3339.fullmatch(value):
        raise InputError(f"{where} is not an RFC 3339 date-time with a time zone")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as err:
        raise InputError(f"{where} is not a valid date-time") from err
    return parsed.astimezone(UTC)


def _iso_utc(moment: datetime) -> str:
    """One spelling per instant, so the same feedback sent twice dedupes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SQLITE_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS feedback (
        id                   INTEGER PRIMARY KEY,
        dedupe_key           TEXT    NOT NULL UNIQUE,
        service_id           TEXT    NOT NULL,
        card_uuid            TEXT    NOT NULL,
        outcome              TEXT    NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
        accepted_suggestions TEXT    NOT NULL,
        reason_code          TEXT,
        reason_system        TEXT,
        reason_display       TEXT,
        user_comment         TEXT,
        outcome_timestamp    TEXT    NOT NULL,
        received_at          TEXT    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS feedback_service ON feedback (service_id, outcome)",
)
_POSTGRES_SCHEMA = (
    _SQLITE_SCHEMA[0].replace(
        "id                   INTEGER PRIMARY KEY",
        "id                   BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    _SQLITE_SCHEMA[1],
)
#: Versioned schema (`fhir_leuko.storage`).
MIGRATIONS: Migrations = {"sqlite": (_SQLITE_SCHEMA,), "postgresql": (_POSTGRES_SCHEMA,)}


class FeedbackStore(Store):
    """Feedback in a SQLite file or the shared PostgreSQL database; safe to share between
    threads.

    ``target`` is a file path, a ``postgresql://`` URL or an open `Database`. Calls block on
    the database: from async code, run them in a worker thread. A database that is locked or
    down past ``busy_timeout_s`` raises `StorageError`.
    """

    component = "feedback"
    migrations = MIGRATIONS
    pool_size = 2

    def record(self, service_id: str, items: Iterable[Feedback]) -> int:
        """Store feedback for ``service_id``; return how many entries were new.

        An entry already stored (same card, outcome, timestamp, accepted suggestions and
        coded reason) is skipped, so clients may resend safely. All or nothing.
        """
        if not service_id:
            raise InputError("service id is empty")
        received_at = _iso_utc(datetime.fromtimestamp(self._clock(), UTC))
        rows = [_row(service_id, item, received_at) for item in items]
        added = 0
        with self.database.transaction() as db:
            for row in rows:
                cursor = db.execute(
                    "INSERT INTO feedback (dedupe_key, service_id, card_uuid,"
                    " outcome, accepted_suggestions, reason_code, reason_system,"
                    " reason_display, user_comment, outcome_timestamp, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    row,
                )
                added += cursor.rowcount
        return added

    def summary(self, service_id: str) -> FeedbackSummary:
        """Counts by outcome and by coded override reason, for audit."""
        with self.database.read() as db:
            by_outcome: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
            for row in db.execute(
                "SELECT outcome, COUNT(*) AS n FROM feedback WHERE service_id = ? GROUP BY outcome",
                (service_id,),
            ).fetchall():
                by_outcome[row["outcome"]] = int(row["n"])
            reasons: list[ReasonCount] = [
                {
                    "system": row["reason_system"],
                    "code": row["reason_code"],
                    "display": row["display"],
                    "count": int(row["n"]),
                }
                for row in db.execute(
                    "SELECT reason_system, reason_code, MAX(reason_display) AS display,"
                    " COUNT(*) AS n FROM feedback WHERE service_id = ?"
                    " AND reason_code IS NOT NULL GROUP BY reason_system, reason_code"
                    " ORDER BY COUNT(*) DESC, reason_system, reason_code",
                    (service_id,),
                ).fetchall()
            ]
            without = db.execute(
                "SELECT COUNT(*) AS n FROM feedback WHERE service_id = ?"
                " AND outcome = 'overridden' AND reason_code IS NULL",
                (service_id,),
            ).fetchone()
        return {
            "service_id": service_id,
            "total": sum(by_outcome.values()),
            "by_outcome": by_outcome,
            "by_override_reason": reasons,
            "overridden_without_reason": int(without["n"]) if without is not None else 0,
        }


def _row(service_id: str, item: Feedback, received_at: str) -> tuple[str | None, ...]:
    reason = item.override_reason or OverrideReason()
    timestamp = _iso_utc(item.outcome_timestamp)
    suggestions = json.dumps(sorted(set(item.accepted_suggestions)))
    # The coded reason is part of the identity: two different reasons given for the
    # same card at the same instant are two facts, not a resend.
    identity = json.dumps(
        [service_id, item.card, item.outcome, timestamp, suggestions, reason.system, reason.code]
    )
    return (
        hashlib.sha256(identity.encode()).hexdigest(),
        service_id,
        item.card,
        item.outcome,
        suggestions,
        reason.code,
        reason.system,
        reason.display,
        reason.user_comment,
        timestamp,
        received_at,
    )

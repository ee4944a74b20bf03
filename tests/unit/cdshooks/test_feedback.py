"""CDS Hooks feedback: parsing the spec's bodies and storing them once, for audit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_leuko.cdshooks.feedback import (
    Feedback,
    FeedbackStore,
    OverrideReason,
    parse_feedback,
)
from fhir_leuko.errors import InputError
from fhir_leuko.storage import SqliteDatabase

SERVICE = "leuko-patient-view"
RECEIVED = 1_800_000_000.0

# The three bodies of CDS Hooks 2.0 "Feedback", as published.
SPEC_ACCEPTED = {
    "feedback": [
        {
            "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}
SPEC_OVERRIDDEN_WITHOUT_REASON = {
    "feedback": [
        {
            "card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
            "outcome": "overridden",
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}
SPEC_OVERRIDDEN_WITH_REASON = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "d7ecf885",
                    "system": "https://example.com/cds-hooks/override-reason-system",
                },
                "userComment": "clinician entered comment",
            },
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}
# What sandbox.cds-hooks.org posts on dismiss: the coded reason without display, and a
# JavaScript toISOString() timestamp.
SANDBOX_DISMISS = {
    "feedback": [
        {
            "card": "0b4c2f57-5a4e-4b2b-9d0c-2f1e2f0c7a11",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "anc-not-current",
                    "system": "https://fhir-leuko.example.org/CodeSystem/override-reason",
                }
            },
            "outcomeTimestamp": "2026-03-04T09:15:27.431Z",
        }
    ]
}


@pytest.fixture
def store(storage_target: str) -> Iterator[FeedbackStore]:
    """A store on a SQLite file or on PostgreSQL (each test runs on both)."""
    with FeedbackStore(storage_target, clock=lambda: RECEIVED) as opened:
        yield opened


def stored_rows(store: FeedbackStore) -> list[Mapping[str, Any]]:
    with store.database.read() as db:
        return [dict(row) for row in db.execute("SELECT * FROM feedback ORDER BY id").fetchall()]


def with_item(**changes: Any) -> dict[str, Any]:
    """The spec's accepted example with one entry changed; None removes a field."""
    item = {**SPEC_ACCEPTED["feedback"][0], **changes}
    return {"feedback": [{k: v for k, v in item.items() if v is not None}]}


# --- parsing ---------------------------------------------------------------------------------


def test_spec_accepted_example_parses() -> None:
    (item,) = parse_feedback(SPEC_ACCEPTED)
    assert item == Feedback(
        card="4e0a3a1e-3283-4575-ab82-028d55fe2719",
        outcome="accepted",
        outcome_timestamp=datetime(2020, 12, 11, tzinfo=UTC),
        accepted_suggestions=("e56e1945-20b3-4393-8503-a1a20fd73152",),
    )


def test_spec_override_with_reason_and_comment_parses() -> None:
    (item,) = parse_feedback(SPEC_OVERRIDDEN_WITH_REASON)
    assert item.override_reason == OverrideReason(
        code="d7ecf885",
        system="https://example.com/cds-hooks/override-reason-system",
        user_comment="clinician entered comment",
    )


def test_raw_json_bytes_parse_like_the_decoded_object() -> None:
    raw = json.dumps(SPEC_OVERRIDDEN_WITH_REASON).encode()
    assert parse_feedback(raw) == parse_feedback(SPEC_OVERRIDDEN_WITH_REASON)


def test_sandbox_override_without_display_parses() -> None:
    (item,) = parse_feedback(SANDBOX_DISMISS)
    assert item.override_reason is not None
    assert item.override_reason.display is None
    assert item.outcome_timestamp == datetime(2026, 3, 4, 9, 15, 27, 431000, tzinfo=UTC)


def test_override_with_display_and_comment_only_parse() -> None:
    body = {
        "feedback": [
            {
                "card": "c1",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "c", "system": "https://s", "display": "Not relevant"}
                },
                "outcomeTimestamp": "2026-03-04T09:15:27Z",
            },
            {
                "card": "c2",
                "outcome": "overridden",
                "overrideReason": {"userComment": "seen by haematology"},
                "outcomeTimestamp": "2026-03-04T09:15:28Z",
            },
        ]
    }
    first, second = parse_feedback(body)
    assert first.override_reason == OverrideReason(
        code="c", system="https://s", display="Not relevant"
    )
    assert second.override_reason == OverrideReason(user_comment="seen by haematology")


def test_timestamp_with_offset_is_converted_to_utc() -> None:
    (item,) = parse_feedback(with_item(outcomeTimestamp="2020-12-11T01:30:00+01:30"))
    assert item.outcome_timestamp == datetime(2020, 12, 11, 0, 0, tzinfo=UTC)


def test_unknown_fields_and_extensions_are_ignored() -> None:
    body = with_item(extension={"com.example.ehr-trace": "x"})
    body["extension"] = {"com.example.batch": 1}
    assert parse_feedback(body) == parse_feedback(SPEC_ACCEPTED)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the feedback body is not JSON"),
        ([], "the feedback body is not a JSON object"),
        ({}, "the feedback body has no feedback array"),
        ({"feedback": {}}, "feedback is not an array"),
        ({"feedback": []}, "feedback is an empty array"),
        ({"feedback": ["x"]}, "feedback[0] is not an object"),
        (with_item(card=None), "feedback[0].card is missing"),
        (with_item(card=42), "feedback[0].card is not a string"),
        (with_item(card=" "), "feedback[0].card is empty"),
        (with_item(outcome=None), "feedback[0].outcome is missing"),
        (with_item(outcome="ignored"), "feedback[0].outcome must be accepted or overridden"),
        (with_item(outcomeTimestamp=None), "feedback[0].outcomeTimestamp is missing"),
        (with_item(outcomeTimestamp=1607644800), "feedback[0].outcomeTimestamp is not a string"),
        (
            with_item(outcomeTimestamp="2020-12-11"),
            "feedback[0].outcomeTimestamp is not an RFC 3339 date-time with a time zone",
        ),
        (
            with_item(outcomeTimestamp="2020-12-11T00:00:00"),
            "feedback[0].outcomeTimestamp is not an RFC 3339 date-time with a time zone",
        ),
        (
            with_item(outcomeTimestamp="2020-02-30T00:00:00Z"),
            "feedback[0].outcomeTimestamp is not a valid date-time",
        ),
        (
            with_item(acceptedSuggestions=None),
            "feedback[0].acceptedSuggestions is required when outcome is accepted",
        ),
        (with_item(acceptedSuggestions=[]), "feedback[0].acceptedSuggestions is an empty array"),
        (
            with_item(acceptedSuggestions={"id": "s"}),
            "feedback[0].acceptedSuggestions is not an array",
        ),
        (
            with_item(acceptedSuggestions=[{"uuid": "s"}]),
            "feedback[0].acceptedSuggestions[0].id is missing",
        ),
        (
            with_item(outcome="overridden"),
            "feedback[0].acceptedSuggestions is only allowed when outcome is accepted",
        ),
        (
            with_item(overrideReason={"userComment": "x"}),
            "feedback[0].overrideReason is only allowed when outcome is overridden",
        ),
        (
            with_item(outcome="overridden", acceptedSuggestions=None, overrideReason={}),
            "feedback[0].overrideReason has neither reason nor userComment",
        ),
        (
            with_item(
                outcome="overridden",
                acceptedSuggestions=None,
                overrideReason={"reason": {"system": "https://s"}},
            ),
            "feedback[0].overrideReason.reason.code is missing",
        ),
        (
            with_item(
                outcome="overridden",
                acceptedSuggestions=None,
                overrideReason={"reason": {"code": "c"}},
            ),
            "feedback[0].overrideReason.reason.system is missing",
        ),
        (
            with_item(
                outcome="overridden",
                acceptedSuggestions=None,
                overrideReason={"reason": "c", "userComment": "x"},
            ),
            "feedback[0].overrideReason.reason is not an object",
        ),
        (
            with_item(card="x" * 257),
            "feedback[0].card is longer than 256 characters",
        ),
    ],
)
def test_invalid_body_is_rejected_with_a_precise_message(body: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_feedback(body)
    assert str(caught.value) == message


def test_error_names_the_bad_entry_of_several() -> None:
    good = SPEC_ACCEPTED["feedback"][0]
    with pytest.raises(InputError, match=r"^feedback\[2\]\.outcome is missing$"):
        parse_feedback({"feedback": [good, good, {"card": "c", "outcomeTimestamp": "x"}]})


# --- storing ---------------------------------------------------------------------------------


def test_spec_examples_are_stored_with_every_field(store: FeedbackStore) -> None:
    items = [
        *parse_feedback(SPEC_ACCEPTED),
        *parse_feedback(SPEC_OVERRIDDEN_WITHOUT_REASON),
        *parse_feedback(SPEC_OVERRIDDEN_WITH_REASON),
    ]
    assert store.record(SERVICE, items) == 3
    accepted, bare, reasoned = stored_rows(store)
    assert accepted["service_id"] == SERVICE
    assert accepted["card_uuid"] == "4e0a3a1e-3283-4575-ab82-028d55fe2719"
    assert accepted["outcome"] == "accepted"
    assert json.loads(accepted["accepted_suggestions"]) == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert accepted["outcome_timestamp"] == "2020-12-11T00:00:00.000000Z"
    assert accepted["received_at"] == "2027-01-15T08:00:00.000000Z"
    assert bare["reason_code"] is None and bare["user_comment"] is None
    assert (reasoned["reason_code"], reasoned["reason_system"], reasoned["reason_display"]) == (
        "d7ecf885",
        "https://example.com/cds-hooks/override-reason-system",
        None,
    )
    assert reasoned["user_comment"] == "clinician entered comment"


def test_sandbox_override_without_display_is_stored(store: FeedbackStore) -> None:
    assert store.record(SERVICE, parse_feedback(SANDBOX_DISMISS)) == 1
    (row,) = stored_rows(store)
    assert row["reason_code"] == "anc-not-current"
    assert row["reason_display"] is None


def test_reposting_the_same_feedback_stores_it_once(store: FeedbackStore) -> None:
    assert store.record(SERVICE, parse_feedback(SPEC_ACCEPTED)) == 1
    assert store.record(SERVICE, parse_feedback(SPEC_ACCEPTED)) == 0
    # The same instant spelled differently is the same feedback.
    respelled = with_item(outcomeTimestamp="2020-12-11T01:00:00.000+01:00")
    assert store.record(SERVICE, parse_feedback(respelled)) == 0
    assert len(stored_rows(store)) == 1


def test_duplicates_inside_one_post_are_stored_once(store: FeedbackStore) -> None:
    item = SPEC_OVERRIDDEN_WITH_REASON["feedback"][0]
    assert store.record(SERVICE, parse_feedback({"feedback": [item, item]})) == 1


def test_later_feedback_on_the_same_card_is_a_new_entry(store: FeedbackStore) -> None:
    store.record(SERVICE, parse_feedback(SPEC_ACCEPTED))
    later = with_item(outcomeTimestamp="2020-12-11T00:05:00Z")
    other_suggestion = with_item(acceptedSuggestions=[{"id": "another-suggestion"}])
    assert store.record(SERVICE, parse_feedback(later)) == 1
    assert store.record(SERVICE, parse_feedback(other_suggestion)) == 1
    assert store.record("leuko-order-select", parse_feedback(SPEC_ACCEPTED)) == 1


def test_summary_counts_by_outcome_and_reason(store: FeedbackStore) -> None:
    store.record(SERVICE, parse_feedback(SPEC_ACCEPTED))
    store.record(SERVICE, parse_feedback(SPEC_OVERRIDDEN_WITHOUT_REASON))
    store.record(SERVICE, parse_feedback(SPEC_OVERRIDDEN_WITH_REASON))
    store.record(SERVICE, parse_feedback(SANDBOX_DISMISS))
    again = SANDBOX_DISMISS["feedback"][0] | {"outcomeTimestamp": "2026-03-05T10:00:00Z"}
    store.record(SERVICE, parse_feedback({"feedback": [again]}))
    store.record("leuko-order-select", parse_feedback(SPEC_ACCEPTED))

    assert store.summary(SERVICE) == {
        "service_id": SERVICE,
        "total": 5,
        "by_outcome": {"accepted": 1, "overridden": 4},
        "by_override_reason": [
            {
                "system": "https://fhir-leuko.example.org/CodeSystem/override-reason",
                "code": "anc-not-current",
                "display": None,
                "count": 2,
            },
            {
                "system": "https://example.com/cds-hooks/override-reason-system",
                "code": "d7ecf885",
                "display": None,
                "count": 1,
            },
        ],
        "overridden_without_reason": 1,
    }


def test_summary_of_a_service_without_feedback_is_zero(store: FeedbackStore) -> None:
    summary = store.summary("never-called")
    assert summary["total"] == 0
    assert summary["by_outcome"] == {"accepted": 0, "overridden": 0}
    assert summary["by_override_reason"] == []


def test_feedback_survives_reopening_the_file(storage_target: str) -> None:
    path = storage_target
    with FeedbackStore(path) as first:
        assert first.record(SERVICE, parse_feedback(SPEC_OVERRIDDEN_WITH_REASON)) == 1
    with FeedbackStore(path) as reopened:
        assert reopened.record(SERVICE, parse_feedback(SPEC_OVERRIDDEN_WITH_REASON)) == 0
        assert reopened.summary(SERVICE)["by_outcome"] == {"accepted": 0, "overridden": 1}


def test_file_database_uses_wal(tmp_path: Path) -> None:
    with FeedbackStore(tmp_path / "feedback.sqlite3") as store:
        assert isinstance(store.database, SqliteDatabase)
        (mode,) = store.database.connection.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_an_in_memory_store_works(tmp_path: Path) -> None:
    with FeedbackStore(":memory:", clock=lambda: RECEIVED) as store:
        assert store.record(SERVICE, parse_feedback(SPEC_ACCEPTED)) == 1
        assert store.summary(SERVICE)["total"] == 1


def test_concurrent_records_from_threads_store_each_entry_once(storage_target: str) -> None:
    items = [
        Feedback(
            card=f"card-{n}",
            outcome="overridden",
            outcome_timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for n in range(50)
    ]
    added: list[int] = []
    with FeedbackStore(storage_target) as store:

        def post() -> None:
            added.append(store.record(SERVICE, items))

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(added) == 50
        assert store.summary(SERVICE)["total"] == 50


def test_empty_service_id_is_refused(store: FeedbackStore) -> None:
    with pytest.raises(InputError, match="service id is empty"):
        store.record("", parse_feedback(SPEC_ACCEPTED))

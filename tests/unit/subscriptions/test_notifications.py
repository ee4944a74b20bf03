"""Every shape in docs/subscriptions.md §5 parsed from bodies that look like what servers send."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.errors import AuthError, ConfigError, InputError
from fhir_leuko.fhirio.refs import normalise_reference
from fhir_leuko.subscriptions.notifications import (
    Notification,
    check_hmac,
    check_secret,
    parse_notification,
    parse_status_reply,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "notifications"
JSON = {"Content-Type": "application/fhir+json"}
HAPI_JSON = {"Content-Type": "application/fhir+json; charset=UTF-8"}


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(raw(name))
    return loaded


def post(body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> Notification:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_notification("POST", "", headers if headers is not None else JSON, data)


# ----------------------------------------------------------------- classic R4 (HAPI)


def test_hapi_empty_post_is_a_ping() -> None:
    n = parse_notification(
        "POST", "", {"Authorization": "Bearer tok-7Qx", "Content-Length": "0"}, b""
    )
    assert (n.kind, n.shape, n.events, n.subscription_id) == ("ping", "r4-ping", (), None)


def test_whitespace_only_body_is_a_ping() -> None:
    assert post(b" \r\n").kind == "ping"


def test_hapi_put_is_a_resource_with_version_and_patient_and_if_match_ignored() -> None:
    headers = {**HAPI_JSON, "Authorization": "Bearer tok-7Qx", "If-Match": '"7"'}
    n = parse_notification(
        "PUT", "/Observation/obs-wbc-311", headers, raw("r4-payload-observation.json")
    )
    assert (n.kind, n.shape) == ("resource", "r4-payload-put")
    (event,) = n.events
    assert event.focus == "Observation/obs-wbc-311"
    assert event.version_id == "2"  # from meta, not from If-Match
    assert event.patient == "Patient/pt-58"
    assert event.resource is not None and event.resource["valueQuantity"]["value"] == 2.7
    assert event.event_number is None


def test_put_without_version_in_body_takes_version_from_path_history() -> None:
    body = doc("r4-payload-observation.json")
    del body["meta"]
    n = parse_notification("put", "Observation/obs-wbc-311/_history/4/", JSON, orjson.dumps(body))
    assert n.events[0].version_id == "4"


def test_put_whose_path_names_another_resource_is_refused() -> None:
    with pytest.raises(InputError, match="does not match"):
        parse_notification("PUT", "/Observation/other", JSON, raw("r4-payload-observation.json"))


def test_put_path_must_end_in_type_and_id() -> None:
    with pytest.raises(InputError, match="Type/id"):
        parse_notification("PUT", "", JSON, raw("r4-payload-observation.json"))


def test_put_with_empty_body_is_refused() -> None:
    with pytest.raises(InputError, match="empty body"):
        parse_notification("PUT", "/Observation/obs-wbc-311", JSON, b"")


def test_hapi_delete_is_a_deletion_of_the_path_resource() -> None:
    n = parse_notification("DELETE", "/Observation/obs-wbc-311", {}, b"")
    assert (n.kind, n.shape) == ("deletion", "r4-delete")
    assert n.events[0].focus == "Observation/obs-wbc-311"
    assert n.events[0].resource is None and n.events[0].patient is None


def test_hapi_payload_search_transaction_gives_one_event_per_entry() -> None:
    n = post(raw("hapi-payload-search-transaction.json"))
    assert (n.kind, n.shape) == ("resource", "hapi-transaction")
    assert [e.focus for e in n.events] == ["Observation/obs-wbc-311", "Observation/obs-neut-312"]
    assert [e.version_id for e in n.events] == ["2", "1"]
    assert {e.patient for e in n.events} == {"Patient/pt-58"}


def test_transaction_entry_without_resource_uses_request_url() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Observation/obs-9"}}],
    }
    (event,) = post(bundle).events
    assert (event.focus, event.resource) == ("Observation/obs-9", None)


# ----------------------------------------------------------------- Backport R4 (Parameters)


def test_backport_handshake() -> None:
    n = post(raw("backport-r4-handshake.json"))
    assert (n.kind, n.shape, n.status) == ("handshake", "backport-r4", "requested")
    assert n.subscription_id == "sub-anc"
    assert n.events_since_start == 0
    assert n.events == ()


def test_backport_heartbeat_carries_the_event_count() -> None:
    n = post(raw("backport-r4-heartbeat.json"))
    assert (n.kind, n.status, n.events_since_start) == ("heartbeat", "active", 17)


def test_backport_id_only_event_has_focus_but_no_resource() -> None:
    n = post(raw("backport-r4-event-id-only.json"))
    assert (n.kind, n.shape, n.subscription_id) == ("event", "backport-r4", "sub-anc")
    assert n.topic == "https://ehr.example.org/SubscriptionTopic/lab-result-final"
    assert n.events_since_start == 17
    (event,) = n.events
    assert event.event_number == 17
    assert event.timestamp == "2026-03-04T06:12:08Z"
    assert event.focus == "Observation/obs-neut-312"
    assert event.resource is None and event.version_id is None
    assert event.patient == "Patient/pt-58"  # from additional-context


def test_backport_empty_content_event_has_a_number_and_no_focus() -> None:
    n = post(raw("backport-r4-event-empty.json"))
    assert n.kind == "event" and n.topic is None
    (event,) = n.events
    assert (event.event_number, event.focus, event.resource, event.patient) == (
        17,
        None,
        None,
        None,
    )


def test_backport_full_resource_event_carries_the_included_resource() -> None:
    n = post(raw("backport-r4-event-full-resource.json"))
    (event,) = n.events
    assert event.focus == "Observation/obs-neut-312"
    assert event.resource is not None and event.resource["code"]["coding"][0]["code"] == "751-8"
    assert event.version_id == "1"
    assert event.patient == "Patient/pt-58"


def test_hapi_topic_event_accepts_value_date_timestamp() -> None:
    n = post(raw("hapi-r4-topic-event-valuedate.json"), HAPI_JSON)
    assert (n.kind, n.shape, n.subscription_id) == ("event", "backport-r4", "sub-wbc")
    (event,) = n.events
    assert (event.event_number, event.timestamp) == (4, "2026-03-04")
    assert event.version_id == "2" and event.resource is not None
    assert event.patient == "Patient/pt-58"  # from the included resource's subject


@pytest.mark.parametrize("key", ["valueInstant", "valueDateTime", "valueDate"])
def test_timestamp_accepts_instant_datetime_and_date(key: str) -> None:
    bundle = doc("backport-r4-event-empty.json")
    parts = bundle["entry"][0]["resource"]["parameter"][4]["part"]
    parts[1] = {"name": "timestamp", key: "2026-03-04"}
    assert post(bundle).events[0].timestamp == "2026-03-04"


def test_query_status_reply_in_history_bundle() -> None:
    n = post(raw("backport-r4-query-status.json"))
    assert (n.kind, n.status, n.events_since_start, n.events) == ("query-status", "error", 25, ())


def test_query_event_reply_drops_history_from_focus_and_keeps_the_version() -> None:
    n = post(raw("backport-r4-query-event.json"))
    assert n.kind == "query-event"
    (event,) = n.events
    assert (event.event_number, event.focus, event.version_id) == (
        22,
        "Observation/obs-neut-315",
        "3",
    )


def test_status_entry_need_not_be_first() -> None:
    bundle = doc("backport-r4-event-id-only.json")
    bundle["entry"].reverse()
    assert post(bundle).events[0].focus == "Observation/obs-neut-312"


def test_focus_given_as_urn_uuid_resolves_through_full_url() -> None:
    bundle = doc("backport-r4-event-full-resource.json")
    bundle["entry"][1]["fullUrl"] = "urn:uuid:61c2e8a4-0b7d-4f3e-9a15-c8d2f6b0e497"
    parts = bundle["entry"][0]["resource"]["parameter"][5]["part"]
    parts[2]["valueReference"]["reference"] = "urn:uuid:61c2e8a4-0b7d-4f3e-9a15-c8d2f6b0e497"
    (event,) = post(bundle).events
    assert event.focus == "Observation/obs-neut-312" and event.resource is not None


def test_event_notification_without_events_has_no_events() -> None:
    bundle = doc("backport-r4-event-empty.json")
    del bundle["entry"][0]["resource"]["parameter"][4]
    n = post(bundle)
    assert (n.kind, n.events) == ("event", ())


# ----------------------------------------------------------------- R4B and R5 (SubscriptionStatus)


def test_r4b_status_resource_inside_history_bundle() -> None:
    n = post(raw("backport-r4b-history-status.json"), {"X-Hub-Signature": "sha256=00"})
    assert (n.kind, n.shape, n.status) == ("event", "backport-r4b", "active")
    assert n.subscription_id == "sub-anc"  # from an absolute reference
    assert n.events_since_start == 23
    (event,) = n.events
    assert (event.event_number, event.focus) == (23, "Observation/obs-neut-318")
    assert event.patient == "Patient/pt-58"  # the Patient among several additional-context refs
    assert event.timestamp == "2026-03-04T06:12:08-05:00"


def test_r5_subscription_notification() -> None:
    n = post(raw("r5-subscription-notification.json"))
    assert (n.kind, n.shape, n.subscription_id, n.events_since_start) == (
        "event",
        "r5",
        "sub-anc",
        17,
    )
    (event,) = n.events
    assert (event.event_number, event.focus, event.patient) == (
        17,
        "Observation/obs-neut-312",
        None,
    )


def test_integer64_accepted_as_json_number_or_string() -> None:
    bundle = doc("r5-subscription-notification.json")
    status = bundle["entry"][0]["resource"]
    status["eventsSinceSubscriptionStart"] = 17
    status["notificationEvent"][0]["eventNumber"] = 17
    n = post(bundle)
    assert (n.events_since_start, n.events[0].event_number) == (17, 17)


@pytest.mark.parametrize("bad", ["seventeen", "17.5", True, {"n": 1}])
def test_non_integer_event_number_is_refused(bad: object) -> None:
    bundle = doc("r5-subscription-notification.json")
    bundle["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"] = bad
    with pytest.raises(InputError, match="eventNumber is not an integer"):
        post(bundle)


def test_status_reply_searchset_gives_one_notification_per_subscription() -> None:
    replies = parse_status_reply(raw("status-reply-searchset.json"))
    assert [(n.subscription_id, n.kind, n.status, n.events_since_start) for n in replies] == [
        ("sub-anc", "query-status", "error", 25),
        ("sub-wbc", "query-status", "active", 9),
    ]


def test_status_reply_accepts_an_events_history_bundle() -> None:
    (n,) = parse_status_reply(raw("backport-r4-query-event.json"))
    assert n.kind == "query-event"


def test_searchset_is_not_a_push_notification() -> None:
    with pytest.raises(InputError, match="^Bundle.type 'searchset' is not a notification$"):
        post(raw("status-reply-searchset.json"))


# ----------------------------------------------------------------- Medplum and bare resources

MEDPLUM_SUB = "0f3a6c2e-91b4-4d7e-8a55-c1e0b9d4f7a2"


def test_medplum_update_is_a_resource_routed_by_header() -> None:
    headers = {
        **JSON,
        "X-Medplum-Subscription": MEDPLUM_SUB,
        "X-Medplum-Interaction": "update",
    }
    n = post(raw("r4-payload-observation.json"), headers)
    assert (n.kind, n.shape, n.subscription_id) == ("resource", "medplum", MEDPLUM_SUB)
    assert n.events[0].focus == "Observation/obs-wbc-311"
    assert n.events[0].version_id == "2"


def test_medplum_delete_reads_the_deleted_resource_header() -> None:
    headers = {
        "x-medplum-subscription": MEDPLUM_SUB,
        "x-medplum-interaction": "delete",
        "x-medplum-deleted-resource": "Observation/obs-wbc-311",
    }
    n = post(raw("medplum-delete.json"), headers)
    assert (n.kind, n.shape, n.subscription_id) == ("deletion", "medplum", MEDPLUM_SUB)
    assert n.events[0].focus == "Observation/obs-wbc-311"


def test_medplum_delete_without_deleted_resource_header_is_refused() -> None:
    headers = {"X-Medplum-Subscription": MEDPLUM_SUB, "X-Medplum-Interaction": "delete"}
    with pytest.raises(InputError, match="X-Medplum-Deleted-Resource"):
        post(b"{}", headers)


def test_headers_are_case_insensitive() -> None:
    n = post(raw("r4-payload-observation.json"), {"X-MEDPLUM-SUBSCRIPTION": MEDPLUM_SUB})
    assert (n.shape, n.subscription_id) == ("medplum", MEDPLUM_SUB)


def test_bare_resource_without_medplum_headers_is_hand_rolled() -> None:
    n = post(raw("r4-payload-observation.json"))
    assert (n.kind, n.shape, n.subscription_id) == ("resource", "bare-resource", None)


def test_empty_object_without_delete_header_is_refused() -> None:
    with pytest.raises(InputError, match="no resourceType"):
        post(b"{}")


# ----------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "message"),
    [
        ("GET", "", {}, b"", "HTTP method 'GET' is not a notification"),
        ("POST", "/Observation/x", {}, b"{}", "endpoint root"),
        ("POST", "", {}, b"<Bundle/>", "not valid JSON"),
        ("POST", "", {"content-type": "application/fhir+xml"}, b"<Bundle/>", "XML"),
        ("POST", "", {}, b"[1, 2]", "not a JSON object"),
        ("POST", "", {}, b'{"resourceType": 7}', "not a FHIR resource type"),
        ("POST", "", {}, b'{"resourceType": "Bundle"}', "Bundle has no type"),
        ("POST", "", {}, b'{"resourceType": "Bundle", "type": "batch"}', "'batch'"),
        ("POST", "", {}, b'{"resourceType": "Observation"}', "no valid id"),
        (
            "POST",
            "",
            {},
            b'{"resourceType": "Bundle", "type": "history", "entry": []}',
            "no Parameters or SubscriptionStatus status entry",
        ),
    ],
)
def test_shapes_that_are_not_notifications_are_refused(
    method: str, path: str, headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        parse_notification(method, path, headers, body)


def test_unknown_notification_type_is_refused() -> None:
    bundle = doc("backport-r4-heartbeat.json")
    bundle["entry"][0]["resource"]["parameter"][2]["valueCode"] = "ping-pong"
    with pytest.raises(InputError, match="notification type 'ping-pong' is unknown"):
        post(bundle)


def test_status_without_type_is_refused() -> None:
    bundle = doc("backport-r4-heartbeat.json")
    del bundle["entry"][0]["resource"]["parameter"][2]
    with pytest.raises(InputError, match="has no type"):
        post(bundle)


PHI = "Jane-Q-Doe-1961"


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"name": PHI}}]},
        {"resourceType": "Observation", "note": [{"text": PHI}]},
        {"resourceType": "Bundle", "type": PHI},
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient", "name": [{"text": PHI}]}}],
        },
    ],
)
def test_error_messages_never_quote_resource_contents(body: dict[str, Any]) -> None:
    with pytest.raises(InputError) as err:
        post(body)
    assert PHI not in str(err.value)
    # Only code-shaped values are ever quoted, so messages stay short.
    assert len(str(err.value)) < 120


def test_put_mismatch_message_does_not_quote_ids() -> None:
    with pytest.raises(InputError) as err:
        parse_notification("PUT", "/Observation/x-1", JSON, raw("r4-payload-observation.json"))
    assert "obs-wbc-311" not in str(err.value) and "x-1" not in str(err.value)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def mangled_notifications(draw: st.DrawFn) -> dict[str, Any]:
    """A real fixture with one element replaced by arbitrary JSON."""
    name = draw(
        st.sampled_from(
            [
                "backport-r4-event-full-resource.json",
                "backport-r4b-history-status.json",
                "r5-subscription-notification.json",
                "hapi-payload-search-transaction.json",
                "backport-r4-query-event.json",
            ]
        )
    )
    bundle = doc(name)
    node: Any = bundle
    path: list[Any] = []
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys or draw(st.integers(0, 3)) == 0:
            break
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or draw(st.booleans()):
            path.append(key)
            break
        node = node[key]
        path.append(key)
    if path:
        parent: Any = bundle
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = draw(JSON_VALUES)
    return bundle


@settings(max_examples=400, deadline=None)
@given(mangled_notifications())
def test_mangled_bodies_parse_or_raise_input_error_only(bundle: dict[str, Any]) -> None:
    with contextlib.suppress(InputError):
        post(bundle)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["POST", "PUT", "DELETE"]))
def test_arbitrary_bytes_parse_or_raise_input_error_only(body: bytes, method: str) -> None:
    with contextlib.suppress(InputError):
        parse_notification(method, "/Observation/o1" if method != "POST" else "", {}, body)


# ----------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Observation/obs-1", ("Observation/obs-1", None)),
        ("Observation/obs-1/_history/2", ("Observation/obs-1", "2")),
        ("https://ehr.example.org/fhir/Observation/obs-1", ("Observation/obs-1", None)),
        ("https://ehr.example.org/fhir/Observation/obs-1/_history/9", ("Observation/obs-1", "9")),
        ("/Observation/obs-1/", ("Observation/obs-1", None)),
        ("Patient/p1/Observation/o2", ("Observation/o2", None)),
        ("Observation/obs-1?_format=json", ("Observation/obs-1", None)),
        ("urn:uuid:61c2e8a4-0b7d-4f3e-9a15-c8d2f6b0e497", None),
        ("#contained-1", None),
        ("obs-1", None),
        ("", None),
    ],
)
def test_normalise_reference(ref: str, expected: tuple[str, str | None] | None) -> None:
    assert normalise_reference(ref) == expected


# ----------------------------------------------------------------- secrets


def test_check_secret_accepts_the_configured_header_in_any_case() -> None:
    check_secret({"authorization": "Bearer tok-7Qx"}, {"Authorization": "Bearer tok-7Qx"})


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tok-7Qy"}, {"Authorization": "Bearer tok-7Qx", "X-Env": "test"}],
)
def test_check_secret_refuses_missing_or_wrong(headers: dict[str, str]) -> None:
    with pytest.raises(AuthError) as err:
        check_secret(headers, {"Authorization": "Bearer tok-7Qx", "X-Env": "prod"})
    assert "tok-7Q" not in str(err.value)


def test_check_secret_with_nothing_configured_fails_closed() -> None:
    with pytest.raises(ConfigError):
        check_secret({"Authorization": "Bearer x"}, {})


def _sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_check_hmac_medplum_signature_over_exact_body_bytes() -> None:
    body = raw("r4-payload-observation.json")
    check_hmac({"x-signature": _sign(body, "s3cret")}, body, "s3cret")


def test_check_hmac_refuses_a_signature_of_reserialised_json() -> None:
    body = raw("r4-payload-observation.json")
    reserialised = orjson.dumps(orjson.loads(body))
    with pytest.raises(AuthError, match="does not match"):
        check_hmac({"X-Signature": _sign(reserialised, "s3cret")}, body, "s3cret")


def test_check_hmac_hub_signature_with_sha256_prefix() -> None:
    body = raw("backport-r4b-history-status.json")
    signature = "sha256=" + _sign(body, "k").upper()
    check_hmac({"X-Hub-Signature": signature}, body, b"k", header="X-Hub-Signature")


def test_check_hmac_refuses_other_algorithms_and_missing_header() -> None:
    body = b"{}"
    sha1 = hmac.new(b"k", body, hashlib.sha1).hexdigest()
    with pytest.raises(AuthError, match="not sha256"):
        check_hmac({"X-Hub-Signature": f"sha1={sha1}"}, body, "k", header="X-Hub-Signature")
    with pytest.raises(AuthError, match="missing"):
        check_hmac({}, body, "k")

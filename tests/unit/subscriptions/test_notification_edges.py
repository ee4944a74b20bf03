"""Authenticated notifications at the edges of what JSON can carry: a 2xx or a precise 4xx.

Served by the whole app (``create_app``), as in production, so an exception nobody handled
shows up as the 500 a FHIR server would see, not as a test error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from fhir_leuko.config import Settings, SubscriptionEndpoint
from fhir_leuko.errors import InputError
from fhir_leuko.subscriptions.notifications import parse_notification

SECRET = {"Authorization": "Bearer tok-9Zq", "Content-Type": "application/fhir+json"}
INT64_MAX = 2**63 - 1


@pytest.fixture
def client(
    app_settings: Callable[..., Settings], app_client: Callable[..., TestClient]
) -> TestClient:
    ehr = SubscriptionEndpoint(
        fhir_base="https://ehr.example.org/fhir", header_value="Bearer tok-9Zq"
    )
    settings = app_settings(max_body_bytes=256 * 1024, endpoints={"ehr": ehr})
    return app_client(settings, raise_server_exceptions=False)


def backport_event(since: object, number: object, focus: str = "Observation/o1") -> bytes:
    """A Backport R4 event notification with the counts given as sent (string or number)."""
    doc = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {
                                "name": "subscription",
                                "valueReference": {"reference": "Subscription/s1"},
                            },
                            {"name": "status", "valueCode": "active"},
                            {"name": "type", "valueCode": "event-notification"},
                            {"name": "events-since-subscription-start", "valueString": since},
                            {
                                "name": "notification-event",
                                "part": [
                                    {"name": "event-number", "valueString": number},
                                    {"name": "focus", "valueReference": {"reference": focus}},
                                ],
                            },
                        ],
                    }
                }
            ],
        }
    )
    return doc.encode()


def r5_status(since: object, number: object, kind: str = "event-notification") -> bytes:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": kind,
        "eventsSinceSubscriptionStart": since,
        "subscription": {"reference": "Subscription/s5"},
    }
    if number is not None:
        status["notificationEvent"] = [
            {"eventNumber": number, "focus": {"reference": "Observation/o5"}}
        ]
    doc = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "subscription-notification",
            "entry": [{"resource": status}],
        }
    )
    return doc.encode()


def deep_observation(depth: int, *, in_transaction: bool = False) -> bytes:
    """An Observation whose extension nests ``depth`` levels (each an object and a list),
    written as text: neither JSON encoder of Python goes that deep."""
    leaf = '{"url": "http://example.org/x", "valueString": "leaf"}'
    extension = '{"url": "http://example.org/x", "extension": [' * depth + leaf + "]}" * depth
    text = orjson.dumps(observation()).decode()[:-1] + f', "extension": [{extension}]}}'
    if in_transaction:
        bundle = '{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
        text = bundle + text + "}]}"
    return text.encode()


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-deep-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"reference": "Patient/pt-deep-1"},
        **extra,
    }


@pytest.mark.parametrize(
    "body",
    [
        backport_event(str(2**63), "1"),
        backport_event("1", str(2**63)),
        backport_event(2**63, 1),
        backport_event("-1", "1"),
        backport_event("1", "-5"),
        backport_event("1", "9" * 5000),
        backport_event("1", "١٢"),  # digits int() would read, FHIR's integer64 would not
        r5_status(str(2**63), None, "heartbeat"),
        r5_status("1", str(2**64)),
    ],
    ids=[
        "since-2^63",
        "event-2^63",
        "since-2^63-as-number",
        "since-negative",
        "event-negative",
        "event-5000-digits",
        "event-arabic-digits",
        "r5-heartbeat-2^63",
        "r5-event-2^64",
    ],
)
def test_event_numbers_beyond_a_signed_64_bit_int_are_400(client: TestClient, body: bytes) -> None:
    r = client.post("/notify/ehr", content=body, headers=SECRET)

    assert r.status_code == 400, r.text
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "is not an integer from 0 to 9223372036854775807" in diagnostics


def test_the_largest_signed_64_bit_event_number_is_accepted(client: TestClient) -> None:
    assert client.post("/notify/ehr", content=r5_status("0", None, "handshake"), headers=SECRET)
    r = client.post(
        "/notify/ehr", content=backport_event(str(INT64_MAX), str(INT64_MAX)), headers=SECRET
    )
    assert r.status_code == 204, r.text
    r = client.post(
        "/notify/ehr", content=r5_status(str(INT64_MAX), None, "heartbeat"), headers=SECRET
    )
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("depth", [60, 300])
def test_a_resource_nested_deeper_than_the_limit_is_400(client: TestClient, depth: int) -> None:
    # 300 levels of extension (600 of JSON) parse, but the JSON encoder stops at 255: the
    # digest that deduplicates resends raised TypeError, a 500.
    r = client.put(
        "/notify/ehr/Observation/obs-deep-1", content=deep_observation(depth), headers=SECRET
    )

    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["diagnostics"] == "body is nested deeper than 100 levels"


def test_json_deeper_than_the_parser_allows_is_400(client: TestClient) -> None:
    r = client.put(
        "/notify/ehr/Observation/obs-deep-1", content=deep_observation(600), headers=SECRET
    )
    assert r.status_code == 400, r.text


def test_a_deep_resource_inside_a_transaction_is_400(client: TestClient) -> None:
    body = deep_observation(200, in_transaction=True)
    r = client.post("/notify/ehr", content=body, headers=SECRET)
    assert r.status_code == 400, r.text


def test_a_resource_with_ordinary_nesting_is_accepted(client: TestClient) -> None:
    r = client.put(
        "/notify/ehr/Observation/obs-deep-1", content=deep_observation(40), headers=SECRET
    )
    assert r.status_code == 204, r.text


# A JSON value of any shape, small: what a hostile or broken server might put anywhere.
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63, 2**64, -1, -(2**63) - 1]).map(lambda n: n if n % 2 else str(n))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@hyp_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(since=_json, number=_json, focus=_json, kind=_json)
def test_any_values_in_a_notification_get_204_or_400(
    client: TestClient, since: object, number: object, focus: object, kind: object
) -> None:
    bodies = [
        backport_event(since, number, focus if isinstance(focus, str) else "Observation/o1"),
        r5_status(since, number, kind if isinstance(kind, str) else "event-notification"),
    ]
    for body in bodies:
        r = client.post("/notify/ehr", content=body, headers=SECRET)
        assert r.status_code in (204, 400), r.text


def test_parsing_refuses_depth_itself_without_the_http_layer() -> None:
    body = deep_observation(60)
    with pytest.raises(InputError, match="nested deeper than 100 levels"):
        parse_notification("PUT", "/Observation/obs-deep-1", {}, body)

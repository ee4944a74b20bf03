"""Creating the Subscriptions, and the ``fetch`` / ``subscribe`` commands, against respx HAPI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx
from fhir.resources.R4B import get_fhir_model_class

from fhir_leuko.cli import main
from fhir_leuko.errors import ConfigError
from fhir_leuko.fhirio import codes, queries
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.subscriptions.subscribe import (
    BACKPORT,
    backport_subscription,
    channel_header,
    check_endpoint_url,
    create_subscription,
    r4_subscription,
)
from tests.unit.subscriptions.sub_fake_hapi import BASE, PATIENT_ID, FakeHapi, fhir, searchset

ENDPOINT = "https://leuko.example.net/notify/hapi"
TOPIC = "https://ehr.example.org/SubscriptionTopic/lab-result-final"


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# ----------------------------------------------------------------- building


def test_r4_subscription_asks_for_cbc_results_with_payload_and_our_secret_header() -> None:
    sub = r4_subscription(ENDPOINT, channel_header("s3cret"))

    validate(sub)
    assert sub["status"] == "requested"
    assert sub["criteria"].startswith("Observation?code=http://loinc.org|6690-2,")
    assert f"{codes.LOINC}|751-8" in sub["criteria"]
    assert sub["channel"] == {
        "type": "rest-hook",
        "endpoint": ENDPOINT,
        "payload": "application/fhir+json",
        "header": ["Authorization: Bearer s3cret"],
    }


def test_r4_subscription_without_payload_asks_for_pings() -> None:
    sub = r4_subscription(ENDPOINT, channel_header("s3cret"), payload=False)

    assert "payload" not in sub["channel"]


def test_backport_subscription_follows_the_backport_profile() -> None:
    sub = backport_subscription(ENDPOINT, channel_header("s3cret"), TOPIC, content="id-only")

    validate(sub)
    assert sub["meta"]["profile"] == [BACKPORT + "backport-subscription"]
    assert sub["criteria"] == TOPIC
    [filter_ext] = sub["_criteria"]["extension"]
    assert filter_ext["url"] == BACKPORT + "backport-filter-criteria"
    assert filter_ext["valueString"].startswith("Observation?code=http://loinc.org|")
    assert sub["channel"]["_payload"]["extension"] == [
        {"url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}
    ]
    assert {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 3600} in sub[
        "channel"
    ]["extension"]


def test_secret_header_forms() -> None:
    assert channel_header("abc") == "Authorization: Bearer abc"
    assert channel_header("Basic dXNlcg==") == "Authorization: Basic dXNlcg=="
    assert channel_header("abc", "X-Leuko-Secret") == "X-Leuko-Secret: abc"
    with pytest.raises(ConfigError):
        channel_header("abc\r\nX-Injected: 1")
    with pytest.raises(ConfigError):
        channel_header("")


@pytest.mark.parametrize(
    "url", ["http://leuko.example.net/notify/x", "ftp://x/y", "notify/x", "https://h/n?a=1"]
)
def test_endpoint_must_be_https_unless_local(url: str) -> None:
    with pytest.raises(ConfigError):
        check_endpoint_url(url)


def test_local_http_endpoint_is_allowed_for_development() -> None:
    assert check_endpoint_url("http://127.0.0.1:8080/notify/dev/") == (
        "http://127.0.0.1:8080/notify/dev"
    )


# ----------------------------------------------------------------- creating


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as r:
        yield r


def test_create_is_conditional_on_the_endpoint(router: respx.MockRouter) -> None:
    search = router.get(f"{BASE}/Subscription", params={"url": ENDPOINT}).mock(
        return_value=fhir(searchset([], f"{BASE}/Subscription?url={ENDPOINT}"))
    )
    created = router.post(f"{BASE}/Subscription").mock(
        side_effect=lambda req: fhir({**orjson.loads(req.content), "id": "9001"}, 201)
    )
    sub = r4_subscription(ENDPOINT, channel_header("s3cret"))

    with FhirClient(BASE) as client:
        on_server, was_created = create_subscription(client, sub)

    assert was_created and on_server["id"] == "9001"
    assert search.called
    assert (
        created.calls.last.request.headers["If-None-Exist"]
        == httpx.QueryParams({"url": ENDPOINT}).__str__()
    )


def test_an_existing_subscription_to_the_endpoint_is_left_alone(router: respx.MockRouter) -> None:
    existing = {**r4_subscription(ENDPOINT, channel_header("old")), "id": "77", "status": "active"}
    router.get(f"{BASE}/Subscription").mock(
        return_value=fhir(searchset([existing], f"{BASE}/Subscription?url={ENDPOINT}"))
    )
    post = router.post(f"{BASE}/Subscription")

    with FhirClient(BASE) as client:
        on_server, was_created = create_subscription(client, existing)

    assert (on_server["id"], was_created, post.called) == ("77", False, False)


# ----------------------------------------------------------------- the commands


def test_subscribe_dry_run_prints_the_subscription(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["subscribe", "--fhir-base", BASE, "--endpoint", ENDPOINT, "--secret", "s3", "--dry-run"]
    )

    out = orjson.loads(capsys.readouterr().out)
    assert code == 0 and out["channel"]["header"] == ["Authorization: Bearer s3"]


def test_subscribe_creates_and_prints_the_config_without_the_secret(
    router: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.get(f"{BASE}/Subscription").mock(
        return_value=fhir(searchset([], f"{BASE}/Subscription"))
    )
    router.post(f"{BASE}/Subscription").mock(
        side_effect=lambda req: fhir({**orjson.loads(req.content), "id": "9001"}, 201)
    )

    code = main(["subscribe", "--fhir-base", BASE, "--endpoint", ENDPOINT, "--topic", TOPIC])

    captured = capsys.readouterr()
    assert code == 0
    assert "created Subscription/9001 (status requested)" in captured.out
    assert "[endpoints.hapi]" in captured.out and 'header_value = "Bearer <secret>"' in captured.out
    # A secret was generated: shown once, on stderr, never on stdout.
    secret = captured.err.split("Authorization: Bearer ", 1)[1].split()[0]
    assert len(secret) >= 40 and secret not in captured.out


def test_subscribe_refuses_a_plain_http_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["subscribe", "--fhir-base", BASE, "--endpoint", "http://leuko.example.net/notify/x"]
    )

    assert code == 2 and "https" in capsys.readouterr().err


@pytest.fixture
def hapi(router: respx.MockRouter) -> FakeHapi:
    return FakeHapi(router)


def test_fetch_evaluates_a_patient_from_the_server(
    hapi: FakeHapi, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["fetch", "--fhir-base", BASE, "--patient", PATIENT_ID, "--now", "2026-02-10T12:00:00Z"]
    )

    bundle = orjson.loads(capsys.readouterr().out)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert code == 0 and kinds[0] == "RiskAssessment" and "ServiceRequest" in kinds
    assert hapi.transactions == []  # no --write-back, nothing written


def test_fetch_write_back_twice_creates_once(
    hapi: FakeHapi, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "fetch",
        "--fhir-base",
        BASE,
        "--patient",
        PATIENT_ID,
        "--write-back",
        "--format",
        "text",
        "--now",
        "2026-02-10T12:00:00Z",
    ]

    assert main(args) == 0
    first = capsys.readouterr().err
    assert main(args) == 0
    second = capsys.readouterr().err

    assert "created, 0 already there" in first
    assert " 0 created" in second
    assert len(hapi.stored["RiskAssessment"]) == 1


def test_fetch_errors_map_to_exit_codes(hapi: FakeHapi, capsys: pytest.CaptureFixture[str]) -> None:
    hapi.patient.mock(
        return_value=fhir(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "processing",
                        "diagnostics": "HAPI-2001: Resource Patient/x is not known",
                    }
                ],
            },
            404,
        )
    )

    assert main(["fetch", "--fhir-base", BASE, "--patient", "x"]) == 3
    assert "404" in capsys.readouterr().err
    assert main(["fetch", "--fhir-base", BASE, "--patient", "../etc"]) == 2


SANDBOX = "https://launch.smarthealthit.org/v/r4/fhir"


def test_fetch_reads_a_smart_sandbox_patient(
    router: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.subscriptions.sub_fake_hapi import fixture

    empty = fixture("smart_sandbox_r4_searchset_empty.json")
    router.get(f"{SANDBOX}/Patient/smart-7777701").mock(
        return_value=fhir(fixture("smart_sandbox_r4_patient_read.json"))
    )
    cbc = router.get(
        f"{SANDBOX}/Observation",
        params={"code": queries.any_code(codes.LOINC, codes.CBC_LOINC)},
    ).mock(return_value=fhir(fixture("smart_sandbox_r4_observation_searchset.json")))
    others = router.get(url__regex=rf"^{SANDBOX}/[A-Za-z]+\?").mock(return_value=fhir(empty))

    code = main(
        [
            "fetch",
            "--fhir-base",
            SANDBOX,
            "--patient",
            "smart-7777701",
            "--now",
            "2025-10-15T12:00:00Z",
        ]
    )

    bundle = orjson.loads(capsys.readouterr().out)
    # lab reports, temperatures, B12/folate, medications, conditions, open orders
    assert code == 0 and cbc.call_count == 1 and others.call_count == 6
    ra = bundle["entry"][0]["resource"]
    assert ra["resourceType"] == "RiskAssessment"
    assert ra["subject"] == {"reference": "Patient/smart-7777701"}

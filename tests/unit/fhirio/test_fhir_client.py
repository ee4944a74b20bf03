"""fhir_leuko.fhirio.client against respx mocks answering with recorded-shape server bodies.

Fixture bodies live in tests/fixtures/fhir_server/ (see its README for what each mimics).
Nothing here touches the network: respx intercepts every request, and sleeping is faked.
Every test that talks to a server runs twice, against FhirClient and AsyncFhirClient
(``make_client``), so the two drivers of the one sans-IO flow cannot drift apart.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import respx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_leuko.errors import FatalFhirServerError, InputError, TemporaryFhirServerError
from fhir_leuko.fhirio.client import (
    AsyncFhirClient,
    FhirClient,
    SmartBackendAuth,
    bundle_resources,
    parse_retry_after,
)
from tests.jwtkeys import RSA_KEY, private_pem

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir_server"
HAPI = "https://hapi.fhir.org/baseR4"
SANDBOX = "https://launch.smarthealthit.org/v/r4/fhir"
TOKEN_URL = "https://auth.example.org/oauth2/token"
HAPI_JSON = {"Content-Type": "application/fhir+json;charset=UTF-8"}
SEARCH_ID = "8d2b7c1e-5f1a-4a7e-9c3b-2f6e0d4a1b9c"
LAB_QUERY: dict[str, str | int] = {
    "patient": "5793201",
    "code": "http://loinc.org|6690-2,http://loinc.org|751-8",
    "_sort": "-date",
    "_count": 2,
}


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fhir(status: int, name: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body(name), headers={**HAPI_JSON, **headers})


class FakeTime:
    """A clock that only moves when the client sleeps, so retry tests take no time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    # assert_all_mocked: an unmocked URL fails the test instead of reaching the internet.
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


class Blocking:
    """An :class:`AsyncFhirClient` behind :class:`FhirClient`'s API, every call awaited on one
    event loop (an anyio blocking portal): each test below runs against both clients, as
    fhir-py's tests do, and sees the same behaviour from each."""

    def __init__(self, portal: BlockingPortal, client: AsyncFhirClient) -> None:
        self._portal = portal
        self._client = client

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._portal.call(self._client.aclose)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)  # read, search, get_url, create, update, ...

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(functools.partial(method, *args, **kwargs))

        return call

    def search_bundle_pages(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        pages = self._client.search_bundle_pages(*args, **kwargs)
        try:
            while True:
                try:
                    yield self._portal.call(pages.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(pages.aclose)


MakeClient = Callable[..., Any]


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as p:
        yield p


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest, portal: BlockingPortal) -> MakeClient:
    """``make_client(base, **options)``: a :class:`FhirClient`, or an :class:`AsyncFhirClient`
    (a sync ``sleep`` option made awaitable) driven through :class:`Blocking`."""

    def make(base: str, **options: Any) -> FhirClient | Blocking:
        if request.param == "sync":
            return FhirClient(base, **options)
        if "sleep" in options:
            sleep = options["sleep"]

            async def asleep(seconds: float) -> None:
                sleep(seconds)

            options["sleep"] = asleep
        return Blocking(portal, portal.call(lambda: AsyncFhirClient(base, **options)))

    return make


@pytest.fixture
def hapi(fake_time: FakeTime, make_client: MakeClient) -> Iterator[FhirClient]:
    with make_client(HAPI, sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 0.5) as c:
        yield c


def mock_hapi_three_pages(mock: respx.MockRouter) -> list[respx.Route]:
    return [
        mock.get(f"{HAPI}/Observation", params={"patient": "5793201"}).mock(
            return_value=fhir(200, "hapi_r4_observation_searchset_page1.json")
        ),
        mock.get(HAPI, params={"_getpages": SEARCH_ID, "_getpagesoffset": "2"}).mock(
            return_value=fhir(200, "hapi_r4_observation_searchset_page2.json")
        ),
        mock.get(HAPI, params={"_getpages": SEARCH_ID, "_getpagesoffset": "4"}).mock(
            return_value=fhir(200, "hapi_r4_observation_searchset_page3.json")
        ),
    ]


def rsa_key_pair() -> tuple[bytes, rsa.RSAPublicKey]:
    return private_pem(RSA_KEY), RSA_KEY.public_key()


def smart_auth(private_pem: bytes, fake_time: FakeTime) -> SmartBackendAuth:
    return SmartBackendAuth(
        token_url=TOKEN_URL,
        client_id="fhir-leuko-test",
        private_key=private_pem,
        kid="test-key-1",
        scope="system/Observation.read system/Patient.read",
        clock=fake_time.clock,
    )


# -- reading and paging ---------------------------------------------------------------------


def test_search_follows_hapi_getpages_next_links_across_three_pages(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    routes = mock_hapi_three_pages(mock)

    found = hapi.search("Observation", LAB_QUERY)

    assert [o["id"] for o in found] == ["5793214", "5793215", "5793210", "5793211", "5793206"]
    assert [r.call_count for r in routes] == [1, 1, 1]
    first = routes[0].calls.last.request
    assert first.url.params["code"] == "http://loinc.org|6690-2,http://loinc.org|751-8"
    assert first.url.params["_sort"] == "-date"
    assert first.headers["Accept"] == "application/fhir+json"


def test_search_bundle_pages_yields_each_bundle_with_its_total(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock_hapi_three_pages(mock)

    pages = list(hapi.search_bundle_pages("Observation", LAB_QUERY))

    assert [len(p["entry"]) for p in pages] == [2, 2, 1]
    assert {p["total"] for p in pages} == {5}


def test_search_limit_stops_before_fetching_more_pages(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    routes = mock_hapi_three_pages(mock)

    found = hapi.search("Observation", LAB_QUERY, limit=3)

    assert [o["id"] for o in found] == ["5793214", "5793215", "5793210"]
    assert [r.call_count for r in routes] == [1, 1, 0]


def test_search_with_more_pages_than_max_pages_raises_rather_than_truncating(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock_hapi_three_pages(mock)

    with pytest.raises(FatalFhirServerError, match="more than 2 pages"):
        hapi.search("Observation", LAB_QUERY, max_pages=2)


def test_next_link_to_another_origin_is_not_followed(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock.get(f"{HAPI}/Observation").mock(
        return_value=fhir(200, "hapi_r4_searchset_next_link_internal_host.json")
    )
    internal = mock.get("http://hapi:8080/fhir")

    with pytest.raises(FatalFhirServerError) as caught:
        hapi.search("Observation", LAB_QUERY, max_pages=10)

    assert internal.call_count == 0
    message = str(caught.value)
    assert "another origin (http://hapi:8080)" in message
    assert "_getpages" not in message


def test_next_link_downgrading_https_to_http_is_not_followed(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    page = orjson.loads(body("hapi_r4_observation_searchset_page1.json"))
    page["link"][1]["url"] = page["link"][1]["url"].replace("https://", "http://")
    mock.get(f"{HAPI}/Observation").mock(return_value=httpx.Response(200, json=page))
    plain_http = mock.get("http://hapi.fhir.org/baseR4")

    with pytest.raises(FatalFhirServerError, match="another origin"):
        hapi.search("Observation", LAB_QUERY)

    assert plain_http.call_count == 0


def test_get_url_refuses_another_origin_without_sending(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    elsewhere = mock.get("https://metadata.internal.example/latest")

    with pytest.raises(FatalFhirServerError, match="another origin"):
        hapi.get_url("https://metadata.internal.example/latest")

    assert elsewhere.call_count == 0


def test_get_url_resolves_a_relative_reference_against_the_base(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    page = orjson.loads(body("hapi_r4_observation_searchset_page1.json"))
    observation = page["entry"][0]["resource"]
    route = mock.get(f"{HAPI}/Observation/5793214").mock(
        return_value=httpx.Response(200, json=observation)
    )

    assert hapi.get_url("Observation/5793214")["id"] == "5793214"
    assert route.call_count == 1


def test_bundle_resources_skips_outcome_entries() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "2"}, "search": {"mode": "include"}},
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "search": {"mode": "outcome"},
            },
        ],
    }

    assert [r["resourceType"] for r in bundle_resources(bundle)] == ["Observation", "Patient"]


def test_read_rejects_an_id_that_would_change_the_url_path(hapi: FhirClient) -> None:
    with pytest.raises(InputError):
        hapi.read("Patient", "../Observation?patient=1")


# -- errors that retrying cannot fix ----------------------------------------------------------


def test_401_is_fatal_and_says_the_credentials_were_refused(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    route = mock.get(f"{SANDBOX}/Patient/smart-7777701").mock(
        return_value=httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="fhir"'})
    )

    with (
        make_client(SANDBOX, auth="expired-token", sleep=fake_time.sleep) as client,
        pytest.raises(FatalFhirServerError) as caught,
    ):
        client.read("Patient", "smart-7777701")

    assert caught.value.status == 401
    assert "credentials were refused" in str(caught.value)
    assert "expired-token" not in str(caught.value)
    assert route.call_count == 1
    assert fake_time.sleeps == []


def test_403_is_fatal_and_names_missing_scope(mock: respx.MockRouter, hapi: FhirClient) -> None:
    mock.get(f"{HAPI}/Patient/5793201").mock(return_value=httpx.Response(403))

    with pytest.raises(FatalFhirServerError, match="lacks a scope") as caught:
        hapi.read("Patient", "5793201")

    assert caught.value.status == 403


def test_404_is_fatal_with_hapi_diagnostics_in_the_message(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock.get(f"{HAPI}/Patient/does-not-exist").mock(
        return_value=fhir(404, "hapi_r4_operationoutcome_404.json")
    )

    with pytest.raises(FatalFhirServerError) as caught:
        hapi.read("Patient", "does-not-exist")

    assert caught.value.status == 404
    assert "HAPI-2001: Resource Patient/does-not-exist is not known" in str(caught.value)
    assert caught.value.outcome is not None
    assert caught.value.outcome["resourceType"] == "OperationOutcome"


def test_400_message_has_the_diagnostics_but_not_the_query_string(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock.get(f"{HAPI}/Observation").mock(
        return_value=fhir(400, "hapi_r4_operationoutcome_400_unknown_param.json")
    )

    with pytest.raises(FatalFhirServerError) as caught:
        hapi.search("Observation", {"birth-date": "1957-03-14", "family": "Doe"})

    message = str(caught.value)
    assert caught.value.status == 400
    assert 'HAPI-0524: Unknown search parameter "birth-date"' in message
    assert "1957-03-14" not in message and "Doe" not in message  # search values can be PHI
    assert len(message) < 450  # HAPI lists every valid parameter; we keep the gist


def test_a_200_that_is_not_fhir_json_is_fatal(mock: respx.MockRouter, hapi: FhirClient) -> None:
    mock.get(f"{HAPI}/Patient/5793201").mock(
        return_value=httpx.Response(
            200, text="<html><body>Sign in</body></html>", headers={"Content-Type": "text/html"}
        )
    )

    with pytest.raises(FatalFhirServerError, match="did not return FHIR JSON"):
        hapi.read("Patient", "5793201")


def test_json_without_resource_type_is_not_fhir(mock: respx.MockRouter, hapi: FhirClient) -> None:
    mock.get(f"{HAPI}/Patient/5793201").mock(
        return_value=httpx.Response(200, json={"status": "ok"})
    )

    with pytest.raises(FatalFhirServerError, match="did not return FHIR JSON"):
        hapi.read("Patient", "5793201")


# -- retries -----------------------------------------------------------------------------------


def test_429_waits_for_retry_after_then_succeeds(
    mock: respx.MockRouter, hapi: FhirClient, fake_time: FakeTime
) -> None:
    route = mock.get(f"{HAPI}/Observation").mock(
        side_effect=[
            fhir(429, "gateway_operationoutcome_429_throttled.json", **{"Retry-After": "7"}),
            fhir(200, "hapi_r4_observation_searchset_page3.json"),
        ]
    )

    found = hapi.search("Observation", {"patient": "5793201"})

    assert [o["id"] for o in found] == ["5793206"]
    assert route.call_count == 2
    assert fake_time.sleeps == [7.0]


def test_retry_after_as_an_http_date_is_honoured() -> None:
    now = datetime(2026, 2, 10, 10, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=12), usegmt=True)

    assert parse_retry_after(later, now) == 12.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_retry_after_longer_than_the_cap_gives_up_at_once(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    mock.get(f"{HAPI}/Patient/5793201").mock(
        return_value=fhir(
            429, "gateway_operationoutcome_429_throttled.json", **{"Retry-After": "3600"}
        )
    )

    with (
        make_client(HAPI, sleep=fake_time.sleep, max_retry_after=30) as client,
        pytest.raises(TemporaryFhirServerError, match="retry after 3600 s") as caught,
    ):
        client.read("Patient", "5793201")

    assert caught.value.status == 429
    assert fake_time.sleeps == []


def test_503_every_time_is_temporary_after_max_retries_with_growing_backoff(
    mock: respx.MockRouter, hapi: FhirClient, fake_time: FakeTime
) -> None:
    route = mock.get(f"{HAPI}/Patient/5793201").mock(
        return_value=httpx.Response(
            503, content=body("nginx_503.html"), headers={"Content-Type": "text/html"}
        )
    )

    with pytest.raises(TemporaryFhirServerError, match="gave up after 4 attempts") as caught:
        hapi.read("Patient", "5793201")

    assert caught.value.status == 503
    assert route.call_count == 4  # the first try and max_retries=3 more
    assert len(fake_time.sleeps) == 3
    assert fake_time.sleeps == sorted(fake_time.sleeps)
    assert fake_time.sleeps[0] < fake_time.sleeps[-1]


def test_timeout_is_retried_then_temporary(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    route = mock.get(f"{HAPI}/Patient/5793201").mock(side_effect=httpx.ReadTimeout)

    with (
        make_client(HAPI, max_retries=2, sleep=fake_time.sleep, clock=fake_time.clock) as client,
        pytest.raises(TemporaryFhirServerError, match="timed out") as caught,
    ):
        client.read("Patient", "5793201")

    assert caught.value.status is None
    assert route.call_count == 3
    assert len(fake_time.sleeps) == 2


def test_connection_error_then_success(mock: respx.MockRouter, hapi: FhirClient) -> None:
    page = orjson.loads(body("hapi_r4_observation_searchset_page1.json"))
    route = mock.get(f"{HAPI}/Observation/5793214").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json=page["entry"][0]["resource"]),
        ]
    )

    assert hapi.read("Observation", "5793214")["id"] == "5793214"
    assert route.call_count == 2


def test_deadline_stops_retrying_when_no_time_is_left(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    route = mock.get(f"{HAPI}/Patient/5793201").mock(return_value=httpx.Response(503))

    with (
        make_client(
            HAPI,
            deadline=2.0,
            backoff_base=0.5,
            max_retries=10,
            sleep=fake_time.sleep,
            clock=fake_time.clock,
            jitter=lambda: 1.0,
        ) as client,
        pytest.raises(TemporaryFhirServerError, match="2 s budget"),
    ):
        client.read("Patient", "5793201")

    # Waits 0.5 s and 1.0 s; a third wait of 2.0 s would pass the 2 s budget.
    assert fake_time.sleeps == [0.5, 1.0]
    assert route.call_count == 3


def test_plain_post_is_not_resent_after_a_500(
    mock: respx.MockRouter, hapi: FhirClient, fake_time: FakeTime
) -> None:
    route = mock.post(f"{HAPI}/RiskAssessment").mock(return_value=httpx.Response(500))

    with pytest.raises(TemporaryFhirServerError, match="may have been applied"):
        hapi.create({"resourceType": "RiskAssessment", "status": "final"})

    assert route.call_count == 1
    assert fake_time.sleeps == []


class TricklingBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body whose every chunk costs `seconds_per_chunk` on the fake clock."""

    def __init__(self, fake_time: FakeTime, content: bytes, seconds_per_chunk: float) -> None:
        self.fake_time = fake_time
        self.content = content
        self.seconds_per_chunk = seconds_per_chunk

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.content), 100):
            self.fake_time.now += self.seconds_per_chunk
            yield self.content[start : start + 100]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def test_a_body_trickling_past_the_total_timeout_is_a_timeout(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    page = body("hapi_r4_observation_searchset_page3.json")  # about 20 chunks of 100 bytes
    route = mock.get(f"{HAPI}/Observation").mock(
        side_effect=[
            httpx.Response(200, stream=TricklingBody(fake_time, page, 1.0)),
            httpx.Response(200, content=page),
        ]
    )

    with make_client(HAPI, timeouts=5.0, sleep=fake_time.sleep, clock=fake_time.clock) as client:
        found = client.search("Observation", {"patient": "5793201"})

    assert len(found) == 1
    assert route.call_count == 2
    assert len(fake_time.sleeps) == 1


def test_an_answer_larger_than_the_cap_is_fatal(
    mock: respx.MockRouter, make_client: MakeClient
) -> None:
    mock.get(f"{HAPI}/Observation").mock(
        return_value=fhir(200, "hapi_r4_observation_searchset_page1.json")
    )

    with (
        make_client(HAPI, max_response_bytes=1000) as client,
        pytest.raises(FatalFhirServerError, match="larger than 1000 bytes"),
    ):
        client.search("Observation", {"patient": "5793201"})


def test_plain_post_is_resent_when_the_connection_was_never_made(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    route = mock.post(f"{HAPI}/RiskAssessment").mock(
        side_effect=[
            httpx.ConnectError("connection refused"),
            fhir(201, "hapi_r4_riskassessment_created.json"),
        ]
    )

    assert hapi.create({"resourceType": "RiskAssessment"})["id"] == "5793302"
    assert route.call_count == 2


# -- writes ------------------------------------------------------------------------------------


def test_transaction_posts_the_bundle_to_the_base(mock: respx.MockRouter, hapi: FhirClient) -> None:
    route = mock.post(HAPI).mock(return_value=fhir(200, "hapi_r4_transaction_response.json"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "RiskAssessment", "status": "final"},
                "request": {
                    "method": "POST",
                    "url": "RiskAssessment",
                    "ifNoneExist": "identifier=urn:fhir-leuko:assessment|x",
                },
            }
        ],
    }

    response = hapi.transaction(bundle)

    assert response["type"] == "transaction-response"
    sent = route.calls.last.request
    assert sent.url == HAPI
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert orjson.loads(sent.content) == bundle


def test_transaction_of_conditional_creates_is_retried_after_a_502(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    route = mock.post(HAPI).mock(
        side_effect=[httpx.Response(502), fhir(200, "hapi_r4_transaction_response.json")]
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "ServiceRequest"},
                "request": {
                    "method": "POST",
                    "url": "ServiceRequest",
                    "ifNoneExist": "identifier=a|b",
                },
            }
        ],
    }

    assert hapi.transaction(bundle)["type"] == "transaction-response"
    assert route.call_count == 2


def test_delete_is_retried_after_a_503_and_reports_the_status(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    route = mock.delete(f"{HAPI}/RiskAssessment/5793302").mock(
        side_effect=[httpx.Response(503), httpx.Response(204)]
    )

    assert hapi.delete("RiskAssessment", "5793302") == 204
    assert route.call_count == 2


def test_delete_refused_by_the_server_is_fatal(mock: respx.MockRouter, hapi: FhirClient) -> None:
    mock.delete(f"{HAPI}/Patient/5793201").mock(
        return_value=httpx.Response(405, json={"resourceType": "OperationOutcome", "issue": []})
    )

    with pytest.raises(FatalFhirServerError) as err:
        hapi.delete("Patient", "5793201")
    assert err.value.status == 405


def test_conditional_create_sends_if_none_exist(mock: respx.MockRouter, hapi: FhirClient) -> None:
    route = mock.post(f"{HAPI}/RiskAssessment").mock(
        return_value=fhir(201, "hapi_r4_riskassessment_created.json")
    )
    resource = {"resourceType": "RiskAssessment", "status": "final"}

    created = hapi.create(
        resource, if_none_exist={"identifier": "urn:fhir-leuko:assessment|5793201-neutropenia"}
    )

    assert created["id"] == "5793302"
    sent = route.calls.last.request
    criteria = httpx.QueryParams(sent.headers["If-None-Exist"])
    assert criteria["identifier"] == "urn:fhir-leuko:assessment|5793201-neutropenia"
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert sent.headers["Prefer"] == "return=representation"


def test_create_with_an_empty_body_reads_the_location(
    mock: respx.MockRouter, hapi: FhirClient
) -> None:
    mock.post(f"{HAPI}/RiskAssessment").mock(
        return_value=httpx.Response(
            201, headers={"Location": f"{HAPI}/RiskAssessment/5793302/_history/1"}
        )
    )
    mock.get(f"{HAPI}/RiskAssessment/5793302/_history/1").mock(
        return_value=fhir(200, "hapi_r4_riskassessment_created.json")
    )

    assert hapi.create({"resourceType": "RiskAssessment"})["id"] == "5793302"


def test_update_puts_to_type_and_id_with_if_match(mock: respx.MockRouter, hapi: FhirClient) -> None:
    resource = orjson.loads(body("hapi_r4_riskassessment_created.json"))
    route = mock.put(f"{HAPI}/RiskAssessment/5793302").mock(
        return_value=httpx.Response(200, json=resource)
    )

    hapi.update(resource, if_match='W/"1"')

    assert route.calls.last.request.headers["If-Match"] == 'W/"1"'


# -- authorisation -------------------------------------------------------------------------------


def test_static_bearer_token_is_sent(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    route = mock.get(f"{SANDBOX}/Observation").mock(
        return_value=fhir(200, "smart_sandbox_r4_observation_searchset.json")
    )

    with make_client(SANDBOX, auth="static-token-123", sleep=fake_time.sleep) as client:
        found = client.search("Observation", {"patient": "smart-7777701"})

    assert len(found) == 2
    assert route.calls.last.request.headers["Authorization"] == "Bearer static-token-123"


def test_smart_backend_token_is_fetched_once_and_reused(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    private_pem, public_key = rsa_key_pair()
    token_route = mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(200, content=body("smart_backend_token_response.json"))
    )
    fhir_route = mock.get(f"{SANDBOX}/Observation").mock(
        return_value=fhir(200, "smart_sandbox_r4_observation_searchset.json")
    )
    auth = smart_auth(private_pem, fake_time)

    with make_client(SANDBOX, auth=auth, sleep=fake_time.sleep, clock=fake_time.clock) as client:
        client.search("Observation", {"patient": "smart-7777701"})
        fake_time.now += 200  # still inside the token's 300 s, outside its refresh margin
        client.search("Observation", {"patient": "smart-7777701"})

    assert token_route.call_count == 1
    assert fhir_route.call_count == 2
    for call in fhir_route.calls:
        assert call.request.headers["Authorization"] == (
            "Bearer test-access-token-not-a-real-jwt-7f3c2a"
        )
    form = httpx.QueryParams(token_route.calls.last.request.content.decode())
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    assert form["scope"] == "system/Observation.read system/Patient.read"
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"], header["typ"]) == ("RS384", "test-key-1", "JWT")
    claims = jwt.decode(assertion, public_key, algorithms=["RS384"], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "fhir-leuko-test"
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]


def test_smart_backend_token_is_renewed_shortly_before_it_expires(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    private_pem, _ = rsa_key_pair()
    token_route = mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(200, content=body("smart_backend_token_response.json"))
    )
    mock.get(f"{SANDBOX}/Observation").mock(
        return_value=fhir(200, "smart_sandbox_r4_observation_searchset.json")
    )

    with make_client(
        SANDBOX, auth=smart_auth(private_pem, fake_time), clock=fake_time.clock
    ) as client:
        client.search("Observation", {"patient": "smart-7777701"})
        fake_time.now += 250  # 300 s token, renewed 60 s before it expires
        client.search("Observation", {"patient": "smart-7777701"})

    assert token_route.call_count == 2


def test_smart_token_is_renewed_once_when_the_server_says_401(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    private_pem, _ = rsa_key_pair()
    token_route = mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(200, content=body("smart_backend_token_response.json"))
    )
    fhir_route = mock.get(f"{SANDBOX}/Observation").mock(
        side_effect=[
            httpx.Response(401),
            fhir(200, "smart_sandbox_r4_observation_searchset.json"),
        ]
    )

    with make_client(
        SANDBOX, auth=smart_auth(private_pem, fake_time), clock=fake_time.clock
    ) as client:
        assert len(client.search("Observation", {"patient": "smart-7777701"})) == 2

    assert token_route.call_count == 2
    assert fhir_route.call_count == 2


def test_smart_token_endpoint_refusal_is_fatal_and_names_the_oauth_error(
    mock: respx.MockRouter, fake_time: FakeTime, make_client: MakeClient
) -> None:
    private_pem, _ = rsa_key_pair()
    mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(
            401, json={"error": "invalid_client", "error_description": "Unknown kid"}
        )
    )
    fhir_route = mock.get(f"{SANDBOX}/Patient/smart-7777701")

    with (
        make_client(SANDBOX, auth=smart_auth(private_pem, fake_time)) as client,
        pytest.raises(FatalFhirServerError, match="invalid_client: Unknown kid"),
    ):
        client.read("Patient", "smart-7777701")

    assert fhir_route.call_count == 0


def test_retries_are_logged_without_token_or_query(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture, make_client: MakeClient
) -> None:
    mock.get(f"{HAPI}/Observation").mock(
        side_effect=[httpx.Response(503), fhir(200, "hapi_r4_observation_searchset_page3.json")]
    )

    with make_client(HAPI, auth="secret-token-xyz", sleep=lambda _: None) as client:
        client.search("Observation", {"patient": "5793201"})

    assert "search Observation: 503; retry 1/3" in caplog.text
    assert "secret-token-xyz" not in caplog.text
    assert "5793201" not in caplog.text

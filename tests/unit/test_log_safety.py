"""Log lines: one record is one line whatever it quotes, and no line names a patient.

The ids below are fresh per test run, so a hit can only come from this run's data. Every
path that logs is driven: a CDS call that fetches from its fhirServer (with a 429 to make the
client log a retry), notifications (accepted, refused, malformed), the worker that evaluates
what they queued (with a 429 on the patient read), and an error that escaped every handler.
"""

from __future__ import annotations

import json
import logging
import logging.config
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import respx
from fastapi import APIRouter
from fastapi.testclient import TestClient
from httpx import Response

from fhir_leuko import logs
from fhir_leuko.app import ROUTER_BUILDERS, create_app
from fhir_leuko.config import Settings, SubscriptionEndpoint, load_settings
from fhir_leuko.errors import ConfigError
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.subscriptions.worker import Worker, open_queue
from tests.builders import NOW, at, cbc, patient

FHIR = "https://ehr.example.org/fhir/R4"
FORGED = "2026-01-01T00:00:00.000Z ERROR fhir_leuko.app: forged"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def formatter(log_format: str) -> logging.Formatter:
    """The formatter ``serve`` gives its handlers, built from its own logging config."""
    cfg = logs.log_config("debug", log_format)
    built = logging.config.DictConfigurator(cfg).configure_formatter(
        cfg["formatters"]["fhir_leuko"]
    )
    assert isinstance(built, logging.Formatter)
    return built


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("fhir_leuko.test", logging.WARNING, __file__, 1, message, args, None)


# --- escaping, structurally -----------------------------------------------------------------


def test_a_newline_in_a_value_cannot_start_a_line_of_its_own() -> None:
    line = formatter("text").format(record("cds hookInstance=%s cards=%d", f"x\n{FORGED}", 1))
    assert "\n" not in line
    assert line.endswith(f"WARNING fhir_leuko.test: cds hookInstance=x\\n{FORGED} cards=1")


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("esc\x1b[31m", "esc\\x1b[31m"),
        ("nul\x00", "nul\\x00"),
        ("nel\x85ls\u2028ps\u2029", "nel\\x85ls\\u2028ps\\u2029"),
        ("back\\nslash", "back\\\\nslash"),  # a typed backslash-n is not a newline
        ("ünïcödé ok", "ünïcödé ok"),
    ],
)
def test_control_characters_are_escaped_unambiguously(raw: str, escaped: str) -> None:
    assert logs.escape(raw) == escaped
    assert formatter("text").format(record("%s", raw)).endswith(f": {escaped}")


def test_a_traceback_stays_on_the_line_of_its_record() -> None:
    try:
        raise ValueError("boom\nnext")
    except ValueError:
        import sys

        rec = logging.LogRecord(
            "fhir_leuko.x", logging.DEBUG, __file__, 1, "failed", None, sys.exc_info()
        )
    line = formatter("text").format(rec)
    assert "\n" not in line and "Traceback" in line and "ValueError: boom\\nnext" in line


def test_json_lines_carry_the_value_exactly() -> None:
    line = formatter("json").format(record("cds hookInstance=%s", f"x\n{FORGED}\u2028"))
    assert "\n" not in line and "\u2028" not in line
    doc = orjson.loads(line)
    assert doc["message"] == f"cds hookInstance=x\n{FORGED}\u2028"
    assert doc["level"] == "WARNING" and doc["logger"] == "fhir_leuko.test"
    assert doc["time"].endswith("Z")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_handler_of_serve_uses_an_escaping_formatter(log_format: str) -> None:
    cfg = logs.log_config("info", log_format)
    kind = logs.JsonFormatter if log_format == "json" else logs.UtcFormatter
    for name, handler in cfg["handlers"].items():
        spec = cfg["formatters"][handler["formatter"]]
        built = logging.config.DictConfigurator(cfg).configure_formatter(spec)
        assert type(built) is kind, name  # uvicorn's own lines too


def test_library_warnings_come_out_in_the_service_format_and_info_stays_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = {n: logging.getLogger(n) for n in ("fhir_leuko", *logs.LIBRARY_LOGGERS)}
    state = {n: (lg.handlers[:], lg.level, lg.propagate) for n, lg in saved.items()}
    try:
        logging.config.dictConfig(logs.log_config("info", "json"))
        logging.getLogger("psycopg.pool").warning("error connecting in 'fhir-leuko'")
        logging.getLogger("httpx").info("HTTP Request: GET https://fhir/Observation?patient=p1")
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        for name, (handlers, level, propagate) in state.items():
            lg = saved[name]
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
    assert len(err) == 1, err  # the pool's warning; not the request URL
    doc = json.loads(err[0])
    assert doc["logger"] == "psycopg.pool" and doc["level"] == "WARNING"


def test_log_format_is_a_setting() -> None:
    assert load_settings(env={}).service.log_format == "text"
    assert load_settings(env={"FHIR_LEUKO_LOG_FORMAT": "JSON"}).service.log_format == "JSON"
    with pytest.raises(ConfigError, match="FHIR_LEUKO_LOG_FORMAT must be one of text, json"):
        load_settings(env={"FHIR_LEUKO_LOG_FORMAT": "xml"})


# --- no patient data, on every path that logs ---------------------------------------------------


@pytest.fixture
def ids() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {
        "patient": f"pt-{run}",
        "observation": f"obs-{run}",
        "other": f"obs2-{run}",
        "boom": f"pb-{run}",
    }


@pytest.fixture
def settings(app_settings: Callable[..., Settings]) -> Settings:
    ehr = SubscriptionEndpoint(fhir_base=FHIR, header_value="Bearer notify-5x", token="rw-token")
    return app_settings(fhir_server_allowlist=(FHIR,), fetch_timeout_s=5.0, endpoints={"ehr": ehr})


def boom_router(_settings: Settings) -> APIRouter:
    """A route whose path names a patient, failing as a bug would."""
    router = APIRouter()

    @router.get("/boom/{patient_id}")
    async def boom(patient_id: str) -> None:
        raise RuntimeError(f"failed for {patient_id}")

    return router


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def transaction_response(request: Any) -> Response:
    """What a server answers a transaction: one created entry per request entry."""
    entries = orjson.loads(request.content)["entry"]
    return Response(
        200,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "201 Created", "location": f"{e['request']['url']}/n{i}"}}
                for i, e in enumerate(entries)
            ],
        },
    )


@pytest.fixture
def fhir_server(ids: dict[str, str]) -> Iterator[respx.MockRouter]:
    """The EHR's FHIR server: the patient's first read answers 429, then every read works."""
    pid, oid = ids["patient"], ids["observation"]
    draw = [
        {**o, "id": f"{oid}-{i}", "subject": {"reference": f"Patient/{pid}"}}
        for i, o in enumerate(cbc(1.9, 0.4, when=at(0)))
    ]
    observation = {**draw[0], "id": oid, "meta": {"versionId": "3"}}
    with respx.mock(base_url=FHIR, assert_all_called=False, assert_all_mocked=True) as router:
        router.get(f"/Patient/{pid}").mock(
            side_effect=[
                Response(429, headers={"Retry-After": "0"}),
                *[Response(200, json=patient(pid=pid)) for _ in range(5)],
            ]
        )
        router.get(f"/Observation/{oid}").respond(json=observation)
        router.get("/Observation").respond(json=searchset(*draw))
        for kind in (
            "DiagnosticReport",
            "MedicationRequest",
            "Condition",
            "ServiceRequest",
            "RiskAssessment",
        ):
            router.get(f"/{kind}").respond(json=searchset())
        router.post("").mock(side_effect=transaction_response)
        yield router


def test_no_log_line_names_a_patient_or_their_resources(
    settings: Settings,
    ids: dict[str, str],
    fhir_server: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fhir_leuko.cdshooks.router.utc_now", lambda: NOW)
    caplog.set_level(logging.DEBUG)
    pid, oid = ids["patient"], ids["observation"]
    app = create_app(settings, routers=(*ROUTER_BUILDERS, boom_router))
    notify = {"Authorization": "Bearer notify-5x", **FHIR_JSON}
    with TestClient(app, raise_server_exceptions=False) as client:
        # CDS: nothing prefetched, so everything is fetched; the Patient read retries once.
        r = client.post(
            "/cds-services/leukopenia-patient-view",
            json={
                "hook": "patient-view",
                "hookInstance": f"h-{uuid.uuid4()}\n{FORGED}",
                "fhirServer": FHIR,
                "fhirAuthorization": {
                    "access_token": "fhir-tok",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "user/*.read",
                    "subject": "fhir-leuko",
                },
                "context": {"userId": "Practitioner/dr1", "patientId": pid},
            },
        )
        assert r.status_code == 200, r.text
        # Notifications: accepted, refused (wrong secret), not understood (id mismatch).
        observation = {
            "resourceType": "Observation",
            "id": oid,
            "meta": {"versionId": "3"},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
        body = orjson.dumps(observation)
        assert client.put(f"/notify/ehr/Observation/{oid}", content=body, headers=notify)
        assert (
            client.put(
                f"/notify/ehr/Observation/{oid}",
                content=body,
                headers={**notify, "Authorization": "Bearer wrong"},
            ).status_code
            == 401
        )
        mismatch = client.put(
            f"/notify/ehr/Observation/{ids['other']}", content=body, headers=notify
        )
        assert mismatch.status_code == 400
        # A bug on a route whose path names a patient.
        assert client.get(f"/boom/{ids['boom']}").status_code == 500

    # The worker evaluates what the notification queued: reads, searches, a 429, write-back.
    queue = open_queue(settings)
    worker = Worker(
        queue,
        settings,
        client_factory=lambda _n, ep: FhirClient(ep.fhir_base, auth=ep.token, sleep=lambda _: None),
        utcnow=lambda: NOW,
    )
    try:
        outcomes = worker.run_until_idle()
    finally:
        worker.close()
        queue.close()
    assert outcomes and all(o.state == "done" for o in outcomes), outcomes

    ours = [r for r in caplog.records if r.name.startswith(("fhir_leuko", "uvicorn"))]
    text_lines = [formatter("text").format(r) for r in ours]
    json_lines = [formatter("json").format(r) for r in ours]
    # Each path did log (so the absence below means something).
    joined = "\n".join(text_lines)
    for expected in (
        "cds leukopenia-patient-view hookInstance=h-",
        "FHIR GET Patient/{id}: 429; retry 1/",
        "r4-payload-put/resource to ehr: 1 new",
        "notification to ehr refused",
        "notification to ehr not understood",
        "500 on GET /boom/{patient_id}: RuntimeError",
        "(change) done",
    ):
        assert expected in joined, (expected, joined)
    for line in text_lines + json_lines:
        for value in ids.values():
            assert value not in line, line
        assert "\n" not in line
    assert not any(
        line.split(" ", 1)[-1].startswith("ERROR fhir_leuko.app: forged")
        for line in joined.splitlines()
    )


def test_the_other_cli_commands_log_through_the_escaping_formatter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_cli()
    logs.configure_cli()  # idempotent: one line per record, not two
    logging.getLogger("fhir_leuko.fhirio.client").warning("FHIR %s: retry", f"x\n{FORGED}")
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.endswith(f"WARNING fhir_leuko.fhirio.client: FHIR x\\n{FORGED}: retry\n")

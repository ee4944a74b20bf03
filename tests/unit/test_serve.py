"""``fhir-leuko serve`` as an operator runs it: a real process on 127.0.0.1, configured from the
environment, answering the README's call, and logging one line per CDS call without patient
data."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fhir_leuko import logs
from fhir_leuko.errors import ConfigError
from tests.serve_process import serve_process

ROOT = Path(__file__).resolve().parents[2]
REQUEST = ROOT / "tests" / "fixtures" / "cds" / "patient-view-febrile-neutropenia.json"


def _serve(tmp_path: Path, *argv: str, **env: str) -> Iterator[tuple[str, Path]]:
    with serve_process(tmp_path, *argv, **env) as (base, log):
        yield base, log


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path)


def _readme_call(base: str) -> httpx.Response:
    """The README's curl call: the fixture with its results moved to yesterday."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    return httpx.post(
        f"{base}/cds-services/leukopenia-patient-view",
        content=REQUEST.read_text().replace("2026-03-09", yesterday).encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
        trust_env=False,
    )


def test_serve_answers_the_readme_call_and_logs_it_without_patient_data(
    served: tuple[str, Path],
) -> None:
    base, log = served
    answer = _readme_call(base)
    assert answer.status_code == 200
    [card] = answer.json()["cards"]
    assert card["indicator"] == "critical"
    # The server writes (and flushes) the line before it sends the answer.
    text = log.read_text()
    assert "INSECURE DEV MODE" in text
    line = re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO fhir_leuko\.cdshooks\.router: "
        r"cds leukopenia-patient-view hookInstance=5f0c1e2a-8f2b-4c7e-9d0a-3b6e4a1c2d90 "
        r"iss=- jti=- cards=1 in [\d.]+ ms$",
        text,
        re.MULTILINE,
    )
    assert line, text[-2000:]
    # Identifiers of the call only: not the patient, their birth date or their counts (the
    # time stamp and the duration are left out of the check: "in 10.3 ms" holds a "0.3").
    words = re.sub(r" in [\d.]+ ms$", "", line.group(0).split(" ", 1)[1])
    for phi in ("example-1", "1964-04-02", "1.1", "0.3"):
        assert phi not in words


def _forged_call(base: str) -> httpx.Response:
    """The README's call with a hookInstance that tries to write a log line of its own."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    doc = json.loads(REQUEST.read_text().replace("2026-03-09", yesterday))
    doc["hookInstance"] = "h1\n2026-01-01T00:00:00.000Z ERROR fhir_leuko.app: forged"
    return httpx.post(
        f"{base}/cds-services/leukopenia-patient-view", json=doc, timeout=10, trust_env=False
    )


def test_a_newline_in_a_hook_instance_does_not_forge_a_log_line(tmp_path: Path) -> None:
    for base, log in _serve(tmp_path):
        assert _forged_call(base).status_code == 200
        lines = log.read_text().splitlines()
        assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in lines), lines
        assert any(
            "hookInstance=h1\\n2026-01-01T00:00:00.000Z ERROR fhir_leuko.app: forged" in line
            for line in lines
        ), lines


def test_json_log_format_writes_one_json_object_per_line(tmp_path: Path) -> None:
    for base, log in _serve(tmp_path, FHIR_LEUKO_LOG_FORMAT="json"):
        assert _forged_call(base).status_code == 200
        records = [json.loads(line) for line in log.read_text().splitlines() if line]
        loggers = {r["logger"] for r in records}
        assert "uvicorn.error" in loggers and "fhir_leuko.app" in loggers  # uvicorn's lines too
        [call] = [r for r in records if r["message"].startswith("cds ")]
        assert call["message"].startswith(
            "cds leukopenia-patient-view hookInstance=h1\n2026-01-01T00:00:00.000Z ERROR"
        )
        assert call["level"] == "INFO" and call["logger"] == "fhir_leuko.cdshooks.router"


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def test_slow_and_vanishing_clients_are_cut_off_quietly(tmp_path: Path) -> None:
    env = {"FHIR_LEUKO_HEADER_TIMEOUT_S": "1", "FHIR_LEUKO_BODY_TIMEOUT_S": "1"}
    for base, log in _serve(tmp_path, **env):
        port = int(base.rsplit(":", 1)[1])
        path = b"/cds-services/leukopenia-patient-view"
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        # Headers that never finish: the server closes the connection (slowloris).
        started = time.monotonic()
        with _raw(port, head) as slow_headers:
            assert slow_headers.recv(1024) == b""
        assert time.monotonic() - started < 5
        # A body that stops arriving: 408, and the connection is closed.
        with _raw(port, head + b"Content-Length: 100\r\n\r\n" + b'{"hook": ') as slow_body:
            answer = b""
            while chunk := slow_body.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"did not arrive within 1 s" in answer
        # A client that hangs up mid-body: nothing to log above debug.
        with _raw(port, head + b"Content-Length: 1000\r\n\r\n" + b'{"hook": "patient-'):
            pass
        # Everyone else is served as before.
        assert _readme_call(base).status_code == 200
        text = log.read_text()
        assert "ClientDisconnect" not in text and " 500 " not in text, text[-2000:]


def test_log_level_setting_silences_the_per_call_line(tmp_path: Path) -> None:
    for base, log in _serve(tmp_path, FHIR_LEUKO_LOG_LEVEL="warning"):
        answer = _readme_call(base)
        assert answer.status_code == 200
        text = log.read_text()
        assert "INSECURE DEV MODE" in text  # warnings still show
        assert "cds leukopenia-patient-view" not in text


def test_an_unknown_log_level_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="log_level must be one of"):
        logs.check_level("loud")
    assert logs.check_level(" INFO ") == "info"


def test_log_config_sends_fhir_leuko_info_lines_to_stderr() -> None:
    cfg = logs.log_config("info")
    assert cfg["loggers"]["fhir_leuko"]["level"] == "INFO"
    assert cfg["handlers"]["fhir_leuko"]["stream"] == "ext://sys.stderr"
    assert "uvicorn.error" in cfg["loggers"]  # uvicorn's own loggers are kept
    record = logging.LogRecord("fhir_leuko.x", logging.INFO, __file__, 1, "hi", None, None)
    record.created = 0.0
    record.msecs = 0.0
    assert logs.UtcFormatter(logs.FORMAT).format(record) == (
        "1970-01-01T00:00:00.000Z INFO fhir_leuko.x: hi"
    )


# --- What serve hands to uvicorn and to its worker processes --------------------------------

_SERVE_ENV = (
    "FHIR_LEUKO_CONFIG",
    "FHIR_LEUKO_INSECURE_DEV",
    "FHIR_LEUKO_WORKERS",
    "FHIR_LEUKO_HOST",
    "FHIR_LEUKO_PORT",
    "FHIR_LEUKO_PUBLIC_BASE_URL",
)


def _run_serve(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, object]:
    """``fhir-leuko serve ARGV`` with uvicorn.run captured instead of started."""
    import uvicorn

    from fhir_leuko import cli

    for name in [k for k in os.environ if k.startswith("FHIR_LEUKO_")] + list(_SERVE_ENV):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever serve sets
    captured: dict[str, object] = {}

    def fake_run(app: object, **kwargs: object) -> None:
        captured.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(logs, "configure", logs.log_config)  # leave this process's logging be
    assert cli.main(["serve", *argv]) == 0
    return captured


def test_serve_bounds_what_clients_can_hold_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fhir_leuko import serving

    for cls in (serving.HttpProtocol, serving.H11WithHeaderTimeout):  # restored afterwards
        monkeypatch.setattr(cls, "header_timeout_s", cls.header_timeout_s)
    config = tmp_path / "serve.toml"
    config.write_text("[service]\nheader_timeout_s = 7\nlimit_concurrency = 500\n")
    run = _run_serve(monkeypatch, "--config", str(config))
    assert run["http"] is serving.HttpProtocol
    assert run["timeout_keep_alive"] == 5.0
    assert run["limit_concurrency"] == 500
    assert run["h11_max_incomplete_event_size"] == 16 * 1024
    assert serving.HttpProtocol.header_timeout_s == 7.0
    # A worker process of serve --workers N sets its own deadline as it builds the app.
    monkeypatch.setenv("FHIR_LEUKO_HEADER_TIMEOUT_S", "3")
    monkeypatch.setenv("FHIR_LEUKO_INSECURE_DEV", "1")
    from fhir_leuko.app import create_app_from_environment

    create_app_from_environment()
    assert serving.HttpProtocol.header_timeout_s == 3.0
    assert serving.H11WithHeaderTimeout.header_timeout_s == 3.0
    # Off by default: uvicorn counts slow-header connections too, so it would refuse everyone.
    from fhir_leuko.config import ServiceSettings

    assert serving.uvicorn_options(ServiceSettings())["limit_concurrency"] is None


def test_workers_flag_reaches_the_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker process loads its settings from the environment: with --workers 2 they
    must know there are two, or each would keep its own JWT replay cache (a token replayed
    to the other process would pass)."""
    from fhir_leuko.config import load_settings

    run = _run_serve(monkeypatch, "--workers", "2", "--port", "9123")
    assert run["workers"] == 2 and run["port"] == 9123
    child = load_settings().service  # what create_app_from_environment sees
    assert child.workers == 2
    assert child.port == 9123
    assert child.public_base_url == "http://127.0.0.1:9123"


def test_public_url_follows_the_port_unless_configured(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fhir_leuko.config import load_settings

    assert load_settings(env={}).service.public_base_url == "http://127.0.0.1:8080"
    env = {"FHIR_LEUKO_PORT": "9000", "FHIR_LEUKO_HOST": "::1"}
    assert load_settings(env=env).service.public_base_url == "http://[::1]:9000"
    env["FHIR_LEUKO_PUBLIC_BASE_URL"] = "https://cds.example.org"
    settings = load_settings(env=env)
    assert settings.service.public_base_url == "https://cds.example.org"
    assert settings.origins["service.public_base_url"] == "environment"
    # A --port flag moves the derived URL (JWT aud), never a configured one.
    with caplog.at_level(logging.WARNING, logger="fhir_leuko"):
        run = _run_serve(monkeypatch, "--port", "9124", "--insecure-dev")
    assert run["port"] == 9124
    assert "anyone who can reach http://127.0.0.1:9124 " in caplog.text  # the app's own URL


def test_an_unknown_log_level_is_refused_when_settings_load() -> None:
    from fhir_leuko.config import load_settings

    with pytest.raises(ConfigError, match="FHIR_LEUKO_LOG_LEVEL must be one of"):
        load_settings(env={"FHIR_LEUKO_LOG_LEVEL": "loud"})


def test_a_token_replayed_to_another_worker_process_is_refused(
    tmp_path: Path, jwks_file: Callable[..., Path]
) -> None:
    """``serve --workers 2`` with a trusted issuer: each token is accepted once, whichever
    process a new connection reaches; every replay gets 401. (Each call opens a new
    connection, so the kernel spreads them over both processes; a replay cache per process
    would let a replay through as soon as one reaches the other process.)"""
    from tests.jwtkeys import sign

    iss = "https://ehr.example.org/fhir"
    (tmp_path / "leuko.toml").write_text(f'[issuers."{iss}"]\njwks_file = "{jwks_file("k1")}"\n')
    env = {"FHIR_LEUKO_INSECURE_DEV": "0"}
    for base, _log in _serve(tmp_path, "--workers", "2", "--config", "leuko.toml", **env):
        answers: list[tuple[int, ...]] = []
        for _ in range(8):
            now = int(time.time())
            claims = {"iss": iss, "aud": f"{base}/cds-services", "iat": now, "exp": now + 300}
            token = sign({**claims, "jti": str(uuid.uuid4())}, "k1")
            answers.append(
                tuple(
                    httpx.get(
                        f"{base}/cds-services",
                        headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                        timeout=10,
                        trust_env=False,
                    ).status_code
                    for _ in range(4)
                )
            )
        assert answers == [(200, 401, 401, 401)] * 8


def test_metrics_of_several_worker_processes_add_up(tmp_path: Path) -> None:
    """``serve --workers 2``: every scrape (each on a new connection, so either process may
    answer) reports the calls both processes served."""
    from prometheus_client.parser import text_string_to_metric_families

    def discovery_calls(base: str) -> float:
        text = httpx.get(
            f"{base}/metrics", headers={"Connection": "close"}, timeout=10, trust_env=False
        ).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "fhir_leuko_cds_requests_total"
            and sample.labels.get("endpoint") == "discovery"
        )

    for base, _log in _serve(tmp_path, "--workers", "2"):
        before = discovery_calls(base)  # the start-up probes
        calls = 12
        for _ in range(calls):
            r = httpx.get(
                f"{base}/cds-services", headers={"Connection": "close"}, timeout=10, trust_env=False
            )
            assert r.status_code == 200
        assert [discovery_calls(base) - before for _ in range(6)] == [calls] * 6

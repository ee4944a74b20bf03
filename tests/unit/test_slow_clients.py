"""Clients that hang up or dawdle: no 500, no request held open for long.

Driven as raw ASGI (the messages uvicorn would pass), so the client's behaviour is exact:
a body that stops half-way, a disconnect, a connection that never finishes its headers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from fhir_leuko.app import create_app
from fhir_leuko.config import ServiceSettings, Settings, SubscriptionEndpoint
from fhir_leuko.serving import _HeaderDeadline

pytestmark = pytest.mark.anyio

PATHS = ("/cds-services/leukopenia-patient-view", "/notify/ehr")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(tmp_path: Path, **service: Any) -> Settings:
    return Settings(
        service=ServiceSettings(
            insecure_dev=True,
            feedback_db=str(tmp_path / "fb.sqlite3"),
            queue_db=str(tmp_path / "queue.sqlite3"),
            worker_enabled=False,
            **service,
        ),
        endpoints={
            "ehr": SubscriptionEndpoint(fhir_base="https://ehr.example.org/fhir", header_value="s")
        },
    )


def scope(path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
            (b"authorization", b"s"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def call(app: Any, path: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one request whose client sends ``messages``, then never anything again."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await anyio.sleep(3600)  # a client that went quiet
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(10):
        await app(scope(path, 1000), receive, send)
    return sent


@pytest.mark.parametrize("path", PATHS)
async def test_a_client_that_hangs_up_mid_body_is_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    app = create_app(settings(tmp_path))
    caplog.clear()  # the start-up warning of insecure dev mode
    caplog.set_level(logging.INFO)
    await call(
        app,
        path,
        [
            {"type": "http.request", "body": b'{"hook": "patient-', "more_body": True},
            {"type": "http.disconnect"},
        ],
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "ClientDisconnect" not in caplog.text and "500" not in caplog.text


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_that_stops_arriving_is_answered_408(tmp_path: Path, path: str) -> None:
    app = create_app(settings(tmp_path, body_timeout_s=0.2))
    started = anyio.current_time()
    sent = await call(
        app, path, [{"type": "http.request", "body": b'{"hook": "pa', "more_body": True}]
    )
    assert anyio.current_time() - started < 5
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"did not arrive within 0.2 s" in body


async def test_a_complete_body_is_not_timed_afterwards(tmp_path: Path) -> None:
    # After the body, the app may wait on receive() for a hang-up; that is not a slow body.
    app = create_app(settings(tmp_path, body_timeout_s=0.2))
    sent = await call(app, PATHS[1], [{"type": "http.request", "body": b"", "more_body": False}])
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 204


# --- the header deadline, on a stand-in for uvicorn's protocol ------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class FakeCycle:
    def __init__(self) -> None:
        self.response_complete = False


class FakeProtocol:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = FakeTransport()
        self.cycle: FakeCycle | None = None


async def test_a_connection_without_headers_is_closed_at_the_deadline() -> None:
    proto = FakeProtocol()
    _HeaderDeadline(proto, 0.05).arm()  # type: ignore[arg-type]
    await anyio.sleep(0.15)
    assert proto.transport.closed


async def test_a_request_being_answered_keeps_its_connection() -> None:
    proto = FakeProtocol()
    _HeaderDeadline(proto, 0.05).arm()  # type: ignore[arg-type]
    proto.cycle = FakeCycle()  # headers arrived; the answer takes longer than the deadline
    await anyio.sleep(0.15)
    assert not proto.transport.closed


async def test_after_an_answer_the_next_headers_have_the_deadline_again() -> None:
    proto = FakeProtocol()
    deadline = _HeaderDeadline(proto, 0.05)  # type: ignore[arg-type]
    proto.cycle = FakeCycle()
    proto.cycle.response_complete = True
    deadline.arm()  # as on_response_complete does
    await anyio.sleep(0.15)
    assert proto.transport.closed


async def test_a_pipelined_request_already_started_is_not_cut() -> None:
    proto = FakeProtocol()
    deadline = _HeaderDeadline(proto, 0.05)  # type: ignore[arg-type]
    proto.cycle = FakeCycle()  # armed while the next (pipelined) request is being answered
    deadline.arm()
    await anyio.sleep(0.15)
    assert not proto.transport.closed

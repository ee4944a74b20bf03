"""Start and stop the in-memory FHIR R4 server (server.mjs) for integration tests.

Why a real server: respx fixtures show we send what we think servers want; only a server shows
that search, paging, transactions and conditional create really behave as our code assumes.

Use ``start_fhir_server()`` as a context manager, or the ``fhir_server`` (one process per
session) and ``fresh_fhir_server`` (same process, store emptied first) fixtures::

    from fhirserver.harness import fhir_server, fresh_fhir_server  # noqa: F401

Skips only when the server cannot exist here (no ``node``, packages not installed), with the
reason; anything else that goes wrong fails the test with the server's own log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

SERVER_DIR = Path(__file__).resolve().parent
INSTALL_HINT = f"run {SERVER_DIR / 'install.sh'}"
STARTUP_TIMEOUT_S = 20.0
BASE_PATH = "/fhir/R4"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _skip_unless_installed() -> str:
    """The path of node, or pytest.skip naming what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the integration FHIR server needs Node.js >= 20")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router" / "package.json").exists():
        pytest.skip(f"the FHIR server's node_modules are not installed: {INSTALL_HINT}")
    return node


def _log_tail(log_path: Path, limit: int = 2000) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:] or "(empty log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> bool:
    """True once GET [base]/metadata answers 200; False if the process died (port taken?)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # trust_env=False: a proxy from the environment must not see 127.0.0.1 traffic.
    with httpx.Client(trust_env=False, timeout=1.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if http.get(f"{base_url}/metadata").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    _stop(process)
    raise RuntimeError(
        f"The test FHIR server did not answer within {STARTUP_TIMEOUT_S:g} s. "
        f"Its log:\n{_log_tail(log_path)}"
    )


@contextmanager
def start_fhir_server(lacks: Sequence[str] = ()) -> Iterator[str]:
    """Run server.mjs on a free 127.0.0.1 port; yield its FHIR base URL; stop it on exit.

    ``lacks``: capabilities to switch off (server.mjs's FHIR_TEST_SERVER_LACKS), for tests
    of what a client does with a server that lacks one.
    """
    node = _skip_unless_installed()
    with tempfile.TemporaryDirectory(prefix="fhir-leuko-fhirserver-") as tmp:
        log_path = Path(tmp) / "server.log"
        for _ in range(3):  # another process may grab the free port before node binds it
            port = _free_port()
            base_url = f"http://127.0.0.1:{port}{BASE_PATH}"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [node, "--import", "./ws-shim.mjs", "server.mjs", "--port", str(port)],
                    cwd=SERVER_DIR,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={
                        **os.environ,
                        "NODE_NO_WARNINGS": "1",
                        "FHIR_TEST_SERVER_LACKS": ",".join(lacks),
                    },
                )
            try:
                if _wait_until_ready(process, base_url, log_path):
                    yield base_url
                    return
            finally:
                _stop(process)
            if "EADDRINUSE" not in _log_tail(log_path):
                break
        raise RuntimeError(
            f"The test FHIR server exited at start-up. Its log:\n{_log_tail(log_path)}"
        )


def reset_fhir_server(base_url: str) -> None:
    """Empty the server's store (POST [base]/$reset), so each test starts from nothing."""
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        http.post(f"{base_url}/$reset").raise_for_status()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[str]:
    """One server process for the whole session; yields its base URL."""
    with start_fhir_server() as base_url:
        yield base_url


@pytest.fixture
def fresh_fhir_server(fhir_server: str) -> str:
    """The session's server with an empty store."""
    reset_fhir_server(fhir_server)
    return fhir_server

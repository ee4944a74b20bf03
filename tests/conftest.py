"""Fixtures shared by every test directory: the PostgreSQL server and the storage backends,
signing keys and JWKS, and the service under test.

``storage_target`` runs a storage test twice, once on a SQLite file and once on PostgreSQL
(a fresh schema on the session's server), so both backends pass the same suite.
``app_settings`` and ``app_client`` build and start the HTTP service with its files in the
test's own directory; ``rsa_key``, ``ec_key`` and ``jwks_file`` hand out the keys of
``tests/jwtkeys.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import jwtkeys
from tests.postgres.harness import PgServer, ensure_installed

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from fhir_leuko.config import IssuerTrustConfig, Settings, SubscriptionEndpoint


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session, stopped and deleted at the end."""
    bindir = ensure_installed()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed and cannot be installed here (needs root and apt-get):"
            " run tests/postgres/install.sh as root"
        )
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A PostgreSQL URL with an empty schema of its own."""
    return pg_server.fresh_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its tables: a SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


# --- Keys and JWKS -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsa_key() -> jwtkeys.rsa.RSAPrivateKey:
    """The run's RSA signing key (RS384 tokens, SMART client assertions)."""
    return jwtkeys.RSA_KEY


@pytest.fixture(scope="session")
def ec_key() -> jwtkeys.ec.EllipticCurvePrivateKey:
    """The run's P-384 signing key (ES384 tokens, as the CDS Hooks sandbox signs)."""
    return jwtkeys.EC_KEY


@pytest.fixture
def jwks_file(tmp_path: Path) -> Callable[..., Path]:
    """``jwks_file(kid, key=RSA_KEY, **extra)``: a JWKS file in the test's directory with the
    public half of ``key`` under ``kid``, for an issuer's ``jwks_file``."""

    def write(kid: str, key: jwtkeys.PrivateKey = jwtkeys.RSA_KEY, **extra: str) -> Path:
        return jwtkeys.write_jwks(
            tmp_path / f"jwks-{kid}.json", jwtkeys.public_jwk(key, kid, **extra)
        )

    return write


# --- The service under test ----------------------------------------------------------------------


@pytest.fixture
def app_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``app_settings(endpoints=..., issuers=..., **service)``: Settings whose SQLite files are
    in the test's directory, with the notification worker off and JWT checks off
    (``insecure_dev``) unless the keywords (ServiceSettings fields) say otherwise."""
    from fhir_leuko.config import ServiceSettings, Settings

    def make(
        *,
        endpoints: Mapping[str, SubscriptionEndpoint] | None = None,
        issuers: Mapping[str, IssuerTrustConfig] | None = None,
        **service: Any,
    ) -> Settings:
        svc: dict[str, Any] = {
            "queue_db": str(tmp_path / "queue.sqlite3"),
            "feedback_db": str(tmp_path / "feedback.sqlite3"),
            "replay_db": str(tmp_path / "replay.sqlite3"),
            "worker_enabled": False,
            "insecure_dev": True,
            **service,
        }
        return Settings(
            service=ServiceSettings(**svc), endpoints=endpoints or {}, issuers=issuers or {}
        )

    return make


@pytest.fixture
def app_client() -> Iterator[Callable[..., TestClient]]:
    """``app_client(settings, **options)``: the app of ``settings`` started in a TestClient
    (``options`` go to TestClient), shut down when the test ends."""
    from fastapi.testclient import TestClient

    from fhir_leuko.app import create_app

    with ExitStack() as stack:

        def start(settings: Settings, **options: Any) -> TestClient:
            return stack.enter_context(TestClient(create_app(settings), **options))

        yield start

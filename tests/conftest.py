"""Fixtures shared by every test directory: the PostgreSQL server and the storage backends.

``storage_target`` runs a storage test twice, once on a SQLite file and once on PostgreSQL
(a fresh schema on the session's server), so both backends pass the same suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres.harness import PgServer, ensure_installed


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

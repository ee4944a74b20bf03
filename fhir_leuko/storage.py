"""One storage interface for the service's shared state: SQLite files or one PostgreSQL database.

The notification queue, the JWT replay cache and the feedback store each hold a `Database`
and speak SQL through `Database.transaction()` and `Database.read()`. The target decides the
backend: ``postgresql://user:pass@host:5432/db`` (``service.database_url``, what replicas on
several hosts share) or a file path (the embedded default, one machine only).

The SQL the stores write runs on both: ``?`` placeholders (rewritten to ``%s`` for psycopg),
``INSERT ... ON CONFLICT DO NOTHING``, ``CAST(? AS BIGINT)`` where a parameter may be NULL.
What differs is kept here: how a write transaction takes its locks (SQLite ``BEGIN
IMMEDIATE`` serialises every writer; PostgreSQL takes row locks and, through `Tx.lock`,
transaction-level advisory locks on the keys a check-then-act sequence is about), and the DDL.

Schemas are versioned per store in ``schema_version``: migration *k* brings a store from
version *k* to *k + 1*, applied at start inside one transaction. On PostgreSQL that
transaction first takes an advisory lock, so two replicas starting at once apply each
migration exactly once; on SQLite ``BEGIN IMMEDIATE`` does the same.

Every driver error leaves this module as `StorageError` (HTTP 503): a locked file, a database
that is down or a pool with no free connection is a temporary condition for callers, never a
verdict on their request. Messages name the driver error's type only.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self

from fhir_leuko.errors import LeukoError

__all__ = [
    "Database",
    "Migrations",
    "StorageError",
    "Store",
    "Tx",
    "is_database_url",
    "open_database",
]

logger = logging.getLogger(__name__)

Backend = Literal["sqlite", "postgresql"]
Row = Mapping[str, Any]
#: Per backend, the statement lists of each migration, in order (index k: version k -> k + 1).
Migrations = Mapping[Backend, Sequence[Sequence[str]]]

# pg_advisory_xact_lock(namespace, key): the first number keeps our locks apart from other
# applications' on the same database.
_LOCK_NAMESPACE = 0x1E0C
_SCHEMA_LOCK = "schema"
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


class StorageError(LeukoError):
    """The database could not do what was asked now (locked, down, no free connection)."""

    http_status = 503


def is_database_url(target: object) -> bool:
    """True for a PostgreSQL URL, False for a file path."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Tx(Protocol):
    """An open transaction (or, from `Database.read`, a read-only session)."""

    backend: Backend

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def lock(self, key: str) -> None:
        """Hold an exclusive lock on ``key`` until the transaction ends (PostgreSQL; SQLite's
        write transaction already excludes every other writer)."""
        ...

    def try_lock(self, key: str) -> bool:
        """Like `lock`, but ``False`` at once when someone else holds it."""
        ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...


def open_database(
    target: str | PathLike[str],
    *,
    busy_timeout_s: float = 5.0,
    pool_size: int = 4,
    sqlite_pragmas: Sequence[str] = (),
) -> SqliteDatabase | PostgresDatabase:
    """The database at ``target``: a PostgreSQL URL, or a SQLite file (created if missing).

    ``busy_timeout_s`` bounds how long a call waits for a lock (SQLite) or a free pooled
    connection (PostgreSQL) before it fails with `StorageError`.
    """
    if is_database_url(target):
        return PostgresDatabase(str(target), pool_size=pool_size, timeout_s=busy_timeout_s)
    return SqliteDatabase(target, busy_timeout_s=busy_timeout_s, pragmas=sqlite_pragmas)


# --------------------------------------------------------------------------- SQLite


class _SqliteTx:
    backend: Backend = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def lock(self, key: str) -> None:
        return None

    def try_lock(self, key: str) -> bool:
        return True


class SqliteDatabase:
    """One connection behind a lock, WAL mode; several objects (threads, processes) may open
    the same file. ``:memory:`` works too (one connection, so one object)."""

    backend: Backend = "sqlite"

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        pragmas: Sequence[str] = (),
    ) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            _enable_wal(self._db, deadline=time.monotonic() + busy_timeout_s)
            for pragma in pragmas:
                self._db.execute(f"PRAGMA {pragma}")
        except sqlite3.Error as err:
            if _is_lock_error(err):
                raise StorageError(
                    f"the database file stayed locked for {busy_timeout_s:g} s while opening it"
                    f" ({type(err).__name__})"
                ) from err
            raise StorageError(f"cannot open the database file ({type(err).__name__})") from err

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (tests read PRAGMAs through it)."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        """One write transaction; IMMEDIATE takes the write lock up front, so check-then-act
        sequences are atomic across threads *and* processes."""
        with self._lock, _translated():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[_SqliteTx]:
        with self._lock, _translated():
            yield _SqliteTx(self._db)

    def migrate(self, component: str, migrations: Migrations) -> int:
        return _migrate(self, component, migrations["sqlite"])

    def ping(self) -> None:
        with self.read() as tx:
            tx.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _is_lock_error(err: sqlite3.Error) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the file, for now."""
    text = str(err)
    return "locked" in text or "busy" in text


def _enable_wal(db: sqlite3.Connection, *, deadline: float) -> None:
    """Switch the file to WAL (persistent, so usually already done), retrying while locked.

    Switching needs an exclusive lock, and SQLite answers ``database is locked`` at once,
    without its busy handler, when another connection is upgrading the same file: what
    replicas (or threads) opening a new database together meet. So the switch is retried
    with a short, jittered sleep until ``deadline``; only then does the lock error stand."""
    attempt = 0
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as err:
            if not _is_lock_error(err) or time.monotonic() >= deadline:
                raise
        attempt += 1
        # 1, 2, 4 ... 50 ms, spread by the thread id so racing openers do not retry in step.
        delay = min(0.05, 0.001 * 2**attempt) * (1 + (threading.get_ident() % 7) / 7)
        time.sleep(delay)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as err:
        raise StorageError(f"the database is unavailable ({type(err).__name__})") from err


# --------------------------------------------------------------------------- PostgreSQL


def _pg_sql(sql: str) -> str:
    # Our statements contain no literal '%' and no '?' other than placeholders.
    return sql.replace("?", "%s")


class _PgTx:
    backend: Backend = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_pg_sql(sql), tuple(params))

    def lock(self, key: str) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, key))

    def try_lock(self, key: str) -> bool:
        row = self._conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s)) AS ok", (_LOCK_NAMESPACE, key)
        ).fetchone()
        return bool(row["ok"])


class PostgresDatabase:
    """A psycopg connection pool; every transaction runs on one pooled connection."""

    backend: Backend = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4, timeout_s: float = 5.0) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self._timeout = timeout_s

        def configure(conn: Any) -> None:
            conn.row_factory = dict_row

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=timeout_s,
            open=False,
            configure=configure,
            # A connection that died with the server is replaced, not handed out.
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(timeout_s)), "autocommit": True},
            name="fhir-leuko",
        )
        try:
            # Do not wait for min_size at start: an unreachable database fails the first
            # call (a 503), and the pool keeps trying in the background.
            self._pool.open(wait=False)
        except Exception as err:  # pragma: no cover - open(wait=False) does not connect
            raise StorageError(f"cannot open the database pool ({type(err).__name__})") from err

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except PoolTimeout as err:
            raise StorageError("the database is unavailable (no connection)") from err
        except self._psycopg.Error as err:
            raise StorageError(f"the database is unavailable ({type(err).__name__})") from err

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        with self._connection() as conn, conn.transaction():
            yield _PgTx(conn)

    @contextmanager
    def read(self) -> Iterator[_PgTx]:
        with self._connection() as conn:
            yield _PgTx(conn)

    def migrate(self, component: str, migrations: Migrations) -> int:
        return _migrate(self, component, migrations["postgresql"])

    def ping(self) -> None:
        with self.read() as tx:
            tx.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._pool.close()


# --------------------------------------------------------------------------- schema


def _migrate(
    db: SqliteDatabase | PostgresDatabase, component: str, steps: Sequence[Sequence[str]]
) -> int:
    """Bring ``component``'s tables to the newest version; the version reached."""
    with db.transaction() as tx:
        # Replicas starting together queue up here; the second finds the work done.
        tx.lock(_SCHEMA_LOCK)
        tx.execute(_SCHEMA_TABLE)
        row = tx.execute(
            "SELECT version FROM schema_version WHERE component = ?", (component,)
        ).fetchone()
        current = int(row["version"]) if row is not None else 0
        for version in range(current, len(steps)):
            for statement in steps[version]:
                tx.execute(statement)
        if current < len(steps):
            tx.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(steps)),
            )
            logger.info("%s schema at version %d (was %d)", component, len(steps), current)
        elif current > len(steps):
            raise StorageError(
                f"the {component} schema is at version {current}, newer than this release knows"
                f" ({len(steps)}); upgrade fhir-leuko"
            )
        return len(steps)


#: Either backend; the stores use only what both offer.
Database = SqliteDatabase | PostgresDatabase


class Store:
    """A component's tables (the queue, feedback, the replay cache) in a database the store
    opens (a file path or a PostgreSQL URL) or shares (an open `Database`).

    A subclass names its ``component`` and ``migrations`` (and may change ``pool_size`` and
    ``sqlite_pragmas``). The tables are migrated on opening; ``close`` closes only a database
    the store opened. A database locked or down past ``busy_timeout_s`` raises
    `StorageError`.
    """

    component: ClassVar[str]
    migrations: ClassVar[Migrations]
    pool_size: ClassVar[int] = 4
    sqlite_pragmas: ClassVar[Sequence[str]] = ()

    def __init__(
        self,
        target: str | PathLike[str] | Database,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        pool_size: int | None = None,
    ) -> None:
        self._clock = clock
        if isinstance(target, str | PathLike):
            self.database: Database = open_database(
                target,
                busy_timeout_s=busy_timeout_s,
                pool_size=pool_size or self.pool_size,
                sqlite_pragmas=self.sqlite_pragmas,
            )
            self._owns_database = True
        else:
            self.database = target
            self._owns_database = False
        try:
            self.database.migrate(self.component, self.migrations)
        except BaseException:
            self.close()
            raise

    def ping(self) -> None:
        """Raise `StorageError` unless the database answers."""
        self.database.ping()

    def close(self) -> None:
        """Close the database if the store opened it; the store cannot be used afterwards."""
        if self._owns_database:
            self.database.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

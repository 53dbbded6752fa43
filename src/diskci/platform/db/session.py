"""Engines, sessions and schema upgrades.

``Database`` owns the engine for one URL. ``session_scope()`` is the unit of work: code inside it (the
repositories, actions, tasks) only adds and flushes; the scope commits once at the end, or rolls back
on any exception. Keep write scopes short: never hold one open across registry or network I/O.

SQLite (the default, ``DISKCI_DATABASE_URL`` unset) runs in WAL mode with a busy timeout and foreign
keys on; write scopes begin with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy
timeout instead of failing on a lock upgrade, while ``read_scope()`` uses a plain deferred ``BEGIN``
(WAL readers never wait). The database file is created 0600 in a 0700 directory before SQLite opens
it, so its WAL and shared-memory files (which SQLite gives the database's mode) are private too.
PostgreSQL uses one engine for both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from diskci.errors import UsageError
from diskci.platform.statefiles import private_sqlite_file

SQLITE_BUSY_TIMEOUT_MS = 30_000
MAX_INTEGER = 2**31 - 1  # the largest value of an INTEGER column (ids, days, offsets) on every backend
_PG_MIGRATION_LOCK = 0x64697363  # "disc": one migrating process at a time


def _sqlite_engine(url: str, *, begin: str) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        private_sqlite_file(Path(parsed.database).expanduser())  # 0600 in a 0700 directory
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=8,
        max_overflow=16,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver: we emit BEGIN ourselves (below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The engine(s) and session factories for one database URL."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        try:
            backend = make_url(url).get_backend_name()
        except Exception as exc:
            raise UsageError(f"invalid database URL {url!r}: {exc}") from exc
        self.backend = backend
        if backend == "sqlite":
            self.engine = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
            self.read_engine = _sqlite_engine(url, begin="BEGIN")
        elif backend == "postgresql":
            if make_url(url).drivername == "postgresql":
                url = str(make_url(url).set(drivername="postgresql+psycopg").render_as_string(False))
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=16, pool_pre_ping=True)
            self.read_engine = self.engine
        else:
            raise UsageError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or postgresql://")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits once when the block ends, rolls back on an exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only unit of work (rolled back at the end; never blocks writers on SQLite)."""
        with self._read_sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision (``alembic upgrade head``)."""
        from diskci.platform.db.migrate import upgrade_head

        with self.engine.begin() as conn:
            if self.backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            upgrade_head(conn)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


_lock = threading.Lock()
_default: Database | None = None


def configure(url: str) -> Database:
    """Set the process-wide database (the app, the CLI and the task consumers call this at start)."""
    global _default
    with _lock:
        if _default is not None and _default.url == url:
            return _default
        if _default is not None:
            _default.dispose()
        _default = Database(url)
        return _default


def set_default(database: Database | None) -> None:
    """Make ``database`` the process-wide one (tests, and apps built around an existing Database)."""
    global _default
    with _lock:
        _default = database


def get_database() -> Database:
    """The process-wide database; configured from ``PlatformSettings`` (the environment) if not yet."""
    if _default is None:
        from diskci.platform.settings import PlatformSettings

        return configure(PlatformSettings().database_url)
    return _default


def reset() -> None:
    """Forget the process-wide database (tests)."""
    global _default
    with _lock:
        if _default is not None:
            _default.dispose()
        _default = None


@contextmanager
def session_scope(database: Database | None = None) -> Iterator[Session]:
    """``with session_scope() as session:`` — one unit of work on the given or process-wide database."""
    with (database or get_database()).session() as session:
        yield session


@contextmanager
def read_scope(database: Database | None = None) -> Iterator[Session]:
    """A read-only session on the given or process-wide database."""
    with (database or get_database()).read_session() as session:
        yield session


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched (``Session.execute`` is typed as returning a plain Result)."""
    return int(result.rowcount)

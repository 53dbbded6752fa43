"""Fixtures for every test: platform databases on SQLite and PostgreSQL, settings, and an API client.

``platform_db`` is parametrized over both databases: each test runs once on a SQLite file and once on
PostgreSQL (``DISKCI_TEST_POSTGRES_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``,
marked ``postgres``), in a schema unique to this test session and migrated with Alembic once. Each test
starts from empty tables (they are emptied after every test).

Nothing here writes outside pytest's temporary directories: ``DISKCI_STATE_DIR`` (and so the default
SQLite queue, ``diskci.platform.tasks.huey``) points into one for the whole run unless already set.
``platform_settings`` uses that same queue, so an app built on them without an ``enqueue`` double
queues where ``diskci.platform.tasks.huey`` looks.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from diskci.platform.db.session import Database
    from diskci.platform.settings import PlatformSettings

POSTGRES_URL = os.environ.get("DISKCI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_SECRET_KEY = "test-secret-key-" + "k" * 32
# Host checks (needs_tool, needs_mount): skip when the host lacks a tool or root, fail in CI instead.
pytest_plugins = ["host_tools"]


def pytest_configure(config: pytest.Config) -> None:
    if "DISKCI_STATE_DIR" not in os.environ:
        os.environ["DISKCI_STATE_DIR"] = tempfile.mkdtemp(prefix="diskci-test-state-")


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh schema of the test database (dropped at the end)."""
    from sqlalchemy import create_engine, text

    schema = f"diskci_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable ({exc}); set DISKCI_TEST_POSTGRES_URL")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """One migrated platform database per backend for the whole session."""
    from diskci.platform.db.session import Database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('platform-db') / 'platform.db'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


def _empty_tables(database: Database) -> None:
    from sqlalchemy import text

    from diskci.platform.db.models import Base

    names = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with database.engine.begin() as conn:
        if database.backend == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            conn.execute(text("UPDATE node_platforms SET default_publication_id = NULL"))
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def platform_db(migrated_db: Database) -> Iterator[Database]:
    """The migrated database (SQLite, then PostgreSQL), empty, and the process-wide default."""
    from diskci.platform.db import session

    session.set_default(migrated_db)
    try:
        yield migrated_db
    finally:
        session.set_default(None)
        _empty_tables(migrated_db)


def session_queue_url() -> str:
    """The queue ``diskci.platform.tasks.huey`` uses in this run (the environment's settings)."""
    state_dir = Path(os.environ["DISKCI_STATE_DIR"])
    return os.environ.get("DISKCI_QUEUE_URL") or f"sqlite:///{state_dir / 'queue.db'}"


@pytest.fixture
def platform_settings(platform_db: Database, tmp_path: Path) -> PlatformSettings:
    from diskci.platform.settings import PlatformSettings

    return PlatformSettings(
        state_dir=tmp_path / "state",
        database_url=platform_db.url,
        queue_url=session_queue_url(),
        secret_key=TEST_SECRET_KEY,  # type: ignore[arg-type]
        public_base_url="http://127.0.0.1:8480",
    )


@pytest.fixture
def enqueued() -> list[str]:
    """Delivery ids the app under test queued (see ``platform_client``)."""
    return []


@pytest.fixture
def platform_app(platform_settings: PlatformSettings, platform_db: Database, enqueued: list[str]) -> Any:
    """The FastAPI app on the test database; queued deliveries are recorded in ``enqueued``."""
    from diskci.platform.http.app import create_app

    def enqueue(delivery_id: str) -> str:
        enqueued.append(delivery_id)
        return f"task-{len(enqueued)}-{delivery_id}"

    return create_app(platform_settings, database=platform_db, enqueue=enqueue, migrate=False)


@pytest.fixture
def platform_client(platform_app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(platform_app) as client:
        yield client


@pytest.fixture
def make_token(platform_db: Database) -> Any:
    """``make_token(role, name=None) -> bearer token`` created directly in the database."""
    from diskci.platform.actions.tokens import create_token
    from diskci.platform.db.models import Role

    def make(role: str, name: str | None = None) -> str:
        with platform_db.session() as session:
            out = create_token(session, name or f"{role}-{secrets.token_hex(3)}", Role(role), actor="test")
        return out.token

    return make


@pytest.fixture
def admin_headers(make_token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('admin')}"}

"""The Alembic migrations create exactly the tables the SQLAlchemy models describe (both databases)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from diskci.platform.db.migrate import schema_differences
from diskci.platform.db.models import Base
from diskci.platform.db.session import Database


def test_models_match_migrations(platform_db: Database) -> None:
    with platform_db.engine.connect() as conn:
        assert schema_differences(conn) == []
        tables = set(inspect(conn).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_upgrade_is_idempotent_and_downgrade_reverses(tmp_path: Path) -> None:
    from alembic import command

    from diskci.platform.db.migrate import alembic_config

    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        db.upgrade()
        db.upgrade()
        with db.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        with db.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        db.upgrade()
        with db.engine.connect() as conn:
            assert schema_differences(conn) == []
    finally:
        db.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        db.dispose()

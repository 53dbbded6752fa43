"""Alembic, driven from code: the migration scripts ship inside the package (no alembic.ini)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from diskci.platform.db.models import Base

SCRIPT_LOCATION = "diskci.platform.db:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_head(connection: Connection) -> None:
    """``alembic upgrade head`` on an open connection (the caller's transaction commits it)."""
    command.upgrade(alembic_config(connection), "head")


def schema_differences(connection: Connection) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty: they agree)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))

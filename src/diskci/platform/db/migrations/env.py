"""Alembic environment: runs on the connection handed in by ``diskci.platform.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from diskci.platform.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the plain ``alembic`` command line, with -x url=...
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
            "sqlalchemy.url"
        )
        if not url:
            raise SystemExit("give the database: alembic -x url=sqlite:///path ...")
        with create_engine(url).begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

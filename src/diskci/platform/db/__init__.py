"""The data layer: SQLAlchemy models, sessions and Alembic migrations."""

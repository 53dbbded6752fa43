"""Alembic migration environment of the platform database."""

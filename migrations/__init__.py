"""Alembic migrations for promptq's schema (SQLite and PostgreSQL alike)."""

"""Alembic migrations of sarbot's state database (applied by ``sarbot db upgrade``)."""

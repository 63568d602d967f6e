"""Database engines that cannot write, for every connector that reads SQL stores.

SQLite files are opened read-only; PostgreSQL and MySQL/MariaDB sessions start
in read-only transaction mode.  Bound parameters never appear in error text,
so a failing query cannot leak the identifier it was looking for.  A
read-only database account is still the first line of defence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url


def read_only_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=f"file:{parsed.database}", query={"mode": "ro", "uri": "true"})
    elif backend == "postgresql":
        connect_args["options"] = "-c default_transaction_read_only=on"
    elif backend in ("mysql", "mariadb"):
        connect_args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    return create_engine(
        parsed, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args
    )

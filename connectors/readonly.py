"""Database engines that cannot write, for every connector that reads SQL stores.

SQLite files are opened read-only; PostgreSQL and MySQL/MariaDB sessions start
in read-only transaction mode.  Bound parameters never appear in error text,
so a failing query cannot leak the identifier it was looking for.  A
read-only database account is still the first line of defence.

A pooled connection that sat idle for ``PING_AFTER`` seconds or more is pinged
before use and replaced if the server dropped it (a restart, ``wait_timeout``, a
firewall).  The lookups of one collection follow each other closely, so they
reuse their connection without the extra round trip; one dropped in that short
window fails the attempt, and the collect step's retry gets a new one.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

PING_AFTER = 10.0
"""Seconds a pooled connection may sit unused before it is checked with a ping."""
IDLE_SINCE = "sarbot_idle_since"


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
    engine = create_engine(parsed, hide_parameters=True, connect_args=connect_args)
    if backend != "sqlite":
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    def checkin(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        entry.info[IDLE_SINCE] = time.monotonic()

    def checkout(
        dbapi_connection: Any, entry: ConnectionPoolEntry, _: PoolProxiedConnection
    ) -> None:
        since = entry.info.get(IDLE_SINCE)  # none on a connection just made
        if since is None or time.monotonic() - since < PING_AFTER:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # The pool replaces the connection and tries again.
                raise exc.DisconnectionError("the pooled connection was closed") from error
            raise

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)

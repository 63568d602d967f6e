"""Announcements of work between instances sharing a PostgreSQL state database.

The instance that reads the mailbox announces each mail it takes in (most give
the others something to do: a confirmation to collect for, a letter to send)
with a notification on ``WORK_CHANNEL`` (``announce_on``).  Each of the others
listens on a connection of its own (``Listener``) and, when it has nothing to
do, waits for an announcement, so it starts on new work at once.

An announcement only wakes an instance early: it waits ``FOLLOW_INTERVAL`` at
most (``sarbot.store.instances``) and looks for work all the same, so a lost
announcement, a listening connection that broke (opened again at the next
wait) or one that cannot be opened (tried again ``LISTEN_RETRY`` seconds later)
costs at most that long.  Notifications that arrive while the instance is busy
are kept by the driver (psycopg 3.2.4 or later) and end the next wait at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger

WORK_CHANNEL = "sarbot_work"
"""The PostgreSQL notification channel on which work is announced to the other instances."""
STOP_CHECK = 0.2
"""Seconds between looks at the stop event while waiting for an announcement."""
LISTEN_RETRY = 60.0
"""Seconds after a listening connection could not be opened before the next try."""


def announce_on(connection: Connection) -> None:
    """A notification on ``WORK_CHANNEL``, sent at once on an autocommit connection."""
    connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": WORK_CHANNEL})


class Listener:
    """One instance's listening connection, and its waits for announcements.

    ``open_connection`` gives a new autocommit connection of the instance's own.  Only
    psycopg 3 (``driver``) is listened with; with another driver every wait runs its
    course.  A failure is logged once (``instance.listening_failed``) until listening
    works again (``instance.listening_again``), not at every wait.
    """

    def __init__(
        self,
        open_connection: Callable[[], Connection],
        log: FilteringBoundLogger,
        *,
        driver: str,
    ) -> None:
        self._open_connection = open_connection
        self._log = log
        self._can_listen = driver == "psycopg"
        self._connection: Connection | None = None
        self._again_at = 0.0
        self._broke = False

    def open(self) -> Connection | None:
        """The listening connection, opened (and ``LISTEN`` sent) if there is none and it is
        time to try; None if there is none."""
        if self._connection is not None:
            return self._connection
        if not self._can_listen or time.monotonic() < self._again_at:
            return None
        try:
            connection = self._open_connection()
        except SQLAlchemyError as exc:
            self._failed(exc, again_at=time.monotonic() + LISTEN_RETRY)
            return None
        try:
            connection.execute(text(f"LISTEN {WORK_CHANNEL}"))
        except SQLAlchemyError as exc:
            discard(connection)
            self._failed(exc, again_at=time.monotonic() + LISTEN_RETRY)
            return None
        self._connection = connection
        if self._broke:
            self._broke = False
            self._log.info("instance.listening_again")
        return connection

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait until work is announced (True), ``stop`` is set or ``timeout`` passes.

        Every announcement already received ends it at once, and is used up by it: one look
        for work answers them all.  Without a listening connection it waits out ``timeout``.
        """
        deadline = time.monotonic() + timeout
        listening = self.open()
        if listening is None:
            stop.wait(timeout)
            return False
        driver = cast("psycopg.Connection[Any]", listening.connection.driver_connection)
        announced = False
        try:
            while not (announced or stop.is_set()) and (left := deadline - time.monotonic()) > 0:
                # closed before the next: each holds the connection's lock while open
                with closing(driver.notifies(timeout=min(left, STOP_CHECK))) as received:
                    announced = next(received, None) is not None
            if announced:
                for _ in driver.notifies(timeout=0):
                    pass  # the others that came with it
        except (psycopg.Error, OSError) as exc:
            self._failed(exc, again_at=time.monotonic())  # opened again at the next wait
            if not announced:
                stop.wait(max(0.0, deadline - time.monotonic()))
        return announced

    def close(self) -> None:
        if self._connection is not None:
            discard(self._connection)
            self._connection = None

    def _failed(self, exc: BaseException, *, again_at: float) -> None:
        self.close()
        self._again_at = again_at
        if not self._broke:
            self._broke = True
            self._log.warning("instance.listening_failed", error_type=type(exc).__name__)


def discard(connection: Connection) -> None:
    """Close a connection for good: never back to the pool, where its session (its locks,
    its ``LISTEN``) would live on."""
    connection.invalidate()
    connection.close()

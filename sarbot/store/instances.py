"""How many ``sarbot run`` instances share one state database, and who does what.

SQLite (the default) serves one instance: ``Alone`` takes an exclusive lock on a
file beside the database when the daemon starts, and a second ``sarbot run``
against the same database refuses to start, naming the first one's process.

PostgreSQL serves two or more instances (docs/deployment.md): ``Shared`` keeps
one connection of its own and takes PostgreSQL *session advisory locks* on it:

- the mailbox lock: the one instance holding it reads the mailbox and does the
  work that must happen once (expiry, reminders, operators' notices, retention);
  the others try for it every cycle, so when its holder dies (PostgreSQL ends
  its session, and with it the lock) another takes over within
  ``FOLLOW_INTERVAL`` plus the time PostgreSQL needs to see the session gone;
- a claim per request, or per message without a request: collection,
  packaging and delivery of one request happen in one instance at a time.

A claim must outlive the many short transactions one request's work commits
(collection alone may take minutes of connector I/O), and it must end the
moment its holder dies: a row lock (``SELECT ... FOR UPDATE SKIP LOCKED``)
would have to keep a transaction open across that work and would block the
holder's own updates of the row, and a lease row would hold a dead instance's
work until the lease ran out.  An advisory lock on a session of its own does
both: PostgreSQL releases it when the session ends, however the process died.
Whoever takes a claim reads the row again before working on it, so work
another instance finished meanwhile is not done twice.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import IntEnum
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from structlog.typing import FilteringBoundLogger

from sarbot.errors import ConfigError

FOLLOW_INTERVAL = 2.0
"""Seconds between tries for the mailbox lock (and for work) by an instance not holding it."""
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
"""The coordination session's TCP keepalives: a holder whose host vanished is seen gone in ~11 s."""
SETTLE_SECONDS = 3600.0
"""A file in the export folder younger than this may belong to another instance's packaging."""

LOCK_SPACE = 0x5A_B0_7
"""The first key of every sarbot advisory lock (the second names the thing locked)."""


class Claim(IntEnum):
    """What an advisory lock is taken on: its number is the lock's second key's kind."""

    MAILBOX = 0
    REQUEST = 1
    MESSAGE = 2


class Instances(Protocol):
    """What the daemon and the pipeline ask about the other instances (if any)."""

    name: str
    shared: bool
    """Whether more than one instance may run (then other instances' files are left to settle)."""

    def start(self) -> None:
        """Called as the daemon starts: refuse (ConfigError) if this instance may not run."""

    def stop(self) -> None:
        """Called as the daemon stops: give up the locks."""

    def reads_mailbox(self) -> bool:
        """Whether this instance reads the mailbox now (taking the mailbox lock if it is free)."""

    def claim(self, kind: Claim, key: int) -> AbstractContextManager[bool]:
        """A context: True inside it if this instance holds the claim, False if another does."""

    def still_holds(self) -> bool:
        """Whether the claims taken are still held (asked just before a message is sent)."""


def instances_for(engine: Engine, log: FilteringBoundLogger) -> Instances:
    """``Shared`` on PostgreSQL, ``Alone`` on anything else."""
    if engine.dialect.name == "postgresql":
        return Shared(engine, log)
    return Alone(engine)


def _name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Alone:
    """The only instance: it does everything, and a second one on SQLite refuses to start."""

    shared = False

    def __init__(self, engine: Engine) -> None:
        self.name = _name()
        self._engine = engine
        self._lock: IO[str] | None = None

    @property
    def lock_path(self) -> Path | None:
        """The lock file beside an SQLite database file (None for memory or other databases)."""
        url = make_url(str(self._engine.url))
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(f"{url.database}.instance")

    def start(self) -> None:
        path = self.lock_path
        if path is None or self._lock is not None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"another 'sarbot run' ({holder}) is using the state database "
                f"{path.with_suffix('')}: an SQLite state database serves one instance; "
                "to run more than one, use PostgreSQL (docs/deployment.md)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.name}\n")
        handle.flush()
        self._lock = handle

    def stop(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file gives up the lock
            self._lock = None

    def reads_mailbox(self) -> bool:
        return True

    @contextmanager
    def claim(self, kind: Claim, key: int) -> Iterator[bool]:
        yield True

    def still_holds(self) -> bool:
        return True


class Shared:
    """One of several instances on PostgreSQL, coordinated by advisory locks."""

    shared = True

    def __init__(self, engine: Engine, log: FilteringBoundLogger) -> None:
        self.name = _name()
        self._engine = engine
        self._log = log.bind(instance=self.name)
        self._connection: Connection | None = None
        self._reading = False

    def start(self) -> None:
        self._session()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()  # ending the session gives up every lock it holds
            self._connection = None
        if self._reading:
            self._reading = False
            self._log.info("instance.mailbox_released")

    def reads_mailbox(self) -> bool:
        if self._reading and self._alive():
            return True
        if self._reading:
            self._reading = False
            self._log.warning("instance.mailbox_lost")  # the session (and its lock) is gone
        if self._try(Claim.MAILBOX, 0):
            self._reading = True
            self._log.info("instance.mailbox_taken")
        return self._reading

    @contextmanager
    def claim(self, kind: Claim, key: int) -> Iterator[bool]:
        held = self._try(kind, key)
        try:
            yield held
        finally:
            if held:
                self._release(kind, key)

    def still_holds(self) -> bool:
        return self._alive()

    # -- the coordination session ----------------------------------------------------------

    def _session(self) -> Connection:
        if self._connection is None:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            for setting, value in KEEPALIVE.items():
                connection.execute(text(f"SET {setting} = {int(value)}"))
            self._connection = connection
        return self._connection

    def _try(self, kind: Claim, key: int) -> bool:
        try:
            taken = self._session().scalar(
                text("SELECT pg_try_advisory_lock(CAST(:space AS integer), CAST(:key AS integer))"),
                {"space": LOCK_SPACE, "key": _key(kind, key)},
            )
        except DBAPIError:
            self._lost()
            return False
        return bool(taken)

    def _release(self, kind: Claim, key: int) -> None:
        if self._connection is None:
            return  # the session is gone, and the lock with it
        try:
            self._connection.execute(
                text("SELECT pg_advisory_unlock(CAST(:space AS integer), CAST(:key AS integer))"),
                {"space": LOCK_SPACE, "key": _key(kind, key)},
            )
        except DBAPIError:
            self._lost()  # the session is gone, and the lock with it

    def _alive(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
        except DBAPIError:
            self._lost()
            return False
        return True

    def _lost(self) -> None:
        if self._connection is not None:
            self._connection.invalidate()
            self._connection.close()
            self._connection = None


def _key(kind: Claim, key: int) -> int:
    """The advisory lock's second key (an int4): the kind in the top bits, the id below."""
    if not 0 <= key < 1 << 29:
        raise ValueError(f"cannot claim {kind.name.lower()} {key}: id out of range")
    return (int(kind) << 29) | key

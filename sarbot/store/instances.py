"""How many ``sarbot run`` instances share one state database, and who does what.

SQLite (the default) serves one instance: ``Alone`` (``sarbot.store.alone``)
takes an exclusive lock on a file beside the database when the daemon starts,
and a second ``sarbot run`` against the same database refuses to start, naming
the first one's process.

PostgreSQL serves two or more instances (docs/deployment.md): ``Shared`` keeps
one connection of its own and takes PostgreSQL *session advisory locks* on it:

- the mailbox lock: the one instance holding it reads the mailbox and does the
  work that must happen once (expiry, reminders, operators' notices, retention);
  the others try for it every cycle, so when its holder dies (PostgreSQL ends
  its session, and with it the lock) another takes over within
  ``FOLLOW_INTERVAL`` plus the time PostgreSQL needs to see the session gone;
- a claim per request, or per message without a request: collection,
  packaging and delivery of one request happen in one instance at a time.

An instance with nothing to do waits for the reader to announce work
(``sarbot.store.announcements``), at most ``FOLLOW_INTERVAL``.

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

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from enum import IntEnum
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot.store.alone import Alone, instance_name
from sarbot.store.announcements import Listener, announce_on, discard

FOLLOW_INTERVAL = 2.0
"""Seconds between tries for the mailbox lock (and for work) by an instance not holding it."""
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
"""The coordination session's TCP keepalives: a holder whose host vanished is seen gone in ~11 s."""
SETTLE_SECONDS = 3600.0
"""A file in the export folder younger than this may belong to another instance's packaging."""

LOCK_SPACE = 0x5A_B0_70
"""The first key of every sarbot advisory lock is this plus the kind locked; the second, its id."""


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

    def give_up_mailbox(self, reason: str) -> None:
        """Let another instance read the mailbox: this one cannot (``reason`` says why)."""

    def claim(self, kind: Claim, key: int) -> AbstractContextManager[bool]:
        """A context: True inside it if this instance holds the claim, False if another does."""

    def still_holds(self, kind: Claim, key: int) -> bool:
        """Whether this instance still holds that claim (asked before a message is sent and
        before a collection's findings are kept)."""

    def held_elsewhere(self, session: Session, kind: Claim, key: int) -> bool:
        """Asked by an operator's command in its transaction: whether a daemon may be at
        work on that claim now.  Where it can, the answer holds until the transaction ends
        (no instance takes the claim meanwhile)."""

    def announce(self) -> None:
        """Tell the other instances (if any) that there may be work for them now."""

    def wait_for_work(self, timeout: float, stop: threading.Event) -> bool:
        """Wait until another instance announces work, ``stop`` is set or ``timeout`` passes;
        True if work was announced (since the last wait, too)."""


def instances_for(engine: Engine, log: FilteringBoundLogger) -> Instances:
    """``Shared`` on PostgreSQL, ``Alone`` on anything else."""
    if engine.dialect.name == "postgresql":
        return Shared(engine, log)
    return Alone(engine)


class Shared:
    """One of several instances on PostgreSQL, coordinated by advisory locks.

    Every lock lives as long as the session that took it.  When the session
    breaks, a new one is opened at the next try, but it holds none of the old
    one's locks: each session gets a new ``generation``, and a lock counts as
    held only while the generation it was taken in is the current one.
    """

    shared = True

    def __init__(self, engine: Engine, log: FilteringBoundLogger) -> None:
        self.name = instance_name()
        self._engine = engine
        self._log = log.bind(instance=self.name)
        self._connection: Connection | None = None
        self._generation = 0
        self._reading = False
        """Whether this session holds the mailbox lock (``_lost`` clears it with the session)."""
        self._claims: dict[tuple[Claim, int], tuple[int, int]] = {}
        """Each claim held: the generation of the session that took it, and how deeply nested."""
        self._listener = Listener(self._open, self._log, driver=engine.dialect.driver)
        """Listens for announcements of work; opened by ``start``, closed by a reader."""

    def start(self) -> None:
        self._session()
        self._listener.open()  # before the first look for work, so no announcement is missed

    def stop(self) -> None:
        self._listener.close()
        if self._connection is not None:
            with suppress(DBAPIError):  # at once: a closed session's locks go a moment later
                self._connection.execute(text("SELECT pg_advisory_unlock_all()"))
            discard(self._connection)
            self._connection = None
        self._claims.clear()
        if self._reading:
            self._reading = False
            self._log.info("instance.mailbox_released")

    def reads_mailbox(self) -> bool:
        # a broken session is seen (and let go) by _alive
        if not (self._reading and self._alive()) and self._try(Claim.MAILBOX, 0):
            self._reading = True
            self._log.info("instance.mailbox_taken")
        if self._reading:
            # The reader waits on the mailbox, never for announcements (its own): unread,
            # they would pile up on the connection and hold back the server's queue.
            self._listener.close()
        return self._reading

    def give_up_mailbox(self, reason: str) -> None:
        if not self._reading:
            return
        self._release(Claim.MAILBOX, 0)
        self._reading = False
        self._log.warning("instance.mailbox_given_up", reason=reason)

    @contextmanager
    def claim(self, kind: Claim, key: int) -> Iterator[bool]:
        """Claims nest within this instance (delivery runs beside collection): the lock is
        taken by the outermost claim and given up when the last one ends."""
        held = self._enter(kind, key)
        try:
            yield held
        finally:
            if held:
                self._leave(kind, key)

    def still_holds(self, kind: Claim, key: int) -> bool:
        """Held in the current session (a claim from a session that broke is not, even after
        reconnecting), and that session still alive."""
        entry = self._claims.get((kind, key))
        return entry is not None and entry[0] == self._generation and self._alive()

    def held_elsewhere(self, session: Session, kind: Claim, key: int) -> bool:
        """Whether another session holds the claim.  If none does, the operator's transaction
        takes it (``pg_try_advisory_xact_lock``) until it ends, so no instance starts work
        under it meanwhile."""
        space, second = _keys(kind, key)
        taken = session.scalar(
            text(
                "SELECT pg_try_advisory_xact_lock(CAST(:space AS integer), CAST(:key AS integer))"
            ),
            {"space": space, "key": second},
        )
        return not taken

    def announce(self) -> None:
        """Best effort: an error lets the session go only if it broke (with it, the locks)."""
        try:
            announce_on(self._session())
        except DBAPIError as exc:
            self._log.warning("instance.announce_failed", error_type=type(exc).__name__)
            if exc.connection_invalidated:
                self._lost()
            else:
                self._alive()  # lets the session go if it broke

    def wait_for_work(self, timeout: float, stop: threading.Event) -> bool:
        """The reader never listens (its own announcements would pile up unread): it, and an
        instance whose listening connection broke or cannot be opened yet, waits out
        ``timeout``."""
        if self._reading:
            stop.wait(timeout)
            return False
        return self._listener.wait(timeout, stop)

    def _enter(self, kind: Claim, key: int) -> bool:
        entry = self._claims.get((kind, key))
        if entry is not None:
            generation, depth = entry
            if generation != self._generation:
                return False  # held by a session now gone, and its work is still winding up
            self._claims[kind, key] = (generation, depth + 1)
            return True
        if not self._try(kind, key):
            return False
        self._claims[kind, key] = (self._generation, 1)
        return True

    def _leave(self, kind: Claim, key: int) -> None:
        entry = self._claims.pop((kind, key), None)
        if entry is None:
            return  # stop() gave up every lock meanwhile
        generation, depth = entry
        if depth > 1:
            self._claims[kind, key] = (generation, depth - 1)
        elif generation == self._generation:
            self._release(kind, key)

    # -- the coordination session ----------------------------------------------------------

    def _session(self) -> Connection:
        if self._connection is None:
            self._connection = self._open()
            self._generation += 1
        return self._connection

    def _open(self) -> Connection:
        """A connection of this instance's own, each statement committed at once, whose
        session PostgreSQL ends soon after its host vanished, and which sees as soon the
        server vanish (``KEEPALIVE``, on both sides: the listening one only ever waits)."""
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            for setting, value in KEEPALIVE.items():
                connection.execute(text(f"SET {setting} = {int(value)}"))
            fileno = getattr(connection.connection.driver_connection, "fileno", None)
            if fileno is not None:
                _keep_alive(fileno())
        except BaseException:
            discard(connection)
            raise
        return connection

    def _try(self, kind: Claim, key: int) -> bool:
        space, second = _keys(kind, key)
        try:
            taken = self._session().scalar(
                text("SELECT pg_try_advisory_lock(CAST(:space AS integer), CAST(:key AS integer))"),
                {"space": space, "key": second},
            )
        except DBAPIError:
            self._lost()
            return False
        return bool(taken)

    def _release(self, kind: Claim, key: int) -> None:
        if self._connection is None:
            return  # the session is gone, and the lock with it
        space, second = _keys(kind, key)
        try:
            self._connection.execute(
                text("SELECT pg_advisory_unlock(CAST(:space AS integer), CAST(:key AS integer))"),
                {"space": space, "key": second},
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
        """The session broke: every lock it held is gone (the next try opens a new one)."""
        if self._connection is not None:
            discard(self._connection)
            self._connection = None
        if self._reading:
            self._reading = False
            self._log.warning("instance.mailbox_lost")


def _keep_alive(fd: int) -> None:
    """TCP keepalives (``KEEPALIVE``) on this side of a connection's socket, and a bound on
    unacknowledged data as long, where the system has them (Linux has): best effort."""
    idle, interval, count = (
        KEEPALIVE[f"tcp_keepalives_{name}"] for name in ("idle", "interval", "count")
    )
    wanted = {
        "TCP_KEEPIDLE": idle,
        "TCP_KEEPINTVL": interval,
        "TCP_KEEPCNT": count,
        "TCP_USER_TIMEOUT": (idle + interval * count) * 1000,
    }
    options = {
        getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)
    }
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix socket
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in options.items():
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _keys(kind: Claim, key: int) -> tuple[int, int]:
    """The advisory lock's two int4 keys: sarbot's space plus the kind, and the row's id."""
    if not 0 <= key < 1 << 31:
        raise ValueError(f"cannot claim {kind.name.lower()} {key}: id out of range")
    return LOCK_SPACE + int(kind), key

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

An instance with nothing to do waits for an announcement of work: the reader
sends one (``NOTIFY sarbot_work``) each time it takes in a mail that gives the
others something to do, and each of the others listens on a connection of its
own (the reader does not listen).  The announcement only wakes an instance
early: it looks for work every ``FOLLOW_INTERVAL`` all the same, so one lost (or
a listening connection that broke) costs at most that long.

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
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, Protocol, cast

import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot.errors import ConfigError

FOLLOW_INTERVAL = 2.0
"""Seconds between tries for the mailbox lock (and for work) by an instance not holding it."""
WORK_CHANNEL = "sarbot_work"
"""The PostgreSQL notification channel on which work is announced to the other instances."""
STOP_CHECK = 0.2
"""Seconds between looks at the stop event while waiting for an announcement."""
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
            _lock_soon(handle)
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

    def give_up_mailbox(self, reason: str) -> None:
        pass  # no other instance could take it

    @contextmanager
    def claim(self, kind: Claim, key: int) -> Iterator[bool]:
        yield True

    def still_holds(self, kind: Claim, key: int) -> bool:
        return True

    def held_elsewhere(self, session: Session, kind: Claim, key: int) -> bool:
        """Whether a daemon runs on this database (the only one that could work on anything):
        this process, or the one holding the lock file.  The test takes a shared lock for an
        instant; a daemon starting in that instant tries again (``start``)."""
        if self._lock is not None:
            return True
        path = self.lock_path
        if path is None or not path.exists():
            return False
        with path.open("r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False  # closing the file gave the shared lock up

    def announce(self) -> None:
        pass  # no other instance to tell

    def wait_for_work(self, timeout: float, stop: threading.Event) -> bool:
        stop.wait(timeout)
        return False


class Shared:
    """One of several instances on PostgreSQL, coordinated by advisory locks.

    Every lock lives as long as the session that took it.  When the session
    breaks, a new one is opened at the next try, but it holds none of the old
    one's locks: each session gets a new ``generation``, and a lock counts as
    held only while the generation it was taken in is the current one.
    """

    shared = True

    def __init__(self, engine: Engine, log: FilteringBoundLogger) -> None:
        self.name = _name()
        self._engine = engine
        self._log = log.bind(instance=self.name)
        self._connection: Connection | None = None
        self._generation = 0
        self._reading = False
        """Whether this session holds the mailbox lock (``_lost`` clears it with the session)."""
        self._claims: dict[tuple[Claim, int], tuple[int, int]] = {}
        """Each claim held: the generation of the session that took it, and how deeply nested."""
        self._listening: Connection | None = None
        """The connection that listens for announcements of work (opened by ``start``)."""

    def start(self) -> None:
        self._session()
        self._listener()  # before the first look for work, so no announcement is missed

    def stop(self) -> None:
        self._stop_listening()
        if self._connection is not None:
            with suppress(DBAPIError):  # at once: a closed session's locks go a moment later
                self._connection.execute(text("SELECT pg_advisory_unlock_all()"))
            _discard(self._connection)
            self._connection = None
        self._claims.clear()
        if self._reading:
            self._reading = False
            self._log.info("instance.mailbox_released")

    def reads_mailbox(self) -> bool:
        if self._reading and self._alive():  # a broken session is seen (and let go) here
            return True
        if self._try(Claim.MAILBOX, 0):
            self._reading = True
            self._log.info("instance.mailbox_taken")
            # The reader waits on the mailbox, never for announcements (its own): unread,
            # they would pile up on the connection and hold back the server's queue.
            self._stop_listening()
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
        """A notification on ``WORK_CHANNEL``, sent at once (the session commits every
        statement); an instance that is not listening just finds the work later."""
        try:
            self._session().execute(
                text("SELECT pg_notify(:channel, '')"), {"channel": WORK_CHANNEL}
            )
        except DBAPIError:
            self._lost()

    def wait_for_work(self, timeout: float, stop: threading.Event) -> bool:
        """Announcements that came while this instance was busy are kept by the driver and
        end the wait at once (all of them: one look for work answers them all).  Without a
        listening connection (it broke, or cannot be opened), this waits out ``timeout``."""
        deadline = time.monotonic() + timeout
        listening = self._listener()
        if listening is None:
            stop.wait(timeout)
            return False
        driver = cast("psycopg.Connection[Any]", listening.connection.driver_connection)
        try:
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                # closed before the next: each holds the connection's lock while open
                with closing(driver.notifies(timeout=min(left, STOP_CHECK))) as received:
                    announced = next(received, None) is not None
                if announced:
                    for _ in driver.notifies(timeout=0):
                        pass  # the others that came with it
                    return True
        except psycopg.Error as exc:
            self._log.warning("instance.listening_failed", error_type=type(exc).__name__)
            self._stop_listening()
            stop.wait(max(0.0, deadline - time.monotonic()))
        return False

    def _listener(self) -> Connection | None:
        """The listening connection, opened (and ``LISTEN`` sent) if there is none."""
        if self._listening is None:
            try:
                connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            except DBAPIError as exc:
                self._log.warning("instance.listening_failed", error_type=type(exc).__name__)
                return None
            try:
                connection.execute(text(f"LISTEN {WORK_CHANNEL}"))
            except DBAPIError as exc:
                self._log.warning("instance.listening_failed", error_type=type(exc).__name__)
                _discard(connection)
                return None
            self._listening = connection
        return self._listening

    def _stop_listening(self) -> None:
        if self._listening is not None:
            _discard(self._listening)
            self._listening = None

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
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            for setting, value in KEEPALIVE.items():
                connection.execute(text(f"SET {setting} = {int(value)}"))
            self._connection = connection
            self._generation += 1
        return self._connection

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
            _discard(self._connection)
            self._connection = None
        if self._reading:
            self._reading = False
            self._log.warning("instance.mailbox_lost")


def _discard(connection: Connection) -> None:
    """Close a connection for good: never back to the pool, where its session (its locks,
    its ``LISTEN``) would live on."""
    connection.invalidate()
    connection.close()


def _lock_soon(handle: IO[str], tries: int = 10) -> None:
    """An exclusive lock on the file, tried for about a second: an operator's command may
    hold a shared one for an instant (``Alone.held_elsewhere``)."""
    for _ in range(tries - 1):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.1)
        else:
            return
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _keys(kind: Claim, key: int) -> tuple[int, int]:
    """The advisory lock's two int4 keys: sarbot's space plus the kind, and the row's id."""
    if not 0 <= key < 1 << 31:
        raise ValueError(f"cannot claim {kind.name.lower()} {key}: id out of range")
    return LOCK_SPACE + int(kind), key

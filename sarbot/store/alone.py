"""The only instance on its state database: SQLite's (or any but PostgreSQL's).

``Alone`` takes an exclusive lock on a file beside the database when the daemon
starts, and a second ``sarbot run`` against the same database refuses to start,
naming the first one's process.  Every claim is its own (its kinds do not
matter here), and there is nobody to announce work to.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from sarbot.errors import ConfigError


def instance_name() -> str:
    """How an instance is named in logs and in the lock file: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Alone:
    """The only instance: it does everything, and a second one on SQLite refuses to start."""

    shared = False

    def __init__(self, engine: Engine) -> None:
        self.name = instance_name()
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
    def claim(self, kind: int, key: int) -> Iterator[bool]:
        yield True

    def still_holds(self, kind: int, key: int) -> bool:
        return True

    def held_elsewhere(self, session: Session, kind: int, key: int) -> bool:
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

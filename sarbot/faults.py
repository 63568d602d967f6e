"""Named crash points: places where a test can kill sarbot at a well-chosen moment.

``point(name)`` does nothing unless the environment variable ``SARBOT_CRASH_AT``
names that point.  ``SARBOT_CRASH_AT=deliver.accepted`` kills the process the
first time it passes ``deliver.accepted``; ``deliver.accepted:3`` the third
time.  The kill is a real SIGKILL: no handler, ``finally`` or ``atexit`` runs,
exactly as when an operator or the kernel kills the daemon.

The points sarbot passes:

* ``intake.before_commit``: a request or reply was fetched and decided; its
  transaction has not committed.
* ``intake.moved``: handled mails were moved to the processed folder; the
  database does not know yet.
* ``package.partial``: an export message is being written to its temporary
  file, neither synced nor renamed.
* ``deliver.accepted``: the SMTP server accepted a message; the outbox still
  says it is pending.
* ``migration``: one schema migration was applied, in the transaction of the
  whole upgrade, which has not committed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENVIRONMENT_VARIABLE = "SARBOT_CRASH_AT"


class CrashPoints:
    """The crash point a process is armed with, and how often each point was passed.

    One object per process (``sarbot.app`` makes it from the environment and hands
    it to whatever passes a point); ``CrashPoints()`` is armed with nothing.
    """

    def __init__(self, armed: tuple[str, int] | None = None) -> None:
        self.armed = armed
        self._passes: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> CrashPoints:
        """Armed as ``SARBOT_CRASH_AT`` says: ``point`` or ``point:n`` (the n-th pass)."""
        wanted = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if not wanted:
            return cls()
        name, _, nth = wanted.partition(":")
        count = int(nth) if nth.strip().isdigit() else 1
        return cls((name.strip(), max(count, 1)))

    def point(self, name: str) -> None:
        """Kill this process with SIGKILL if it is armed with this point for this pass."""
        if self.armed is None or self.armed[0] != name:
            return
        with self._lock:
            self._passes[name] += 1
            due = self._passes[name] == self.armed[1]
        if due:
            os.kill(os.getpid(), signal.SIGKILL)

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

_passes: Counter[str] = Counter()
_lock = threading.Lock()


def armed() -> tuple[str, int] | None:
    """The point and the pass the environment asks to crash at, or None."""
    wanted = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not wanted:
        return None
    name, _, nth = wanted.partition(":")
    count = int(nth) if nth.strip().isdigit() else 1
    return name.strip(), max(count, 1)


def point(name: str) -> None:
    """Kill this process with SIGKILL if the environment arms this point for this pass."""
    target = armed()
    if target is None or target[0] != name:
        return
    with _lock:
        _passes[name] += 1
        due = _passes[name] == target[1]
    if due:
        os.kill(os.getpid(), signal.SIGKILL)

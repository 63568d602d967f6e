"""sarbot's own mail logins that fail now, and why: one record for the logs, the operators'
notice, the metrics and ``/healthz``.

The daemon reports the mailbox's IMAP login and the deliver step the SMTP login.  Only
logins by token are watched: their failures (a revoked grant, a wrong tenant, a missing
permission) need an administrator, while a password login's trouble shows as before.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime

from structlog.typing import FilteringBoundLogger

from sarbot.mail.oauth import OAuthError

LOGINS = ("imap", "smtp")


@dataclass(frozen=True)
class LoginTrouble:
    login: str
    """``imap`` (the watched mailbox) or ``smtp``."""
    cause: str
    """The OAuthError's cause: ``grant``, ``client``, ``permission``, ``tenant``, ..."""
    reason: str
    """What to do about it, in an admin's words; never a token."""
    since: datetime
    failures: int


class LoginWatch:
    """The logins failing now; each failure and each recovery is logged here.

    One per process (``App.logins``), so that runs of the daemon in one process share it.
    """

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._troubles: dict[str, LoginTrouble] = {}

    def failed(self, login: str, error: OAuthError, *, at: datetime) -> LoginTrouble:
        with self._lock:
            before = self._troubles.get(login)
            if before is None:
                trouble = LoginTrouble(login, error.cause, str(error), at, 1)
            else:
                trouble = replace(
                    before, cause=error.cause, reason=str(error), failures=before.failures + 1
                )
            self._troubles[login] = trouble
        self.log.warning(
            "mailbox.login_failed",
            login=login,
            cause=trouble.cause,
            reason=trouble.reason,
            failures=trouble.failures,
        )
        return trouble

    def worked(self, login: str, *, at: datetime) -> None:
        with self._lock:
            trouble = self._troubles.pop(login, None)
        if trouble is not None:
            failed_for = (at - trouble.since).total_seconds()
            self.log.info("mailbox.login_restored", login=login, failed_for=round(failed_for))

    def troubles(self) -> list[LoginTrouble]:
        with self._lock:
            return [self._troubles[login] for login in LOGINS if login in self._troubles]

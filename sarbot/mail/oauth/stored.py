"""A user's grant: the refresh token kept where the config points (a file or a variable)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

from sarbot.faults import CrashPoints
from sarbot.mail.oauth.errors import OAuthError
from sarbot.oauth_settings import StoredToken
from sarbot.store.exports import write_private_file


def read_stored(where: StoredToken) -> str | None:
    """The refresh token kept at ``where``, or None if none is stored there yet."""
    if where.env is not None:
        value = os.environ.get(where.env, "")
    else:
        try:
            value = Path(str(where.file)).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OAuthError(f"cannot read the refresh token's {where}: {exc.strerror}") from None
    return value.strip() or None


def store(where: StoredToken, token: str) -> None:
    """Keep a refresh token at ``where``: a file, written atomically with mode 0600."""
    if where.file is None:
        raise OAuthError(
            f"sarbot cannot store a refresh token in an {where}: point refresh_token at a "
            'file ({ file = "PATH" }) instead',
            "grant",
        )
    try:
        write_private_file(where.file, (token + "\n").encode(), CrashPoints())
    except OSError as exc:
        raise OAuthError(f"cannot write the refresh token's {where}: {exc.strerror}") from None


class RefreshToken:
    """A refresh token read from where the config points, each time one is needed.

    A rotated token the provider returns replaces it, and is written back to a file; a new
    grant stored there (``sarbot auth login``) is taken up at the next refresh.  There is one
    per place (:func:`refresh_token`), and :attr:`lock` is held from reading the token to
    storing its successor, so that the IMAP and SMTP logins sharing a grant never spend one
    token twice.
    """

    def __init__(self, where: StoredToken) -> None:
        self.where = where
        self.lock = threading.RLock()
        self._stored: str | None = None
        self._current: str | None = None

    def get(self) -> str:
        stored = read_stored(self.where)
        if stored != self._stored:  # a new grant was stored, or this is the first read
            self._stored = self._current = stored
        if not self._current:
            raise OAuthError(
                f"no refresh token is stored in the {self.where}: run sarbot auth login", "grant"
            )
        return self._current

    def rotated(self, token: str | None) -> None:
        """The provider gave a new refresh token: keep it, and write it where the old one was.

        A token that cannot be written is still used from memory; the failure is logged, as
        it is lost at a restart.
        """
        if not token or token == self._current:
            return
        self._current = token
        if self.where.file is None:
            return
        try:
            store(self.where, token)
        except OAuthError as exc:
            structlog.get_logger("sarbot").error("oauth.token_not_stored", reason=str(exc))
            return
        self._stored = token

    def __repr__(self) -> str:
        return f"RefreshToken({self.where})"


_KEPT: dict[StoredToken, RefreshToken] = {}
_KEPT_LOCK = threading.Lock()


def refresh_token(where: StoredToken) -> RefreshToken:
    """The one RefreshToken of this place in this process."""
    with _KEPT_LOCK:
        kept = _KEPT.get(where)
        if kept is None:
            kept = _KEPT[where] = RefreshToken(where)
        return kept

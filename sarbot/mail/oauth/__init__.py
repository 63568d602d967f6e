"""Access tokens for OAuth 2.0 logins to IMAP and SMTP: got once, kept in memory, refreshed early.

A :class:`TokenSource` is built once per login's settings (:func:`token_source`) from its
``oauth2`` table: Microsoft through msal, Google through google-auth, any other provider
through authlib (``providers``). A user's refresh token is read from where the config points
and a rotated one written back (``stored``). Tokens never leave memory and never appear in
errors or logs; every failure is an :class:`OAuthError` saying what an administrator can do
about it (``errors``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sarbot.mail.oauth.errors import OAuthError, describe, refused_by_server
from sarbot.mail.oauth.providers import Fetch, fetcher
from sarbot.oauth_settings import OAuth2Settings

__all__ = [
    "OAuthError",
    "TokenSource",
    "build_token_source",
    "describe",
    "oauthbearer_string",
    "refused_by_server",
    "token_source",
]

REFRESH_EARLY = 300.0
"""Seconds before its expiry that a token is replaced."""
DEFAULT_LIFETIME = 3600.0
"""A token's lifetime when the provider does not say."""


class TokenSource:
    """The current access token of one login, refreshed ``early`` seconds before it expires."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        early: float = REFRESH_EARLY,
        clock: Callable[[], float] = time.monotonic,
        mechanism: str = "xoauth2",
    ) -> None:
        self._fetch = fetch
        self._early = early
        self._clock = clock
        self.mechanism = mechanism
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def token(self) -> str:
        """A token good for at least ``early`` seconds more (unless it lives less than that)."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires - self._early:
                token, lifetime = self._fetch()
                self._token = token
                self._expires = now + (lifetime if lifetime > 0 else DEFAULT_LIFETIME)
            return self._token

    def invalidate(self) -> None:
        """Forget the token: the server refused it, so the next :meth:`token` gets a new one."""
        with self._lock:
            self._token = None
            self._expires = 0.0

    def __repr__(self) -> str:
        return f"TokenSource(mechanism={self.mechanism!r})"


_SOURCES: dict[tuple[OAuth2Settings, str], TokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def token_source(settings: OAuth2Settings, username: str) -> TokenSource:
    """The one token source of these settings and mailbox, built at its first use."""
    key = (settings, username)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            source = _SOURCES[key] = build_token_source(settings)
        return source


def build_token_source(settings: OAuth2Settings) -> TokenSource:
    """A new token source (nothing is fetched until the first :meth:`TokenSource.token`)."""
    return TokenSource(fetcher(settings), mechanism=settings.mechanism)


def oauthbearer_string(username: str, token: str) -> str:
    """The SASL OAUTHBEARER initial response (RFC 7628)."""
    return f"n,a={username},\1auth=Bearer {token}\1\1"

"""Access tokens for OAuth 2.0 logins to IMAP and SMTP: got once, kept in memory, refreshed early.

A :class:`TokenSource` is built once per login's settings (:func:`token_source`) from its
``oauth2`` table: Microsoft through msal, Google through google-auth, any other provider
through authlib. Tokens never leave memory and never appear in errors or logs; every failure
is an :class:`OAuthError` saying what an administrator can do about it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msal
import requests
from authlib.integrations.requests_client import OAuth2Session
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request
from google.oauth2 import credentials, service_account

from sarbot.errors import MailboxError
from sarbot.oauth_settings import OAuth2Settings

REFRESH_EARLY = 300.0
"""Seconds before its expiry that a token is replaced."""
DEFAULT_LIFETIME = 3600.0
"""A token's lifetime when the provider does not say."""
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)

Fetch = Callable[[], tuple[str, float]]
"""Gets a new access token: (token, seconds it lives)."""


class OAuthError(MailboxError):
    """An access token could not be got; the message says why, in words an admin can act on."""


HINTS = {
    "invalid_grant": "the grant was revoked or expired: run sarbot auth login",
    "invalid_client": (
        "the provider refused the client's credentials (invalid_client): check client_id and "
        "client_secret or the certificate"
    ),
    "unauthorized_client": (
        "the client may not use this grant or act for this mailbox (unauthorized_client): "
        "check the app's permissions and consent"
    ),
    "invalid_scope": "the provider refused the scopes asked for (invalid_scope): check scopes",
    "unsupported_grant_type": "the provider does not offer this grant (unsupported_grant_type)",
}


def describe(error: str, description: str = "") -> str:
    """An admin's words for an RFC 6749 error code."""
    hint = HINTS.get(error, f"the provider refused the token request ({error or 'no reason'})")
    first_line = description.strip().splitlines()[0] if description.strip() else ""
    return f"{hint}: {first_line[:200]}" if first_line else hint


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
            source = _SOURCES[key] = build_token_source(settings, username)
        return source


def build_token_source(settings: OAuth2Settings, username: str) -> TokenSource:
    """A new token source (nothing is fetched until the first :meth:`TokenSource.token`)."""
    builders = {"microsoft": _microsoft, "google": _google, "generic": _generic}
    fetch = builders[settings.provider](settings, username)
    return TokenSource(_guarded(fetch, settings), mechanism=settings.mechanism)


def http_session(settings: OAuth2Settings) -> requests.Session:
    """A session that trusts ``ca_file`` (or the system's CAs) and ignores proxy variables."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(settings.ca_file) if settings.ca_file else True
    return session


def _endpoint(settings: OAuth2Settings) -> str:
    if settings.provider == "microsoft":
        return settings.microsoft_authority
    return settings.token_url or GOOGLE_TOKEN_URL


def _guarded(fetch: Fetch, settings: OAuth2Settings) -> Fetch:
    """``fetch``, with every failure an OAuthError naming its cause and never a token."""

    def guarded() -> tuple[str, float]:
        where = _endpoint(settings)
        try:
            return fetch()
        except OAuthError:
            raise
        except requests.exceptions.SSLError:
            raise OAuthError(
                f"the token endpoint {where} failed the TLS check: check ca_file"
            ) from None
        except (requests.ConnectionError, requests.Timeout, OSError):
            raise OAuthError(f"the token endpoint {where} is unreachable") from None
        except Exception as exc:
            raise _library_error(exc, settings) from None

    return guarded


def _library_error(exc: Exception, settings: OAuth2Settings) -> OAuthError:
    """An OAuthError for what msal, google-auth or authlib raised."""
    error = str(getattr(exc, "error", "") or "")
    if error:  # authlib's OAuthError: .error and .description
        return OAuthError(describe(error, str(getattr(exc, "description", "") or "")))
    if isinstance(exc, TransportError):
        return OAuthError(f"the token endpoint {_endpoint(settings)} is unreachable")
    if isinstance(exc, RefreshError):
        details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        code = str(details.get("error", ""))
        if not code:
            text = str(exc.args[0]) if exc.args else ""
            code = next((name for name in HINTS if name in text), "")
        return OAuthError(describe(code, str(details.get("error_description", ""))))
    if settings.provider == "microsoft" and isinstance(exc, ValueError):
        return OAuthError(
            f"unknown tenant or authority {settings.microsoft_authority}: check tenant or authority"
        )
    return OAuthError(f"getting an access token failed ({type(exc).__name__})")


def _secret(value: Any) -> str:
    return str(value.get_secret_value()) if value is not None else ""


def _microsoft(settings: OAuth2Settings, username: str) -> Fetch:
    credential: Any
    if settings.certificate is not None:
        credential = {
            "private_key": _secret(settings.certificate_key),
            "public_certificate": _secret(settings.certificate),
        }
    else:
        credential = _secret(settings.client_secret)
    options: dict[str, Any] = {"authority": settings.microsoft_authority}
    if settings.authority is not None:
        options.update(validate_authority=False, instance_discovery=False)
    scopes = list(settings.effective_scopes)
    holder: dict[str, Any] = {}
    refresh = {"token": _secret(settings.refresh_token)}

    def app() -> Any:
        if "app" not in holder:  # built at the first fetch: it reads the authority's metadata
            holder["app"] = msal.ConfidentialClientApplication(
                settings.client_id,
                client_credential=credential,
                http_client=http_session(settings),
                timeout=settings.timeout,
                **options,
            )
        return holder["app"]

    def fetch() -> tuple[str, float]:
        application = app()
        cache = application.token_cache
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)  # the source keeps the token; a fetch always gets a new one
        if refresh["token"]:
            result = application.acquire_token_by_refresh_token(refresh["token"], scopes=scopes)
            refresh["token"] = result.get("refresh_token") or refresh["token"]
        else:
            result = application.acquire_token_for_client(scopes=scopes)
        if "access_token" not in result:
            raise OAuthError(
                describe(str(result.get("error", "")), str(result.get("error_description", "")))
            )
        return str(result["access_token"]), float(result.get("expires_in") or 0)

    return fetch


def _google(settings: OAuth2Settings, username: str) -> Fetch:
    scopes = list(settings.effective_scopes)
    creds: Any
    if settings.service_account_file is not None:
        info = _service_account_info(settings.service_account_file)
        if settings.token_url:
            info["token_uri"] = settings.token_url
        account: Any = service_account.Credentials
        creds = account.from_service_account_info(info, scopes=scopes).with_subject(
            settings.subject
        )
    else:
        user: Any = credentials.Credentials
        creds = user(
            token=None,
            refresh_token=_secret(settings.refresh_token),
            token_uri=settings.token_url or GOOGLE_TOKEN_URL,
            client_id=settings.client_id,
            client_secret=_secret(settings.client_secret),
            scopes=scopes,
        )
    transport = Request(http_session(settings))

    def fetch() -> tuple[str, float]:
        creds.refresh(transport)
        expiry = creds.expiry
        lifetime = 0.0
        if expiry is not None:  # google-auth's expiry is naive UTC
            lifetime = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        return str(creds.token), max(lifetime, 1.0)

    return fetch


def _service_account_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OAuthError(f"cannot read service_account_file {path}: {exc.strerror}") from None
    except ValueError:
        raise OAuthError(f"service_account_file {path} is not a JSON key file") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise OAuthError(f"service_account_file {path} is not a service account's key file")
    return info


def _generic(settings: OAuth2Settings, username: str) -> Fetch:
    secret = _secret(settings.client_secret)
    session = OAuth2Session(
        settings.client_id,
        secret or None,
        scope=" ".join(settings.effective_scopes) or None,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
    )
    session.trust_env = False
    session.verify = str(settings.ca_file) if settings.ca_file else True
    url = str(settings.token_url)
    refresh = {"token": _secret(settings.refresh_token)}

    def fetch() -> tuple[str, float]:
        if refresh["token"]:
            answer = session.refresh_token(
                url, refresh_token=refresh["token"], timeout=settings.timeout
            )
            refresh["token"] = answer.get("refresh_token") or refresh["token"]  # rotated
        else:
            answer = session.fetch_token(
                url, grant_type="client_credentials", timeout=settings.timeout
            )
        if "access_token" not in answer:
            raise OAuthError(describe(str(answer.get("error", ""))))
        return str(answer["access_token"]), float(answer.get("expires_in") or 0)

    return fetch


def xoauth2_string(username: str, token: str) -> str:
    """The SASL XOAUTH2 initial response."""
    return f"user={username}\1auth=Bearer {token}\1\1"


def oauthbearer_string(username: str, token: str) -> str:
    """The SASL OAUTHBEARER initial response (RFC 7628)."""
    return f"n,a={username},\1auth=Bearer {token}\1\1"

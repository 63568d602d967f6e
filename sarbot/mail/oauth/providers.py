"""Getting an access token from each provider: msal for Microsoft, google-auth for Google,
authlib for any other token endpoint.  :func:`fetcher` is the one entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msal
import requests
from authlib.integrations.requests_client import OAuth2Session
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request
from google.oauth2 import credentials, service_account

from sarbot.mail.oauth.errors import HINTS, OAuthError, checked, describe
from sarbot.mail.oauth.stored import RefreshToken, refresh_token
from sarbot.oauth_settings import OAuth2Settings

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)

T = TypeVar("T")
Fetch = Callable[[], tuple[str, float]]
"""Gets a new access token: (token, seconds it lives)."""


def fetcher(settings: OAuth2Settings) -> Fetch:
    """How the token of these settings is got; every failure an OAuthError."""
    builders = {"microsoft": _microsoft, "google": _google, "generic": _generic}
    if settings.refresh_token is None:
        return guarded(builders[settings.provider](settings, None), settings)
    kept = refresh_token(settings.refresh_token)
    fetch = builders[settings.provider](settings, kept)

    def one_at_a_time() -> tuple[str, float]:  # a grant shared by two logins is spent once
        with kept.lock:
            return fetch()

    return guarded(one_at_a_time, settings)


S = TypeVar("S", bound=requests.Session)


def trusting(session: S, settings: OAuth2Settings) -> S:
    """``session``, trusting ``ca_file`` (or the system's CAs) and ignoring proxy variables."""
    session.trust_env = False
    session.verify = str(settings.ca_file) if settings.ca_file else True
    return session


def http_session(settings: OAuth2Settings) -> requests.Session:
    """A plain session for the token endpoint (``trusting``)."""
    return trusting(requests.Session(), settings)


def _endpoint(settings: OAuth2Settings) -> str:
    if settings.provider == "microsoft":
        return settings.microsoft_authority
    return settings.token_url or GOOGLE_TOKEN_URL


def guarded(fetch: Callable[[], T], settings: OAuth2Settings) -> Callable[[], T]:
    """``fetch``, with every failure an OAuthError naming its cause and never a token."""

    def guarded_fetch() -> T:
        where = _endpoint(settings)
        try:
            return fetch()
        except OAuthError:
            raise
        except requests.exceptions.JSONDecodeError:  # an OSError too: before the next ones
            raise OAuthError(
                f"the token endpoint {where} did not answer in JSON: check the URLs", "provider"
            ) from None
        except requests.exceptions.SSLError:
            raise OAuthError(
                f"the token endpoint {where} failed the TLS check: check ca_file", "tls"
            ) from None
        except (requests.ConnectionError, requests.Timeout, OSError):
            raise OAuthError(f"the token endpoint {where} is unreachable", "unreachable") from None
        except Exception as exc:
            raise _library_error(exc, settings) from None

    return guarded_fetch


def _library_error(exc: Exception, settings: OAuth2Settings) -> OAuthError:
    """An OAuthError for what msal, google-auth or authlib raised."""
    error = str(getattr(exc, "error", "") or "")
    if error:  # authlib's OAuthError: .error and .description
        return describe(error, str(getattr(exc, "description", "") or ""))
    if isinstance(exc, TransportError):
        return OAuthError(f"the token endpoint {_endpoint(settings)} is unreachable", "unreachable")
    if isinstance(exc, RefreshError):
        details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        code = str(details.get("error", ""))
        if not code:
            text = str(exc.args[0]) if exc.args else ""
            code = next((name for name in HINTS if name in text), "")
        return describe(code, str(details.get("error_description", "")))
    if settings.provider == "microsoft" and "reserved" in str(exc):
        return OAuthError(
            "scopes names one that msal adds itself (openid, profile, offline_access): remove it",
            "permission",
        )
    if settings.provider == "microsoft" and isinstance(exc, ValueError):
        return OAuthError(
            f"unknown tenant or authority {settings.microsoft_authority}: check tenant or "
            "authority",
            "tenant",
        )
    return OAuthError(f"getting an access token failed ({type(exc).__name__})")


def _secret(value: Any) -> str:
    return str(value.get_secret_value()) if value is not None else ""


def msal_app(settings: OAuth2Settings) -> Any:
    """The msal application of these settings: a confidential client with the app's secret or
    certificate, or a public client (a mailbox user's grant)."""
    options: dict[str, Any] = {
        "authority": settings.microsoft_authority,
        "http_client": http_session(settings),
        "timeout": settings.timeout,
    }
    if settings.authority is not None:
        options.update(validate_authority=False, instance_discovery=False)
    if settings.public_client:
        return msal.PublicClientApplication(settings.client_id, **options)
    credential: Any = _secret(settings.client_secret)
    if settings.certificate is not None:
        credential = {
            "private_key": _secret(settings.certificate_key),
            "public_certificate": _secret(settings.certificate),
        }
    return msal.ConfidentialClientApplication(
        settings.client_id, client_credential=credential, **options
    )


def _microsoft(settings: OAuth2Settings, refresh: RefreshToken | None) -> Fetch:
    scopes = list(settings.effective_scopes)
    holder: dict[str, Any] = {}

    def fetch() -> tuple[str, float]:
        if "app" not in holder:  # built at the first fetch: it reads the authority's metadata
            holder["app"] = msal_app(settings)
        application = holder["app"]
        cache = application.token_cache
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)  # the source keeps the token; a fetch always gets a new one
        if refresh is not None:
            result = application.acquire_token_by_refresh_token(refresh.get(), scopes=scopes)
            refresh.rotated(result.get("refresh_token"))
        else:
            result = application.acquire_token_for_client(scopes=scopes)
        return checked(result)

    return fetch


def _google(settings: OAuth2Settings, refresh: RefreshToken | None) -> Fetch:
    scopes = list(settings.effective_scopes)
    transport = Request(http_session(settings))
    account: Any = None
    if settings.service_account_file is not None:
        info = _service_account_info(settings.service_account_file)
        if settings.token_url:
            info["token_uri"] = settings.token_url
        accounts: Any = service_account.Credentials
        account = accounts.from_service_account_info(info, scopes=scopes).with_subject(
            settings.subject
        )

    def fetch() -> tuple[str, float]:
        creds: Any = account
        if refresh is not None:
            user: Any = credentials.Credentials
            creds = user(
                token=None,
                refresh_token=refresh.get(),
                token_uri=settings.token_url or GOOGLE_TOKEN_URL,
                client_id=settings.client_id,
                client_secret=_secret(settings.client_secret),
                scopes=scopes,
            )
        creds.refresh(transport)
        if refresh is not None:
            refresh.rotated(creds.refresh_token)
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


def generic_session(settings: OAuth2Settings) -> OAuth2Session:
    """An authlib session for a generic provider's token endpoint."""
    secret = _secret(settings.client_secret)
    session = OAuth2Session(
        settings.client_id,
        secret or None,
        scope=" ".join(settings.effective_scopes) or None,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
    )
    return trusting(session, settings)


def _generic(settings: OAuth2Settings, refresh: RefreshToken | None) -> Fetch:
    session = generic_session(settings)
    url = str(settings.token_url)

    def fetch() -> tuple[str, float]:
        if refresh is not None:
            answer = session.refresh_token(
                url, refresh_token=refresh.get(), timeout=settings.timeout
            )
            refresh.rotated(answer.get("refresh_token"))
        else:
            answer = session.fetch_token(
                url, grant_type="client_credentials", timeout=settings.timeout
            )
        return checked(dict(answer))

    return fetch

"""The one-time consent behind ``sarbot auth login``: a mailbox user's grant, stored.

Microsoft (a public client) and generic providers use the device flow (RFC 8628): the
admin opens a URL anywhere and enters a code.  Google does not offer the mail scope to the
device flow, so it uses the installed-app flow of google-auth-oauthlib: a browser is sent
back to a listener on 127.0.0.1.  Either way the refresh token is written to the file
``refresh_token`` points at (mode 0600) and is never shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from authlib.integrations.base_client.errors import OAuthError as AuthlibError
from google_auth_oauthlib.flow import InstalledAppFlow

from sarbot.mail.oauth.errors import OAuthError, checked, describe
from sarbot.mail.oauth.providers import (
    GOOGLE_TOKEN_URL,
    generic_session,
    guarded,
    msal_app,
    trusting,
)
from sarbot.mail.oauth.stored import store
from sarbot.oauth_settings import OAuth2Settings, StoredToken

GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/auth"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"

Say = Callable[[str], None]


def needs_login(settings: OAuth2Settings) -> str | None:
    """Why ``sarbot auth login`` does not run with these settings, or None if it does."""
    if settings.refresh_token is None:
        if settings.provider == "google":
            return "a service account needs no login: its key file is the grant"
        return (
            "these settings use the app's own credentials (client credentials), which need no "
            "login; for a user's grant, set refresh_token"
        )
    if settings.provider == "microsoft" and not settings.public_client:
        return (
            "sarbot auth login signs in with a public client: remove client_secret and "
            "certificate (and allow public client flows on the app registration), or use the "
            "app's own access without refresh_token"
        )
    if settings.provider == "generic" and settings.device_authorization_url is None:
        return "provider 'generic' needs device_authorization_url for sarbot auth login"
    if settings.refresh_token.file is None:
        return (
            f"refresh_token is read from an {settings.refresh_token}, which sarbot cannot "
            'write: point it at a file ({ file = "PATH" }) for sarbot auth login'
        )
    return None


def login(settings: OAuth2Settings, *, say: Say, port: int = 0) -> StoredToken:
    """Run the consent, store the refresh token, and return where it was stored.

    ``port`` is the Google flow's loopback port (0: any free one).
    """
    refusal = needs_login(settings)
    if refusal is not None:
        raise OAuthError(refusal, "grant")
    where = settings.refresh_token
    assert where is not None  # needs_login said so
    flows = {"microsoft": _microsoft, "google": _google, "generic": _generic}
    token = guarded(lambda: flows[settings.provider](settings, say, port), settings)()
    store(where, token)
    return where


def _refresh_token(result: dict[str, Any]) -> str:
    """The refresh token of a token response."""
    checked(result)
    token = result.get("refresh_token")
    if not token:
        raise OAuthError(
            "the provider gave no refresh token: ask for offline access (the scope "
            "offline_access, or the client's settings)",
            "permission",
        )
    return str(token)


def _microsoft(settings: OAuth2Settings, say: Say, port: int) -> str:
    app = msal_app(settings)
    flow = app.initiate_device_flow(scopes=list(settings.effective_scopes))
    if "user_code" not in flow:
        raise describe(str(flow.get("error", "")), str(flow.get("error_description", "")))
    say(str(flow["message"]))
    return _refresh_token(app.acquire_token_by_device_flow(flow))


def _generic(settings: OAuth2Settings, say: Say, port: int) -> str:
    session = generic_session(settings)
    form = {"client_id": str(settings.client_id)}
    if settings.client_secret is not None:
        form["client_secret"] = settings.client_secret.get_secret_value()
    if settings.effective_scopes:
        form["scope"] = " ".join(settings.effective_scopes)
    answer = session.post(  # no token yet: withhold_token, or authlib refuses to send
        str(settings.device_authorization_url),
        data=form,
        timeout=settings.timeout,
        withhold_token=True,
    ).json()
    if "device_code" not in answer:
        raise describe(str(answer.get("error", "")), str(answer.get("error_description", "")))
    uri = answer.get("verification_uri_complete") or answer["verification_uri"]
    say(f"To sign in, open {uri} and enter the code {answer['user_code']}.")
    interval = float(answer.get("interval") or 5)
    deadline = time.monotonic() + float(answer.get("expires_in") or 600)
    while time.monotonic() < deadline:
        try:
            token = session.fetch_token(
                str(settings.token_url),
                grant_type=DEVICE_CODE,
                device_code=answer["device_code"],
                timeout=settings.timeout,
            )
        except AuthlibError as exc:
            if exc.error == "authorization_pending":
                time.sleep(interval)
                continue
            if exc.error == "slow_down":
                interval += 5
                time.sleep(interval)
                continue
            raise
        return _refresh_token(dict(token))
    raise OAuthError("nobody approved the sign-in in time: run sarbot auth login again", "grant")


def _google(settings: OAuth2Settings, say: Say, port: int) -> str:
    client = {
        "installed": {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.get_secret_value()
            if settings.client_secret
            else "",
            "auth_uri": settings.authorization_url or GOOGLE_AUTHORIZATION_URL,
            "token_uri": settings.token_url or GOOGLE_TOKEN_URL,
        }
    }
    flow = InstalledAppFlow.from_client_config(client, scopes=list(settings.effective_scopes))
    trusting(flow.oauth2session, settings)
    say(
        "To sign in, open the address below in a browser. It returns to 127.0.0.1 on this "
        "machine: from another one, forward the port (ssh -L PORT:127.0.0.1:PORT, with "
        "--port PORT)."
    )
    creds = flow.run_local_server(
        host="127.0.0.1",
        bind_addr="127.0.0.1",
        port=port,
        open_browser=False,
        authorization_prompt_message="{url}",
        success_message="Signed in: you can close this window and return to sarbot.",
        access_type="offline",
        prompt="consent",
        timeout_seconds=600,
    )
    if not creds.refresh_token:
        raise OAuthError("Google gave no refresh token: revoke the app's access, run again")
    return str(creds.refresh_token)

"""A browser's sign-in: GET /authorize (RFC 6749 4.1) for native apps (RFC 8252).

There is no one to sign in here: a client registered with ``auto_approve`` (one of its
users) is approved at once, as that user, and the browser is sent back to the app's
loopback address with a code; any other client's request is denied there.  PKCE (RFC 7636,
S256) is required.  The code is exchanged at /token (``grants.authorization_code``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from .state import RESERVED_SCOPES, Authority, digest

CODE_LIFETIME = 120


@dataclass
class CodeRequest:
    """RFC 6749 4.1: a browser's code, to be exchanged with the RFC 7636 S256 challenge."""

    client_id: str
    user: str
    scopes: tuple[str, ...]
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False
    openid: bool = False


class BadAuthorization(Exception):
    """Not safe to send the browser back (unknown client, a redirect that is not loopback):
    shown to the browser instead."""


def _loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _back(uri: str, **fields: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(fields)}"


def authorize(authority: Authority, query: dict[str, str]) -> str:
    """The Location to send the browser to: the app's redirect_uri with a code or an error."""
    client = authority.clients.get(query.get("client_id", ""))
    uri = query.get("redirect_uri", "")
    if client is None:
        raise BadAuthorization("unknown client_id")
    if not _loopback(uri):
        raise BadAuthorization("redirect_uri must be an http://127.0.0.1:PORT/ loopback address")
    state = {"state": query["state"]} if "state" in query else {}
    if query.get("response_type") != "code":
        return _back(uri, error="unsupported_response_type", **state)
    challenge = query.get("code_challenge", "")
    if not challenge or query.get("code_challenge_method") != "S256":
        return _back(
            uri, error="invalid_request", error_description="PKCE with S256 is required", **state
        )
    requested = query.get("scope")
    scopes = client.granted(requested)
    if scopes is None:
        return _back(uri, error="invalid_scope", **state)
    if client.auto_approve is None:
        authority.record("authorization_denied", client_id=client.client_id)
        return _back(uri, error="access_denied", error_description="nobody approved", **state)
    code = "ac-" + secrets.token_urlsafe(32)
    authority.codes[digest(code)] = CodeRequest(
        client.client_id,
        client.auto_approve,
        scopes,
        uri,
        challenge,
        time.time() + CODE_LIFETIME,
        openid="openid" in (requested or "").split(),
    )
    authority.record(
        "authorization_code_issued",
        client_id=client.client_id,
        user=client.auto_approve,
        scope=" ".join(s for s in scopes if s not in RESERVED_SCOPES),
    )
    return _back(uri, code=code, **state)

"""What the endpoints share: the request, RFC 6749 errors, client authentication (HTTP Basic,
a secret in the body, an RFC 7523 client assertion), assertion checks, and ID tokens."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from . import jwt
from .state import Authority, Client, Grant, digest

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TENANT = "sarbot-test"
"""The tenant id in ID tokens and msal's client_info."""


class OAuthError(Exception):
    """An RFC 6749 error: ``{"error": ..., "error_description": ...}`` with an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.basic_challenge = False

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class Request:
    """What the endpoints look at in an HTTP request."""

    form: dict[str, str]
    authorization: str | None = None
    is_token_endpoint: Callable[[str], bool] = field(default=lambda _: False)
    issuer: str = ""
    """This server's URL with the tenant path the request came by (/tenant/v2.0)."""

    def need(self, name: str) -> str:
        value = self.form.get(name)
        if not value:
            raise OAuthError("invalid_request", f"{name} is missing")
        return value


def _basic(authorization: str) -> tuple[str, str]:
    try:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise ValueError(scheme)
        user, sep, password = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "unreadable Authorization header", 401) from None
    if not sep:
        raise OAuthError("invalid_client", "unreadable Authorization header", 401)
    return unquote_plus(user), unquote_plus(password)


def _check_secret(client: Client | None, secret: str, client_id: str) -> Client:
    if client is None or client.secret is None or not secrets.compare_digest(client.secret, secret):
        raise OAuthError("invalid_client", f"client {client_id!r}: unknown, or wrong secret", 401)
    return client


GOOGLE_TOKEN_AUDIENCES = frozenset(
    {"https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token"}
)
"""google-auth's service accounts put Google's token endpoint in aud whatever token_uri says:
the JWT bearer grant accepts it too, as the stand-in for that endpoint."""


def verify_assertion(
    authority: Authority, req: Request, assertion: str, *, also: frozenset[str] = frozenset()
) -> tuple[Client, jwt.Jws]:
    """An RFC 7523 assertion: its issuer is a registered client, one of whose keys signed it,
    for this token endpoint, and it has not expired. Raises :class:`jwt.JwtError`."""
    jws = jwt.parse(assertion)
    issuer = jws.claims.get("iss")
    client = authority.clients.get(issuer) if isinstance(issuer, str) else None
    if client is None:
        raise jwt.JwtError(f"the issuer {issuer!r} is not a registered client")
    if not client.keys:
        raise jwt.JwtError(f"client {client.client_id!r} has registered no keys")
    if not jwt.verify_signature(jws, client.keys):
        raise jwt.JwtError(f"no key of client {client.client_id!r} made this signature")
    if not any(req.is_token_endpoint(aud) or aud in also for aud in jwt.audiences(jws.claims)):
        raise jwt.JwtError("the assertion's aud is not this token endpoint")
    jwt.check_times(jws.claims, time.time())
    return client, jws


def authenticate(authority: Authority, req: Request) -> tuple[Client | None, bool]:
    """The client making the request and whether it proved it is that client: HTTP Basic,
    client_secret in the body, or a private_key_jwt client assertion (RFC 7523 section 2.2).
    A client that sends only its client_id is returned unproven; (None, False) if none."""
    body_id = req.form.get("client_id")
    used = [
        bool(req.authorization),
        "client_secret" in req.form,
        "client_assertion" in req.form,
    ]
    if sum(used) > 1:
        raise OAuthError("invalid_request", "authenticate the client one way only")
    if req.authorization:
        client_id, secret = _basic(req.authorization)
        if body_id is not None and body_id != client_id:
            raise OAuthError("invalid_request", "client_id differs from the Authorization header")
        try:
            return _check_secret(authority.clients.get(client_id), secret, client_id), True
        except OAuthError as exc:
            exc.basic_challenge = True
            raise
    if "client_secret" in req.form:
        client_id = req.need("client_id")
        return _check_secret(
            authority.clients.get(client_id), req.form["client_secret"], client_id
        ), True
    if "client_assertion" in req.form:
        if req.form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise OAuthError(
                "invalid_client", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}", 401
            )
        try:
            client, jws = verify_assertion(authority, req, req.form["client_assertion"])
        except jwt.JwtError as exc:
            raise OAuthError("invalid_client", f"client assertion refused: {exc}", 401) from None
        if jws.claims.get("sub") != client.client_id or body_id not in (None, client.client_id):
            raise OAuthError(
                "invalid_client", "the client assertion's sub must be the client_id", 401
            )
        return client, True
    if body_id is None:
        return None, False
    named = authority.clients.get(body_id)
    if named is None:
        raise OAuthError("invalid_client", f"unknown client {body_id!r}", 401)
    return named, False


def id_token(authority: Authority, req: Request, grant: Grant) -> dict[str, str]:
    """OpenID Connect for a user's grant: an ID token (RS256, the key at /jwks) and, if the
    client asks for it as msal does (client_info=1), the client_info msal keeps accounts by."""
    now = int(time.time())
    subject = digest(grant.user)[:32]
    claims = {
        "iss": req.issuer,
        "sub": subject,
        "aud": grant.client_id,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "preferred_username": grant.user,
        "email": grant.user,
        "tid": TENANT,
    }
    answer = {"id_token": authority.signer.sign(claims)}
    if req.form.get("client_info") == "1":
        info = json.dumps({"uid": subject, "utid": TENANT}).encode()
        answer["client_info"] = jwt.b64url_encode(info)
    return answer

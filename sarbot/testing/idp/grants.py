"""The token endpoint (RFC 6749, 7523, 7636, 8628), device authorization and revocation
(RFC 7009).

Each function takes the request's form fields and Authorization header, changes the
:class:`~.state.Authority` (the caller holds its lock) and returns the JSON to answer, or
raises :class:`OAuthError`, which becomes an RFC 6749 error response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from . import jwt
from .browser import CodeRequest
from .protocol import (
    GOOGLE_TOKEN_AUDIENCES,
    OAuthError,
    Request,
    authenticate,
    id_token,
    verify_assertion,
)
from .state import (
    RESERVED_SCOPES,
    Authority,
    Client,
    DeviceRequest,
    Grant,
    digest,
    token_id,
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_LIFETIME = 600
USER_GRANTS = frozenset({"device_code", "consent", "authorization_code"})
"""Grants a user gave (the device flow, a refresh token from /admin/refresh-tokens): only
these get ID tokens; client credentials and JWT bearer tokens act for a mailbox, not a user."""
USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I confusion


def _confidential(client: Client | None, proven: bool) -> Client:
    if client is None:
        raise OAuthError("invalid_client", "the client must authenticate", 401)
    if not proven:
        raise OAuthError("invalid_client", f"client {client.client_id!r} must authenticate", 401)
    return client


def _known(client: Client | None, proven: bool) -> Client:
    """A public client may name itself; a confidential one must also authenticate."""
    if client is None:
        raise OAuthError("invalid_request", "client_id is missing")
    return client if client.public else _confidential(client, proven)


def _scopes(client: Client, requested: str | None) -> tuple[str, ...]:
    granted = client.granted(requested)
    if granted is None:
        raise OAuthError(
            "invalid_scope", f"client {client.client_id!r} may not ask for {requested!r}"
        )
    return granted


def _user(client: Client, named: object) -> str:
    if named is None:
        user = client.only_user()
        if user is None:
            raise OAuthError(
                "invalid_request",
                f"client {client.client_id!r} acts for several mailboxes: name one (username)",
            )
        return user
    if not isinstance(named, str) or not client.may_act_as(named):
        raise OAuthError(
            "unauthorized_client", f"client {client.client_id!r} may not act for {named!r}"
        )
    return named.lower()


def client_credentials(authority: Authority, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    client = _confidential(*authenticate(authority, req))
    user = _user(client, req.form.get("username"))
    scopes = _scopes(client, req.form.get("scope"))
    return authority.issue(authority.grant(client, user, scopes, "client_credentials"), scopes)


def refresh_token(authority: Authority, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    client = _known(*authenticate(authority, req))
    value = req.need("refresh_token")
    token = authority.find(value, "refresh")
    if token is None or not token.active(time.time()) or token.grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the refresh token is unknown, expired or revoked")
    g = token.grant
    if not client.may_act_as(g.user):
        raise OAuthError(
            "invalid_grant", f"client {client.client_id!r} may no longer act for {g.user}"
        )
    scopes = token.scopes
    wanted = {s for s in req.form.get("scope", "").split() if s not in RESERVED_SCOPES}
    if wanted - set(token.scopes):
        raise OAuthError("invalid_scope", "a refresh token cannot widen its scope")
    if wanted:
        scopes = tuple(s for s in token.scopes if s in wanted)
    response, logged = authority.issue(g, scopes, parent=digest(value))
    if client.rotate_refresh_tokens:
        token.revoked = True
        response["refresh_token"] = authority.refresh_token(g, token.scopes)
        logged["refresh_token_id"] = token_id(response["refresh_token"])
    return response, logged


def jwt_bearer(authority: Authority, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    named, _ = authenticate(authority, req)
    try:
        client, jws = verify_assertion(
            authority, req, req.need("assertion"), also=GOOGLE_TOKEN_AUDIENCES
        )
    except jwt.JwtError as exc:
        raise OAuthError("invalid_grant", f"assertion refused: {exc}") from None
    if named is not None and named.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the assertion was issued by another client")
    user = _user(client, jws.claims.get("sub"))
    claimed = jws.claims.get("scope")
    scopes = _scopes(
        client, req.form.get("scope") or (claimed if isinstance(claimed, str) else None)
    )
    return authority.issue(authority.grant(client, user, scopes, "jwt_bearer"), scopes)


def device_code(authority: Authority, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    client = _known(*authenticate(authority, req))
    device = authority.devices.get(digest(req.need("device_code")))
    if device is None or device.client_id != client.client_id or device.used:
        raise OAuthError("invalid_grant", "unknown or already used device_code")
    if device.expires_at <= time.time():
        raise OAuthError("expired_token", "the device code has expired")
    if device.denied:
        raise OAuthError("access_denied", "the user denied the request")
    if device.user is None:
        raise OAuthError("authorization_pending", "waiting for the user to approve")
    device.used = True
    g = authority.grant(client, device.user, device.scopes, "device_code")
    response, logged = authority.issue(g, device.scopes, refresh=True)
    logged["openid"] = device.openid  # OpenID Connect was asked for at /device_authorization
    return response, logged


def authorization_code(authority: Authority, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """A code from /authorize, exchanged once, with its redirect_uri and PKCE verifier."""
    client = _known(*authenticate(authority, req))
    code: CodeRequest | None = authority.codes.get(digest(req.need("code")))
    if code is None or code.client_id != client.client_id or code.used:
        raise OAuthError("invalid_grant", "unknown or already used authorization code")
    code.used = True  # one try: a wrong verifier burns the code too
    if code.expires_at <= time.time():
        raise OAuthError("invalid_grant", "the authorization code has expired")
    if req.form.get("redirect_uri") != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
    verifier = req.need("code_verifier")
    answer = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    if not hmac.compare_digest(answer.decode(), code.challenge):
        raise OAuthError("invalid_grant", "the PKCE code_verifier does not match")
    g = authority.grant(client, code.user, code.scopes, "authorization_code")
    response, logged = authority.issue(g, code.scopes, refresh=True)
    logged["openid"] = code.openid
    return response, logged


GRANTS = {
    "client_credentials": client_credentials,
    "refresh_token": refresh_token,
    JWT_BEARER: jwt_bearer,
    DEVICE_CODE: device_code,
    "authorization_code": authorization_code,
}


def token(authority: Authority, req: Request) -> dict[str, Any]:
    """POST /token: run the grant, log the outcome (never a token's value)."""
    grant_type = req.form.get("grant_type", "")
    try:
        handler = GRANTS.get(grant_type)
        if handler is None:
            if not grant_type:
                raise OAuthError("invalid_request", "grant_type is missing")
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant_type!r} is not supported"
            )
        response, logged = handler(authority, req)
    except OAuthError as exc:
        if exc.error != "authorization_pending":
            authority.record(
                "token_refused",
                grant_type=grant_type,
                client_id=req.form.get("client_id"),
                error=exc.error,
                error_description=exc.description,
            )
        raise
    grant = authority.grants[logged["grant_id"]]
    openid = logged.pop("openid", False) or "openid" in req.form.get("scope", "").split()
    if grant.kind in USER_GRANTS and openid:
        response.update(id_token(authority, req, grant))
    authority.record("token_issued", grant_type=grant_type, **logged)
    return response


def device_authorization(authority: Authority, req: Request) -> dict[str, Any]:
    """POST /device_authorization (RFC 8628 section 3.1)."""
    client = _known(*authenticate(authority, req))
    scopes = _scopes(client, req.form.get("scope"))
    code = "dc-" + secrets.token_urlsafe(32)
    letters = "".join(secrets.choice(USER_CODE_LETTERS) for _ in range(8))
    user_code = f"{letters[:4]}-{letters[4:]}"
    device = DeviceRequest(user_code, client.client_id, scopes, time.time() + DEVICE_CODE_LIFETIME)
    device.openid = "openid" in req.form.get("scope", "").split()
    device.user = client.auto_approve
    authority.devices[digest(code)] = device
    authority.record(
        "device_authorization",
        client_id=client.client_id,
        user_code=user_code,
        scope=" ".join(scopes),
        auto_approved=client.auto_approve,
    )
    uri = f"{req.issuer}/device"
    return {
        "device_code": code,
        "user_code": user_code,
        "verification_uri": uri,
        "verification_uri_complete": f"{uri}?user_code={user_code}",
        "expires_in": DEVICE_CODE_LIFETIME,
        "interval": 1,
        "message": f"To sign in, open {uri} and enter the code {user_code}.",
    }


def find_device(authority: Authority, user_code: str) -> DeviceRequest | None:
    wanted = "".join(c for c in user_code.upper() if c.isalpha())
    now = time.time()
    for device in authority.devices.values():
        if (
            device.user_code.replace("-", "") == wanted
            and device.expires_at > now
            and not device.used
        ):
            return device
    return None


def decide_device(
    authority: Authority, user_code: str, user: str | None, *, deny: bool
) -> DeviceRequest:
    """Approve a pending device authorization as ``user``, or deny it. Raises ValueError."""
    device = find_device(authority, user_code)
    if device is None or device.user is not None or device.denied:
        raise ValueError(f"no pending device authorization with user code {user_code!r}")
    client = authority.clients[device.client_id]
    if deny:
        device.denied = True
        authority.record("device_denied", client_id=client.client_id, user_code=device.user_code)
        return device
    if not user or not client.may_act_as(user):
        raise ValueError(f"client {client.client_id!r} may not act for {user!r}")
    device.user = user.lower()
    authority.record(
        "device_approved", client_id=client.client_id, user=device.user, user_code=device.user_code
    )
    return device


def revoke(authority: Authority, req: Request) -> None:
    """POST /revoke (RFC 7009): a refresh token (with its access tokens) or an access token
    of the calling client. Unknown tokens are not an error."""
    client = _known(*authenticate(authority, req))
    value = req.need("token")
    found = authority.find(value, "refresh") or authority.find(value, "access")
    if found is None or found.grant.client_id != client.client_id:
        return
    if found.kind == "refresh":
        count = authority.revoke_refresh(value)
    else:
        count = authority.revoke_tokens([found])
    authority.record(
        "revoked", client_id=client.client_id, user=found.grant.user, count=count, by="client"
    )


def grants_of(authority: Authority, client_id: str, user: str | None) -> list[Grant]:
    return [
        g
        for g in authority.grants.values()
        if g.client_id == client_id and (user is None or g.user == user)
    ]

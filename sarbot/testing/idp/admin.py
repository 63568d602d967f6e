"""The admin API, for tests on loopback: JSON in, JSON out (see the package docstring)."""

from __future__ import annotations

import time
from typing import Any

from . import grants
from .state import Authority, Client


class AdminError(ValueError):
    """A bad admin request: answered 400 (404 for an unknown thing) with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise AdminError(f"{name} must be a non-empty string")
    return value


def _user(body: dict[str, Any]) -> str | None:
    user = _text(body, "user")
    return user.lower() if user else None


def _only(body: dict[str, Any], *names: str) -> None:
    unknown = set(body) - set(names)
    if unknown:
        raise AdminError(f"unknown fields {sorted(unknown)}; this endpoint takes {list(names)}")


def register(authority: Authority, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /admin/clients"""
    try:
        client = Client.from_json(body)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    authority.register(client)
    return 201, {"client": client.to_json(with_secret=False)}


def clients(authority: Authority) -> dict[str, Any]:
    """GET /admin/clients"""
    return {"clients": [c.to_json(with_secret=False) for c in authority.clients.values()]}


def mint_refresh_token(authority: Authority, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /admin/refresh-tokens: a user's one-time consent, as a refresh token."""
    _only(body, "client_id", "user", "scope")
    client_id = _text(body, "client_id", required=True)
    user = _user(body)
    client = authority.clients.get(client_id or "")
    if client is None:
        raise AdminError(f"unknown client {client_id!r}", 404)
    if user is None or not client.may_act_as(user):
        raise AdminError(f"client {client_id!r} may not act for {user!r}")
    scopes = client.granted(_text(body, "scope"))
    if scopes is None:
        raise AdminError(f"client {client_id!r} may not have scope {body['scope']!r}")
    grant = authority.grant(client, user, scopes, "consent")
    value = authority.refresh_token(grant, scopes)
    authority.record(
        "refresh_token_minted", client_id=client.client_id, user=user, grant_id=grant.grant_id
    )
    return 201, {"refresh_token": value, "grant_id": grant.grant_id, "scope": " ".join(scopes)}


def expire(authority: Authority, body: dict[str, Any]) -> dict[str, Any]:
    """POST /admin/expire: end live tokens now, or set the lifetime of new access tokens."""
    _only(body, "client_id", "user", "refresh_tokens", "lifetime")
    client_id, user = _text(body, "client_id"), _user(body)
    if "lifetime" in body:
        lifetime = body["lifetime"]
        if lifetime is not None and (
            isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 0
        ):
            raise AdminError("lifetime must be a whole number of seconds (0 or more), or null")
        if "refresh_tokens" in body:
            raise AdminError("give lifetime or refresh_tokens, not both")
        if lifetime is None:
            authority.lifetimes.pop((client_id, user), None)
        else:
            authority.lifetimes[(client_id, user)] = lifetime
        authority.record("lifetime_set", client_id=client_id, user=user, lifetime=lifetime)
        return {"lifetime": lifetime}
    refresh = body.get("refresh_tokens", False)
    if not isinstance(refresh, bool):
        raise AdminError("refresh_tokens must be true or false")
    return {"expired": authority.expire(client_id, user, refresh_tokens=refresh)}


def revoke(authority: Authority, body: dict[str, Any]) -> dict[str, Any]:
    """POST /admin/revoke: one token, one grant, or every grant of a client (for a user)."""
    given = [k for k in ("refresh_token", "access_token", "grant_id", "client_id") if k in body]
    if len(given) != 1:
        raise AdminError("give one of refresh_token, access_token, grant_id, client_id (with user)")
    _only(body, given[0], *(["user"] if given == ["client_id"] else []))
    value = _text(body, given[0], required=True) or ""
    if given == ["refresh_token"]:
        count = authority.revoke_refresh(value)
    elif given == ["access_token"]:
        token = authority.find(value, "access")
        count = authority.revoke_tokens([token] if token else [])
    elif given == ["grant_id"]:
        grant = authority.grants.get(value)
        if grant is None:
            raise AdminError(f"unknown grant {value!r}", 404)
        count = authority.revoke_grants([grant])
    else:
        count = authority.revoke_grants(grants.grants_of(authority, value, _user(body)))
    named = {given[0]: value} if given[0] in ("grant_id", "client_id") else {}
    authority.record("revoked", count=count, by="admin", user=_user(body), **named)
    return {"revoked": count}


def devices(authority: Authority) -> dict[str, Any]:
    """GET /admin/device: the device authorizations waiting for a user."""
    now = time.time()
    pending = [
        {
            "user_code": d.user_code,
            "client_id": d.client_id,
            "scope": " ".join(d.scopes),
            "expires_in": int(d.expires_at - now),
        }
        for d in authority.devices.values()
        if d.user is None and not d.denied and not d.used and d.expires_at > now
    ]
    return {"pending": pending}


def decide(authority: Authority, body: dict[str, Any]) -> dict[str, Any]:
    """POST /admin/device: approve a user code as a user, or deny it."""
    _only(body, "user_code", "user", "deny")
    deny = body.get("deny", False)
    if not isinstance(deny, bool):
        raise AdminError("deny must be true or false")
    user_code = _text(body, "user_code", required=True) or ""
    try:
        device = grants.decide_device(authority, user_code, _user(body), deny=deny)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    if deny:
        return {"user_code": device.user_code, "denied": True}
    return {"user_code": device.user_code, "user": device.user}


def log(authority: Authority, since: str | None) -> dict[str, Any]:
    """GET /admin/log?since=N: the events after sequence number N."""
    try:
        after = int(since or 0)
    except ValueError:
        raise AdminError("since must be a whole number") from None
    events = authority.since(after)
    return {"events": events, "next": events[-1]["seq"] if events else max(after, authority.seq)}

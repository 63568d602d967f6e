"""What the identity provider knows: its clients, the grants given to them, the tokens issued
under each grant, pending device authorizations, and a log of what happened.

Tokens are kept by the SHA-256 of their value, never the value itself; the log names a token
by the first 16 hex digits of that hash (its ``token_id``). Only clients survive a restart
(they are in ``clients.json``); grants and tokens live in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .jwt import JwtError, Signer, public_key

if TYPE_CHECKING:
    from .browser import CodeRequest

RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
"""OpenID Connect scopes that msal adds to user flows: always allowed, never granted."""

DEFAULT_ACCESS_LIFETIME = 3600
LOG_LIMIT = 10_000

CLIENT_FIELDS = frozenset(
    {
        "client_id",
        "client_secret",
        "keys",
        "users",
        "scopes",
        "auto_approve",
        "rotate_refresh_tokens",
    }
)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def token_id(value: str) -> str:
    """How the log names a token without giving it away."""
    return digest(value)[:16]


def _strings(data: dict[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


@dataclass(frozen=True)
class Client:
    """A registered client: how it authenticates, whom it may act for, what it may ask for."""

    client_id: str
    secret: str | None = None
    keys: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    auto_approve: str | None = None
    rotate_refresh_tokens: bool = False

    @classmethod
    def from_json(cls, data: object) -> Client:
        if not isinstance(data, dict):
            raise ValueError("a client is a JSON object")
        unknown = set(data) - CLIENT_FIELDS
        if unknown:
            raise ValueError(
                f"unknown client fields {sorted(unknown)}; known: {sorted(CLIENT_FIELDS)}"
            )
        client_id, secret = data.get("client_id"), data.get("client_secret")
        if not isinstance(client_id, str) or not client_id.strip():
            raise ValueError("client_id must be a non-empty string")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValueError("client_secret must be a non-empty string, or left out")
        keys = _strings(data, "keys")
        for pem in keys:
            try:
                public_key(pem)
            except JwtError as exc:
                raise ValueError(f"keys: {exc}") from exc
        users = tuple(u.lower() for u in _strings(data, "users"))
        for user in users:
            if user.count("@") != 1 or ("*" in user and not user.startswith("*@")):
                raise ValueError(f"users: {user!r} is neither an address nor *@domain")
        scopes = _strings(data, "scopes")
        if any(" " in s for s in scopes):
            raise ValueError("scopes: a scope has no spaces")
        auto = data.get("auto_approve")
        rotate = data.get("rotate_refresh_tokens", False)
        if not isinstance(rotate, bool):
            raise ValueError("rotate_refresh_tokens must be true or false")
        client = cls(client_id.strip(), secret, keys, users, scopes, None, rotate)
        if auto is not None:
            if not isinstance(auto, str) or not client.may_act_as(auto):
                raise ValueError("auto_approve must be one of the client's users")
            client = cls(client_id.strip(), secret, keys, users, scopes, auto.lower(), rotate)
        return client

    def to_json(self, *, with_secret: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"client_id": self.client_id}
        if self.secret is not None:
            data["client_secret"] = self.secret if with_secret else "*****"
        data.update(keys=list(self.keys), users=list(self.users), scopes=list(self.scopes))
        if self.auto_approve:
            data["auto_approve"] = self.auto_approve
        data["rotate_refresh_tokens"] = self.rotate_refresh_tokens
        return data

    @property
    def public(self) -> bool:
        """A client without credentials (it may only use the device flow and refresh tokens)."""
        return self.secret is None and not self.keys

    def may_act_as(self, user: str) -> bool:
        user = user.lower()
        return any(u == user or (u.startswith("*@") and user.endswith(u[1:])) for u in self.users)

    def only_user(self) -> str | None:
        """The one mailbox this client acts for, if its registration names exactly one."""
        return self.users[0] if len(self.users) == 1 and "*" not in self.users[0] else None

    def granted(self, requested: str | None) -> tuple[str, ...] | None:
        """The scopes to grant for a request (all of the client's if none asked for), or None
        if it asks for one the client may not have."""
        wanted = [s for s in (requested or "").split() if s not in RESERVED_SCOPES]
        if not wanted:
            return self.scopes
        if not set(wanted) <= set(self.scopes):
            return None
        return tuple(s for s in self.scopes if s in wanted)


@dataclass
class Grant:
    """A client's right to act for a user: one consent (refresh tokens, device flow) or one
    client's standing access (client credentials, JWT bearer). Revoking it ends every token."""

    grant_id: str
    client_id: str
    user: str
    scopes: tuple[str, ...]
    kind: str
    revoked: bool = False


@dataclass
class Token:
    kind: str  # "access" or "refresh"
    grant: Grant
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float | None  # None: until revoked (refresh tokens)
    parent: str | None = None  # the digest of the refresh token an access token came from
    revoked: bool = False

    def active(self, now: float) -> bool:
        return (
            not self.revoked
            and not self.grant.revoked
            and (self.expires_at is None or self.expires_at > now)
        )


@dataclass
class DeviceRequest:
    """RFC 8628: one device authorization, waiting for a user to approve it."""

    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    user: str | None = None
    denied: bool = False
    used: bool = False
    openid: bool = False


@dataclass
class Authority:
    """All the provider's state, behind one lock (hold :attr:`lock` while using it)."""

    state_dir: Path
    access_lifetime: int = DEFAULT_ACCESS_LIFETIME
    lock: threading.RLock = field(default_factory=threading.RLock)
    clients: dict[str, Client] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    devices: dict[str, DeviceRequest] = field(default_factory=dict)
    codes: dict[str, CodeRequest] = field(default_factory=dict)
    """Authorization codes from /authorize (``browser``), by digest."""
    lifetimes: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    signer: Signer = field(default_factory=Signer)

    # ------------------------------------------------------------ clients

    @property
    def clients_file(self) -> Path:
        return self.state_dir / "clients.json"

    def load(self) -> None:
        """Read ``clients.json`` (made empty on the first start)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.clients_file.exists():
            self._save()
        data = json.loads(self.clients_file.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("clients"), list):
            raise ValueError(f'{self.clients_file}: expected {{"clients": [...]}}')
        for entry in data["clients"]:
            client = Client.from_json(entry)
            self.clients[client.client_id] = client

    def _save(self) -> None:
        data = {"clients": [c.to_json() for c in self.clients.values()]}
        tmp = self.clients_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        tmp.replace(self.clients_file)

    def register(self, client: Client) -> None:
        """Add a client, or replace the one with its id (its grants stay)."""
        self.clients[client.client_id] = client
        self._save()
        self.record("client_registered", client_id=client.client_id, users=list(client.users))

    # ------------------------------------------------------------ grants and tokens

    def grant(self, client: Client, user: str, scopes: tuple[str, ...], kind: str) -> Grant:
        """A new grant, or for standing access (client credentials, JWT bearer) the client's
        live grant for that user and scopes."""
        if kind in ("client_credentials", "jwt_bearer"):
            for g in self.grants.values():
                if (g.client_id, g.user, g.scopes, g.kind, g.revoked) == (
                    client.client_id,
                    user,
                    scopes,
                    kind,
                    False,
                ):
                    return g
        g = Grant("g-" + secrets.token_hex(8), client.client_id, user, scopes, kind)
        self.grants[g.grant_id] = g
        return g

    def lifetime(self, client_id: str, user: str) -> int:
        for key in ((client_id, user), (client_id, None), (None, user), (None, None)):
            if key in self.lifetimes:
                return self.lifetimes[key]
        return self.access_lifetime

    def issue(
        self,
        grant: Grant,
        scopes: tuple[str, ...],
        *,
        refresh: bool = False,
        parent: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Mint an access token (and a refresh token if asked): the token response, and what
        the log may say about it."""
        now = time.time()
        lifetime = self.lifetime(grant.client_id, grant.user)
        access = "at-" + secrets.token_urlsafe(32)
        self.tokens[digest(access)] = Token("access", grant, scopes, now, now + lifetime, parent)
        response: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }
        logged: dict[str, Any] = {
            "client_id": grant.client_id,
            "user": grant.user,
            "grant_id": grant.grant_id,
            "scope": " ".join(scopes),
            "token_id": token_id(access),
            "expires_in": lifetime,
        }
        if refresh:
            value = self.refresh_token(grant, scopes)
            response["refresh_token"] = value
            logged["refresh_token_id"] = token_id(value)
        return response, logged

    def refresh_token(self, grant: Grant, scopes: tuple[str, ...]) -> str:
        value = "rt-" + secrets.token_urlsafe(32)
        self.tokens[digest(value)] = Token("refresh", grant, scopes, time.time(), None)
        return value

    def find(self, value: str, kind: str) -> Token | None:
        token = self.tokens.get(digest(value))
        return token if token is not None and token.kind == kind else None

    def introspect(self, value: str) -> dict[str, Any]:
        """RFC 7662: only a live access token is active (a refresh token never is)."""
        token = self.find(value, "access")
        now = time.time()
        if token is None:
            self.record("introspected", token_id=token_id(value), active=False, known=False)
            return {"active": False}
        g = token.grant
        active = token.active(now)
        self.record(
            "introspected",
            token_id=token_id(value),
            active=active,
            client_id=g.client_id,
            user=g.user,
        )
        if not active or token.expires_at is None:
            return {"active": False}
        return {
            "active": True,
            "username": g.user,
            "email": g.user,
            "sub": g.user,
            "client_id": g.client_id,
            "scope": " ".join(token.scopes),
            "token_type": "Bearer",
            "iat": int(token.issued_at),
            "exp": int(token.expires_at),
        }

    def matching(self, client_id: str | None, user: str | None) -> Iterator[Token]:
        for token in self.tokens.values():
            if (client_id is None or token.grant.client_id == client_id) and (
                user is None or token.grant.user == user
            ):
                yield token

    def expire(self, client_id: str | None, user: str | None, *, refresh_tokens: bool) -> int:
        """End every live access token (and refresh token, if asked) of the client and/or user."""
        now, count = time.time(), 0
        for token in self.matching(client_id, user):
            if token.active(now) and (token.kind == "access" or refresh_tokens):
                token.expires_at = now
                count += 1
        self.record("expired", client_id=client_id, user=user, count=count)
        return count

    def revoke_tokens(self, tokens: Iterable[Token]) -> int:
        count = 0
        for token in tokens:
            if not token.revoked:
                token.revoked = True
                count += 1
        return count

    def revoke_refresh(self, value: str) -> int:
        """Revoke a refresh token and every access token obtained with it."""
        key = digest(value)
        token = self.tokens.get(key)
        if token is None or token.kind != "refresh":
            return 0
        children = [t for t in self.tokens.values() if t.parent == key]
        return self.revoke_tokens([token, *children])

    def revoke_grants(self, grants: Iterable[Grant]) -> int:
        """Revoke grants and every token issued under them."""
        ids = set()
        for g in grants:
            g.revoked = True
            ids.add(g.grant_id)
        return self.revoke_tokens(t for t in self.tokens.values() if t.grant.grant_id in ids)

    # ------------------------------------------------------------ the log

    def record(self, event: str, **fields: Any) -> None:
        self.seq += 1
        entry = {"seq": self.seq, "time": round(time.time(), 3), "event": event}
        entry.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(entry)
        del self.events[:-LOG_LIMIT]

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["seq"] > seq]

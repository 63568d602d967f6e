"""Talking to the test identity provider from tests: its token endpoint and its admin API."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode


class IdpError(Exception):
    """The provider answered with an error: ``status`` and the JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def error(self) -> str:
        return str(self.body.get("error", ""))


class IdpClient:
    """``IdpClient("http://127.0.0.1:10080")``; https URLs need ``ca_file``."""

    def __init__(self, base_url: str, *, ca_file: str | None = None, timeout: float = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def _send(self, method: str, path: str, data: bytes | None, kind: str | None) -> Any:
        url = f"{self.base_url}{path}"
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url}")
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (checked)
        if kind:
            request.add_header("Content-Type", kind)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._tls) as reply:  # noqa: S310 (a URL the test chose)
                return json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError:
                parsed = {"error": body.decode("utf-8", "replace")}
            raise IdpError(exc.code, parsed) from None

    def get(self, path: str) -> Any:
        return self._send("GET", path, None, None)

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return self._send("POST", path, json.dumps(body).encode(), "application/json")

    def post_form(self, path: str, form: dict[str, str]) -> Any:
        return self._send(
            "POST", path, urlencode(form).encode(), "application/x-www-form-urlencoded"
        )

    # ------------------------------------------------------------ the OAuth endpoints

    def token(self, **form: str) -> dict[str, Any]:
        """POST /token with these form fields; raises :class:`IdpError` for an error reply."""
        result: dict[str, Any] = self.post_form("/token", form)
        return result

    def client_credentials(self, client_id: str, secret: str, **form: str) -> dict[str, Any]:
        return self.token(
            grant_type="client_credentials", client_id=client_id, client_secret=secret, **form
        )

    def refresh(self, client_id: str, refresh_token: str, **form: str) -> dict[str, Any]:
        return self.token(
            grant_type="refresh_token", client_id=client_id, refresh_token=refresh_token, **form
        )

    def introspect(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post_form("/introspect", {"token": token})
        return result

    # ------------------------------------------------------------ the admin API

    def register(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        users: Iterable[str] = (),
        scopes: Iterable[str] = (),
        keys: Iterable[str] = (),
        auto_approve: str | None = None,
        rotate_refresh_tokens: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "client_id": client_id,
            "users": list(users),
            "scopes": list(scopes),
            "keys": list(keys),
            "rotate_refresh_tokens": rotate_refresh_tokens,
        }
        if secret is not None:
            body["client_secret"] = secret
        if auto_approve is not None:
            body["auto_approve"] = auto_approve
        result: dict[str, Any] = self.post_json("/admin/clients", body)["client"]
        return result

    def mint_refresh_token(self, client_id: str, user: str, scope: str | None = None) -> str:
        body = {"client_id": client_id, "user": user}
        if scope is not None:
            body["scope"] = scope
        return str(self.post_json("/admin/refresh-tokens", body)["refresh_token"])

    def expire(
        self, *, client_id: str | None = None, user: str | None = None, refresh_tokens: bool = False
    ) -> int:
        body: dict[str, Any] = {"refresh_tokens": refresh_tokens}
        body.update(_some(client_id=client_id, user=user))
        return int(self.post_json("/admin/expire", body)["expired"])

    def set_lifetime(
        self, seconds: int | None, *, client_id: str | None = None, user: str | None = None
    ) -> None:
        body: dict[str, Any] = {"lifetime": seconds}
        body.update(_some(client_id=client_id, user=user))
        self.post_json("/admin/expire", body)

    def revoke(self, **what: str) -> int:
        """One of refresh_token=, access_token=, grant_id=, or client_id= (and user=)."""
        return int(self.post_json("/admin/revoke", what)["revoked"])

    def pending_devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/admin/device")["pending"]
        return result

    def approve_device(self, user_code: str, user: str) -> None:
        self.post_json("/admin/device", {"user_code": user_code, "user": user})

    def deny_device(self, user_code: str) -> None:
        self.post_json("/admin/device", {"user_code": user_code, "deny": True})

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/admin/log?since={since}")["events"]
        return result


def _some(**fields: str | None) -> dict[str, str]:
    return {name: value for name, value in fields.items() if value is not None}

"""The identity provider's HTTP server: one loopback port that speaks plain HTTP and, when a
certificate is given, HTTPS too (the first byte of a connection tells which; msal insists on
https URLs, Dovecot asks over plain HTTP)."""

from __future__ import annotations

import html
import ipaddress
import json
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import admin, browser, grants
from .protocol import OAuthError, Request
from .state import Authority

DISCOVERY = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
PUBLIC = ("token", "introspect", "revoke", "device_authorization", "authorize")
MAX_BODY = 1 << 20
TLS_HANDSHAKE = 0x16


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, port: int, authority: Authority, tls: ssl.SSLContext | None
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address: the provider is for tests only")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.authority = authority
        self.tls = tls
        super().__init__((host, port), Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection, in TLS if it starts with a TLS handshake."""
        request.settimeout(30)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if self.tls is not None and first and first[0] == TLS_HANDSHAKE:
            try:
                conn = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                print(f"idp: TLS handshake with {client_address[0]} failed: {exc}", file=sys.stderr)
                return
            try:
                Handler(conn, client_address, self)
            finally:
                conn.close()
            return
        Handler(request, client_address, self)


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "sarbot-test-idp/1"

    # ------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        print(f"idp: {self.address_string()} {format % args}", file=sys.stderr, flush=True)

    @property
    def path_only(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    @property
    def base_url(self) -> str:
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"{scheme}://{host}"

    def send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_html(self, status: int, text: str) -> None:
        data = f"<!doctype html><title>Test sign-in</title>{text}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise OAuthError("invalid_request", "request too large", 413)
        return self.rfile.read(length)

    def form(self) -> dict[str, str]:
        """An application/x-www-form-urlencoded body; a field given twice is an error."""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "send application/x-www-form-urlencoded")
        fields = parse_qs(self.body().decode("utf-8", "replace"), keep_blank_values=True)
        repeated = [name for name, values in fields.items() if len(values) > 1]
        if repeated:
            raise OAuthError("invalid_request", f"{repeated[0]} is given more than once")
        return {name: values[0] for name, values in fields.items()}

    def json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise admin.AdminError("the body is not JSON") from None
        if not isinstance(data, dict):
            raise admin.AdminError("the body must be a JSON object")
        return data

    def oauth_request(self) -> Request:
        return Request(
            self.form(),
            self.headers.get("Authorization"),
            self.is_token_endpoint,
            self.base_url + self.prefix(),
        )

    def is_token_endpoint(self, url: str) -> bool:
        """An assertion's aud names this server's token endpoint (under any tenant path)."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return False
        return (
            parts.scheme in ("http", "https")
            and parts.hostname in ("127.0.0.1", "localhost", "::1")
            and port == self.server.server_address[1]
            and parts.path.rstrip("/").endswith("/token")
        )

    def prefix(self) -> str:
        """The tenant path before an endpoint: /tenant/v2.0 in /tenant/v2.0/token."""
        path = self.path_only
        for suffix in DISCOVERY:
            if path.endswith(suffix):
                return path[: -len(suffix)]
        return path.rpartition("/")[0]

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self.path_only
        query = parse_qs(urlsplit(self.path).query)
        with self.server.authority.lock:
            authority = self.server.authority
            try:
                if path == "/health":
                    self.send_json(200, {"status": "ok"})
                elif path.endswith(DISCOVERY):
                    self.send_json(200, self.discovery())
                elif path == "/admin/log":
                    self.send_json(200, admin.log(authority, query.get("since", [""])[0]))
                elif path == "/admin/clients":
                    self.send_json(200, admin.clients(authority))
                elif path == "/admin/device":
                    self.send_json(200, admin.devices(authority))
                elif path.endswith("/jwks"):
                    self.send_json(200, {"keys": [authority.signer.jwk]})
                elif path.endswith("/device"):
                    self.send_html(200, self.device_page(query.get("user_code", [""])[0], ""))
                elif path.endswith("/authorize"):
                    self.authorize({name: values[0] for name, values in query.items()})
                else:
                    self.send_json(404, {"error": "not_found"})
            except admin.AdminError as exc:
                self.send_json(
                    exc.status, {"error": "invalid_request", "error_description": str(exc)}
                )

    def do_POST(self) -> None:
        path = self.path_only
        authority = self.server.authority
        with authority.lock:
            try:
                if path.startswith("/admin/"):
                    self.admin_post(path)
                elif path.endswith("/device"):
                    self.device_post()
                elif path.rpartition("/")[2] in PUBLIC:
                    self.public_post(path.rpartition("/")[2])
                else:
                    self.send_json(404, {"error": "not_found"})
            except OAuthError as exc:
                challenge = {"WWW-Authenticate": 'Basic realm="idp"'} if exc.basic_challenge else {}
                self.send_json(exc.status, exc.body(), challenge)
            except admin.AdminError as exc:
                self.send_json(
                    exc.status, {"error": "invalid_request", "error_description": str(exc)}
                )

    def public_post(self, endpoint: str) -> None:
        authority = self.server.authority
        if endpoint == "token":
            self.send_json(200, grants.token(authority, self.oauth_request()))
        elif endpoint == "introspect":
            self.send_json(200, authority.introspect(self.form().get("token", "")))
        elif endpoint == "revoke":
            grants.revoke(authority, self.oauth_request())
            self.send_json(200, {})
        elif endpoint == "device_authorization":
            self.send_json(200, grants.device_authorization(authority, self.oauth_request()))
        else:
            raise OAuthError("invalid_request", "a browser signs in with GET /authorize")

    def admin_post(self, path: str) -> None:
        authority, body = self.server.authority, self.json_body()
        if path == "/admin/clients":
            self.send_json(*admin.register(authority, body))
        elif path == "/admin/refresh-tokens":
            self.send_json(*admin.mint_refresh_token(authority, body))
        elif path == "/admin/expire":
            self.send_json(200, admin.expire(authority, body))
        elif path == "/admin/revoke":
            self.send_json(200, admin.revoke(authority, body))
        elif path == "/admin/device":
            self.send_json(200, admin.decide(authority, body))
        else:
            self.send_json(404, {"error": "not_found"})

    # ------------------------------------------------------------ discovery and the device page

    def discovery(self) -> dict[str, Any]:
        """OpenID Connect / RFC 8414 metadata, with every endpoint under the asked-for tenant
        path (msal's authority=https://host/tenant reads /tenant/v2.0/.well-known/...)."""
        issuer = self.base_url + self.prefix()
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "device_authorization_endpoint": f"{issuer}/device_authorization",
            "introspection_endpoint": f"{issuer}/introspect",
            "revocation_endpoint": f"{issuer}/revoke",
            "jwks_uri": f"{issuer}/jwks",
            "grant_types_supported": [
                "client_credentials",
                "refresh_token",
                *list(grants.GRANTS)[2:],
            ],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": sorted(
                {s for c in self.server.authority.clients.values() for s in c.scopes}
            ),
        }

    def authorize(self, query: dict[str, str]) -> None:
        try:
            location = browser.authorize(self.server.authority, query)
        except browser.BadAuthorization as exc:
            self.send_html(400, f"<p>{html.escape(str(exc))}</p>")
            return
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def device_page(self, user_code: str, note: str) -> str:
        code = html.escape(user_code, quote=True)
        return (
            f"<h1>Approve a device</h1><p>{html.escape(note)}</p>"
            '<form method="post" action="/device">'
            f'<label>Code <input name="user_code" value="{code}"></label> '
            '<label>Mailbox <input name="user" type="email"></label> '
            '<button name="decision" value="approve">Approve</button> '
            '<button name="decision" value="deny">Deny</button></form>'
        )

    def device_post(self) -> None:
        form = self.form()
        deny = form.get("decision") == "deny"
        try:
            grants.decide_device(
                self.server.authority, form.get("user_code", ""), form.get("user"), deny=deny
            )
        except ValueError as exc:
            self.send_html(400, self.device_page(form.get("user_code", ""), str(exc)))
            return
        self.send_html(200, "<p>Denied.</p>" if deny else "<p>Done: return to your device.</p>")

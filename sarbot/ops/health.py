"""The status endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

A small threaded HTTP server, bound to the configured address, runs beside the
daemon and can be stopped cleanly.  ``/healthz`` answers 200 when sarbot is
healthy and 503 when it is not, with the same small JSON body either way.
Neither page carries personal data, and neither needs to be reachable from
outside the host: bind it to a private address.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from structlog.typing import FilteringBoundLogger

from sarbot.errors import ConfigError
from sarbot.ops.metrics import Metrics

HEALTH_CONTENT_TYPE = "application/json"
CLIENT_TIMEOUT = 10.0


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    body: dict[str, Any]


class HealthCheck:
    """Whether the daemon is doing its job: the database answers and the mailbox is read.

    Unhealthy when the database check raises, when no poll has completed for
    ``stale_after`` seconds (counted from the start until the first one), or when
    the IMAP session has been down for longer than that (only for the instance that reads
    the mailbox, when several share a database), or while a login by token fails
    (the SMTP login's trouble shows nowhere else, as its notice cannot be sent).
    """

    def __init__(
        self, metrics: Metrics, database: Callable[[], object], *, stale_after: float
    ) -> None:
        self.metrics = metrics
        self.database = database
        self.stale_after = stale_after

    def __call__(self) -> HealthReport:
        now = self.metrics.clock()
        mailbox = self.metrics.mailbox
        problems: list[str] = []
        error: str | None = None
        try:
            self.database()
        except Exception as exc:  # its message may name the database or hold data: type only
            error = type(exc).__name__
            problems.append(f"database check failed: {error}")
        quiet = (now - (mailbox.last_poll or mailbox.started_at)).total_seconds()
        if mailbox.reader and quiet > self.stale_after:
            problems.append(f"no completed mailbox poll for {quiet:.0f} s")
        down = (now - mailbox.since).total_seconds()
        if mailbox.reader and not mailbox.connected and down > self.stale_after:
            problems.append(f"IMAP session down for {down:.0f} s")
        logins = self.metrics.logins()
        problems.extend(f"{t.login.upper()} login failing ({t.cause})" for t in logins)
        body: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "checked_at": _iso(now),
            "database": {"ok": error is None, "error": error},
            "imap": {"connected": mailbox.connected, "since": _iso(mailbox.since)},
            "reads_mailbox": mailbox.reader,
            "last_poll": _iso(mailbox.last_poll),
            "logins_failing": {t.login: t.cause for t in logins},
            "stale_after_seconds": self.stale_after,
            "problems": problems,
        }
        return HealthReport(not problems, body)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


class StatusServer:
    """``/metrics`` and ``/healthz`` over HTTP in a background thread."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Callable[[], HealthReport],
        *,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.metrics = metrics
        self.health = health
        self.log: FilteringBoundLogger = log or structlog.get_logger("sarbot")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the requested one, or the one the system chose for 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve; raises ConfigError if the address cannot be bound."""
        if self._server is not None:
            return
        try:
            server = _Server(self.host, self.requested_port, _handler(self))
        except OSError as exc:
            where = f"{self.host}:{self.requested_port}"
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"[metrics] cannot listen on {where}: {reason}") from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="sarbot-status", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path``."""
        path = path.partition("?")[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            report = self.health()
            body = json.dumps(report.body, sort_keys=True).encode() + b"\n"
            return (200 if report.healthy else 503), HEALTH_CONTENT_TYPE, body
        return 404, "text/plain; charset=utf-8", b"not found\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS, which may hang; it is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def _handler(status: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT
        server_version = "sarbot"
        sys_version = ""

        def do_GET(self) -> None:
            try:
                code, content_type, body = status.respond(self.path)
            except Exception as exc:  # a bug must not kill the server; its message may hold data
                status.log.error("status.error", error_type=type(exc).__name__)
                code, content_type, body = 500, "text/plain; charset=utf-8", b"error\n"
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per scrape on stderr is noise; errors are logged above

    return Handler

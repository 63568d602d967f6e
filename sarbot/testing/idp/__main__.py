"""``python -m sarbot.testing.idp --port 10080 --state DIR``: run the test identity provider."""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
from pathlib import Path
from types import FrameType

from .server import Server
from .state import DEFAULT_ACCESS_LIFETIME, Authority


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sarbot.testing.idp",
        description="A small OAuth 2.0 identity provider on loopback, for tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="folder of clients.json")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: also answer HTTPS")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    parser.add_argument("--pid-file", type=Path, help="written once the port is bound")
    parser.add_argument(
        "--access-lifetime",
        type=int,
        default=DEFAULT_ACCESS_LIFETIME,
        help="seconds an access token lives (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("give --tls-cert and --tls-key together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    authority = Authority(args.state, access_lifetime=args.access_lifetime)
    authority.load()
    tls = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        server = Server(args.host, args.port, authority, tls)
    except OSError as exc:
        print(f"idp: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.pid_file is not None:
        args.pid_file.write_text(f"{os.getpid()}\n")
    scheme = "http and https" if tls else "http"
    print(
        f"idp: listening on {args.host}:{args.port} ({scheme}), "
        f"{len(authority.clients)} clients from {authority.clients_file}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real database servers for the tests, started in private folders on loopback.

A server that cannot start fails the test that needs it, loudly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServerError(RuntimeError):
    """A test server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServerError("PostgreSQL is not installed (scripts/bootstrap installs it)")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """Run as the postgres user when root: PostgreSQL refuses to run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL cluster; yields an SQLAlchemy URL to its ``postgres`` database."""
    bin_dir = _postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="sarbot-pg-"))
    data, port = base / "data", free_port()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    log = base / "server.log"
    try:
        _run(
            _as_postgres(
                [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
            )
        )
        _run(
            _as_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start",
                ]
            ),
            log=log,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


def _run(argv: list[str], log: Path | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise ServerError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}\n{tail}")


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ServerError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")

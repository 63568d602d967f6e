"""Real database servers for the tests, started in private folders on loopback.

A server that cannot start fails the test that needs it, loudly.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError


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
    with PostgresServer() as server:
        yield server.url


class PostgresServer:
    """A throw-away PostgreSQL cluster that a test can stop and start again (same data, port).

    Use it as a context manager: the cluster is made and started on entry and
    removed on exit, whether it is running then or not.
    """

    def __init__(self) -> None:
        self.bin_dir = _postgres_bin()
        self.base = Path(tempfile.mkdtemp(prefix="sarbot-pg-"))
        self.data, self.port = self.base / "data", free_port()
        self.log = self.base / "server.log"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> PostgresServer:
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam("postgres")
                os.chown(self.base, user.pw_uid, user.pw_gid)
            initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust"]
            _run(_as_postgres([*initdb, "-U", "postgres"]))
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.running:
            self._pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", str(self.log), "-w", "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        """Stop the server: open sessions are ended, new connections refused."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block, and running again however the block ends."""
        self.stop()
        try:
            yield
        finally:
            if not self.running:
                self.start()

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        argv = _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args])
        if check:
            _run(argv, log=self.log)
        else:
            subprocess.run(argv, capture_output=True, check=False)


def _mariadb_bin(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    raise ServerError(f"MariaDB is not installed (scripts/bootstrap installs it): no {names[0]}")


def _mysql_user() -> pwd.struct_passwd:
    """MariaDB refuses to run as root; as root, it runs as the mysql user."""
    try:
        return pwd.getpwnam("mysql")
    except KeyError:
        raise ServerError("there is no mysql user to run MariaDB as") from None


@contextmanager
def mariadb_server() -> Iterator[str]:
    """A throw-away MariaDB server; yields an SQLAlchemy URL to a fresh utf8mb4 database.

    The database belongs to a user with a random password, reached over TCP on
    loopback.  MariaDB's root account logs in only through the private socket.
    """
    install_db = _mariadb_bin(("mariadb-install-db", "mysql_install_db"))
    server = _mariadb_bin(("mariadbd", "mysqld"))
    owner = _mysql_user() if os.geteuid() == 0 else None
    as_user = ["--user=mysql"] if owner else []
    base = Path(tempfile.mkdtemp(prefix="sarbot-mariadb-"))
    if owner:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port, password = base / "data", free_port(), secrets.token_hex(16)
    log = base / "server.log"
    setup = base / "setup.sql"
    # Bootstrap runs without grant tables; FLUSH PRIVILEGES loads them so CREATE USER works.
    setup.write_text(
        "FLUSH PRIVILEGES;\n"
        "CREATE DATABASE sarbot_test CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci;\n"
        f"CREATE USER 'sarbot'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
        "GRANT ALL PRIVILEGES ON sarbot_test.* TO 'sarbot'@'127.0.0.1';\n"
    )
    process: subprocess.Popen[bytes] | None = None
    try:
        _run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                *as_user,
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                f"--extra-file={setup}",
            ]
        )
        with open(base / "server.out", "wb") as output:
            process = subprocess.Popen(
                [
                    server,
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--socket={base / 'mysqld.sock'}",
                    f"--pid-file={base / 'mysqld.pid'}",
                    f"--port={port}",
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    f"--log-error={log}",
                    "--innodb-flush-log-at-trx-commit=0",
                    *as_user,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        url = f"mysql+pymysql://sarbot:{password}@127.0.0.1:{port}/sarbot_test"
        _wait_for_mariadb(url, process, log)
        yield url
    finally:
        if process is not None:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_mariadb(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise ServerError(f"mariadbd exited with {process.returncode}:\n{tail}")
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServerError(f"MariaDB did not accept connections: {exc}") from None
            time.sleep(0.2)
    finally:
        engine.dispose()


def _run(argv: list[str], log: Path | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise ServerError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}\n{tail}")

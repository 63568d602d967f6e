"""Access logs: one person's lookup by the ``access_log`` connector against ``grep -F``.

    .venv/bin/python -m bench access_logs [--scale smoke|full]

Generates about 1 GiB (``full``) or 3 MiB (``smoke``) of nginx and Apache combined logs, an
sshd/sudo ``auth.log`` and a ``syslog`` with VPN and other daemons' lines, each rotated
(``access.log``, ``access.log.1``, ``access.log.2.gz``, ...), the older files gzip-compressed.
One person (an address, a login, an IP address) is sprinkled through them, each form once in
every generated chunk (about one line in two thousand): the login in any case, the address
in a query string URL-encoded and in mixed case, which ``grep -F`` does not find, and lines
the connector passes over on purpose (systemd-logind, OpenVPN), which grep does.

The lookup is the one the collect step makes: ``collect()`` of the connector for an identity
holding the person's address and login.  Its baseline is ``grep -F`` (plain files) and
``zgrep -F`` (gzip files) for the same two values over the same files, run as subprocesses in
the same run.  Both are timed after a warm-up read (the files are in the page cache), fastest
of 3.  The search is cold in the sense of the goal: no index, every byte of every file read,
decompressed where compressed, and searched.  Inflating alone is timed too: the gzip files
read as the connector reads them (ISA-L) against Python's ``gzip`` module (zlib).

Then the optional index (``index_dir``): built once over every file (its time, and its size
against the logs' text), and the same lookup through it (the index first brought up to date,
nothing having changed), against the same ``grep -F``, with the goal of under a second; and
a lookup that finds nothing, the index's fixed cost.  The indexed lookup's records are
checked to equal the scan's.
"""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from io import BufferedIOBase
from pathlib import Path

from bench.common import Row, Scale, fastest
from connectors.access_log import AccessLogConnector, AccessLogSettings
from connectors.logindex import LogIndex
from connectors.logscan import BLOCK_BYTES, open_log
from sarbot.config import validate
from sarbot.testing.identity import address, asked, login

EMAIL = "alice.liddell@example.test"
USERNAME = "aliddell"
PERSON_IP = "192.0.2.77"
SIZES: dict[Scale, int] = {"full": 1 << 30, "smoke": 3 << 20}
CHUNKS: dict[Scale, int] = {"full": 2 << 20, "smoke": 128 << 10}
"""The generated text of one kind of log, written as many times as its share of SIZES needs."""
GOAL = "<= 2x (>= 0.5x grep's throughput)"
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
PATHS = (
    "/", "/index.php", "/wp-login.php", "/api/v2/orders/{n}", "/static/app.{n}.js",
    "/search?q=invoice%20{n}&page=2", "/docs/R%C3%A9sum%C3%A9-{n}.pdf", "/img/logo.png",
    "/account/settings", "/api/lookup?id={n}", "/download?file=report%2F{n}.csv",
)  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """One rotated log: its folder and name, its format, and its share of the bytes."""

    stem: str
    format: str
    label: str
    share: float
    rotations: int


KINDS = (
    Kind("nginx/access.log", "combined", "Portal (nginx)", 0.45, 5),
    Kind("apache2/other_vhosts_access.log", "combined", "Intranet (Apache)", 0.20, 4),
    Kind("auth.log", "auth", "SSH and sudo on gw1", 0.25, 4),
    Kind("syslog", "auth", "VPN gateway", 0.10, 3),
)


def run(scale: Scale) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="sarbot-bench-logs-") as folder:
        base = Path(folder)
        rng = random.Random(17)
        files = generate(base, SIZES[scale], CHUNKS[scale], rng)
        plain = [f for f in files if f.suffix != ".gz"]
        packed = [f for f in files if f.suffix == ".gz"]
        size = sum(_size(f) for f in files)
        for path in files:  # the warm-up read: every file in the page cache
            with path.open("rb") as stream:
                while stream.read(1 << 20):
                    pass
        rows = []
        for work, chosen in (("all files", files), ("plain files", plain), ("gzip", packed)):
            records = _lookup(base, chosen)
            matched = _grep(chosen)
            measured = fastest(3, partial(_lookup, base, chosen))
            baseline = fastest(3, partial(_grep, chosen))
            share = sum(_size(f) for f in chosen)
            note = (
                f"{share / 2**20:,.0f} MiB, {_count_lines(chosen) / 1e6:.2f} M lines, "
                f"{len(chosen)} files; {len(records)} records, grep {matched} lines; files cached, "
                "fastest of 3"
            )
            if work == "all files":
                note += f" ({len(packed)} gzip files, {sum(map(_size, packed)) / size:.0%})"
            rows.append(Row(f"access_log lookup, {work}", measured, baseline, "s", GOAL, note))
        rows.append(
            Row(
                "access_log lookup, all files, against grep -F -i (case-insensitive, as sarbot)",
                rows[0].measured,
                fastest(3, lambda: _grep(files, "-i")),
                "s",
                GOAL,
                "files cached, fastest of 3",
            )
        )
        rows.append(
            Row(
                "inflating the gzip files, as the connector reads them (ISA-L)",
                fastest(3, partial(_inflate, packed, open_log)),
                fastest(3, partial(_inflate, packed, _zlib)),
                "s",
                "",
                f"{sum(map(_size, packed)) / 2**20:,.0f} MiB of text; baseline: Python's gzip "
                "module (zlib); 128 KiB reads; fastest of 3",
            )
        )
        rows.extend(_indexed(base, files, rows))
        return rows


Opener = Callable[[Path], AbstractContextManager[BufferedIOBase]]


def _inflate(files: list[Path], opener: Opener) -> int:
    """Every byte of the files' text, read as a scan reads it."""
    total = 0
    for path in files:
        with opener(path) as stream:
            while block := stream.read(BLOCK_BYTES):
                total += len(block)
    return total


def _zlib(path: Path) -> gzip.GzipFile:
    return gzip.GzipFile(path, "rb")


def _indexed(base: Path, files: list[Path], scanned: list[Row]) -> list[Row]:
    """The optional index: built over every file, its size, and the person's lookup through
    it against grep -F over the same files (and against the scan)."""
    folder = base / "index"
    connector = _connector(base, files, folder)
    started = time.perf_counter()
    for source in connector.settings.sources:
        assert source.index_dir is not None
        index = LogIndex(source.index_dir, source.label, source.format)
        try:
            index.update(source.files())
        finally:
            index.close()
    built = time.perf_counter() - started
    size = sum(_size(f) for f in files)
    stored = sum(p.stat().st_size for p in folder.iterdir())
    lines = _count_lines(files)
    rows = [
        Row(
            "access_log index, built over all files (once)",
            built,
            None,
            "s",
            "",
            f"{lines / built / 1e3:,.0f} k lines/s; {size / built / 2**20:,.1f} MiB/s",
        ),
        Row(
            "access_log index size, against the logs' text",
            stored / 2**20,
            size / 2**20,
            "MiB",
            "",
            f"{stored / size:.0%} of the text, {stored / lines:.1f} bytes a line",
        ),
    ]
    nobody = fastest(3, partial(_lookup, base, files, folder, "nobody@example.test"))
    note = "nothing found: the fingerprints checked, the tokens searched; fastest of 3"
    rows.append(
        Row(
            "access_log lookup, indexed, all files, a person in none",
            nobody,
            None,
            "s",
            "< 1 s",
            note,
        )
    )
    plain = [f for f in files if f.suffix != ".gz"]
    for work, chosen, grep_row in (("all files", files, 0), ("plain files", plain, 1)):
        records = _lookup(base, chosen, folder)
        if records != _lookup(base, chosen):
            raise RuntimeError("the indexed lookup found other records than the scan")
        measured = fastest(3, partial(_lookup, base, chosen, folder))
        note = (
            f"{len(records)} records (as the scan); scan {scanned[grep_row].measured:.2f} s; "
            "the index brought up to date first (nothing new); fastest of 3"
        )
        goal = "< 1 s (measured)"
        work = f"access_log lookup, indexed, {work}"
        rows.append(Row(work, measured, scanned[grep_row].baseline, "s", goal, note))
    return rows


def generate(base: Path, total: int, chunk_bytes: int, rng: random.Random) -> list[Path]:
    """The logs, about ``total`` bytes uncompressed: per kind, one generated chunk written as
    many times as its share needs, the older rotations gzip-compressed (one gzip member per
    chunk, as a concatenation of gzip files is one)."""
    files = []
    for kind in KINDS:
        chunk = _chunk(kind, chunk_bytes, rng)
        packed = gzip.compress(chunk, compresslevel=6)
        per_file = max(1, round(total * kind.share / kind.rotations / len(chunk)))
        for rotation in range(kind.rotations):
            suffix = "" if rotation == 0 else f".{rotation}" + (".gz" if rotation >= 2 else "")
            path = base / f"{kind.stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                for _ in range(per_file):
                    out.write(packed if suffix.endswith(".gz") else chunk)
            files.append(path)
    return files


def _chunk(kind: Kind, chunk_bytes: int, rng: random.Random) -> bytes:
    lines: list[str] = []
    size = 0
    while size < chunk_bytes:
        n = len(lines)
        line = _web_line(n, rng) if kind.format == "combined" else _syslog_line(kind, n, rng)
        lines.append(line)
        size += len(line) + 1
    for line in _person_lines(kind, len(lines), rng):
        lines.insert(rng.randrange(len(lines) + 1), line)
    return "".join(line + "\n" for line in lines).encode()


def _stamp(n: int) -> tuple[str, str]:
    hour, minute, second = n // 3600 % 24, n // 60 % 60, n % 60
    return f"01/Mar/2026:{hour:02d}:{minute:02d}:{second:02d} +0100", (
        f"Mar  1 {hour:02d}:{minute:02d}:{second:02d}"
    )


def _web_line(n: int, rng: random.Random) -> str:
    ip = f"{rng.choice((198, 203, 100))}.{rng.randrange(256)}.{rng.randrange(256)}.{n % 250}"
    user = f"u{rng.randrange(5000)}" if rng.random() < 0.15 else "-"
    path = rng.choice(PATHS).format(n=rng.randrange(100_000))
    status = rng.choice((200, 200, 200, 200, 304, 301, 404, 500))
    referer = rng.choice(("-", "https://portal.example.test/", "https://www.google.com/"))
    return (
        f'{ip} - {user} [{_stamp(n)[0]}] "GET {path} HTTP/1.1" {status} {rng.randrange(90_000)} '
        f'"{referer}" "{rng.choice(AGENTS)}"'
    )


def _syslog_line(kind: Kind, n: int, rng: random.Random) -> str:
    stamp, other = _stamp(n)[1], f"user{rng.randrange(3000)}"
    ip = f"198.51.{rng.randrange(256)}.{rng.randrange(256)}"
    pid = rng.randrange(1000, 99_999)
    if kind.stem == "syslog":
        message = rng.choice((
            f"openvpn[{pid}]: {other}/{ip}:{rng.randrange(65536)} MULTI_sva: pool returned "
            f"IPv4=10.8.{rng.randrange(256)}.{rng.randrange(256)}",
            f"CRON[{pid}]: ({other}) CMD (/usr/local/bin/backup --incremental)",
            f"systemd[1]: Started session-{pid}.scope - Session {pid} of User {other}.",
            f"kernel: [UFW BLOCK] IN=eth0 OUT= SRC={ip} DST=192.0.2.1 PROTO=TCP DPT=23",
            f"dhclient[{pid}]: DHCPACK of 10.0.{rng.randrange(256)}.7 from 10.0.0.1",
        ))  # fmt: skip
        if rng.randrange(2000) == 0:  # now and then a daemon writes in the local language
            message = f"systemd[1]: Démarrage de la session {pid} de l'utilisateur {other}…"
    else:
        message = rng.choice((
            f"sshd[{pid}]: Accepted publickey for {other} from {ip} port {pid} ssh2: ED25519 "
            "SHA256:q0mX0bXyVb1r4ndomF1ngerpr1nt",
            f"sshd[{pid}]: Failed password for invalid user admin from {ip} port {pid} ssh2",
            f"sshd[{pid}]: pam_unix(sshd:session): session opened for user {other}"
            f"(uid=1{pid % 999}) by (uid=0)",
            f"sshd[{pid}]: Disconnected from user {other} {ip} port {pid}",
            f"CRON[{pid}]: pam_unix(cron:session): session closed for user root",
            f"sudo:  {other} : TTY=pts/1 ; PWD=/home/{other} ; USER=root ; COMMAND=/usr/bin/apt"
            " upgrade",
            f"systemd-logind[{pid % 900}]: New session {pid} of user {other}.",
        ))  # fmt: skip
    return f"{stamp} gw1 {message}"


def _person_lines(kind: Kind, n: int, rng: random.Random) -> tuple[str, ...]:
    """Every form the person takes in this kind of log, one line each."""
    web, syslog = _stamp(n)
    visitor = f"203.0.113.{rng.randrange(256)}"
    if kind.format == "combined":
        return (
            f'{PERSON_IP} - {USERNAME} [{web}] "GET /account/settings HTTP/1.1" 200 512 "-" "x"',
            f'{PERSON_IP} - {USERNAME.upper()} [{web}] "POST /login HTTP/1.1" 302 0 "-" "x"',
            f'{visitor} - - [{web}] "GET /unsubscribe?email=alice.liddell%40example.test&l=news'
            ' HTTP/1.1" 200 42 "-" "x"',
            f'{visitor} - - [{web}] "GET /api/lookup?email=Alice.Liddell%40Example.Test '
            'HTTP/1.1" 200 42 "-" "x"',
            f'{visitor} - - [{web}] "GET /r?to=%61lice.liddell%40example%2Etest HTTP/1.1" 301 0'
            ' "-" "x"',
            f'{PERSON_IP} - {EMAIL} [{web}] "GET /wiki HTTP/2.0" 200 99 "-" "x"',
        )  # fmt: skip
    if kind.stem == "syslog":
        return (
            f"{syslog} gw1 openvpn[77]: {USERNAME}/{PERSON_IP}:51234 MULTI_sva: pool returned"
            " IPv4=10.8.0.6",
            f"{syslog} gw1 sshd[78]: Accepted password for {USERNAME} from {PERSON_IP} port 5 ssh2",
        )  # fmt: skip
    return (
        f"{syslog} gw1 sshd[79]: Accepted publickey for {USERNAME} from {PERSON_IP} port 6 ssh2",
        f"{syslog} gw1 sshd[80]: Failed password for {USERNAME.upper()} from {visitor} port 7 ssh2",
        f"{syslog} gw1 sshd[81]: pam_unix(sshd:session): session opened for user {USERNAME}"
        "(uid=1042) by (uid=0)",
        f"{syslog} gw1 sudo: {USERNAME} : TTY=pts/0 ; PWD=/home/{USERNAME} ; USER=root ;"
        " COMMAND=/usr/bin/systemctl restart nginx",
        f"{syslog} gw1 systemd-logind[82]: New session 4 of user {USERNAME}.",
    )  # fmt: skip


def _connector(base: Path, files: list[Path], index: Path | None = None) -> AccessLogConnector:
    sources: list[dict[str, object]] = []
    for kind in KINDS:
        paths = [str(f) for f in files if str(f.relative_to(base)).startswith(kind.stem)]
        if paths:
            sources.append({"paths": paths, "format": kind.format, "label": kind.label})
            if index is not None:
                sources[-1]["index_dir"] = str(index)
    settings = validate({"sources": sources}, AccessLogSettings, source="bench", base_dir=base)
    assert isinstance(settings, AccessLogSettings)
    return AccessLogConnector("logs", settings)


def _lookup(
    base: Path, files: list[Path], index: Path | None = None, email: str = EMAIL
) -> list[object]:
    """The person's lookup, as the collect step makes it (through the index, if given)."""
    namespaces = [f"access_log:logs/{kind.label}" for kind in KINDS]
    identity = asked(address(email), login(USERNAME if email == EMAIL else "nobody", *namespaces))
    connector = _connector(base, files, index)
    try:
        return list(connector.collect(identity))
    finally:
        connector.close()


def _grep(files: list[Path], *options: str) -> int:
    """The lines holding either value, by grep -F over plain files and zgrep -F over gzip."""
    matched = 0
    plain = [str(f) for f in files if f.suffix != ".gz"]
    packed = [str(f) for f in files if f.suffix == ".gz"]
    for tool, chosen in (("grep", plain), ("zgrep", packed)):
        if not chosen:
            continue
        command = [_tool(tool), "-F", "-h", "-c", *options, "-e", USERNAME, "-e", EMAIL]
        done = subprocess.run([*command, *chosen], capture_output=True, text=True, check=False)
        if done.returncode > 1:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip()}")
        matched += sum(int(count) for count in done.stdout.split())
    return matched


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


def _size(path: Path) -> int:
    """The bytes of the log's text (a gzip file's, uncompressed)."""
    return path.stat().st_size if path.suffix != ".gz" else _inflate([path], _zlib)


def _count_lines(files: list[Path]) -> int:
    count = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            count += sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
    return count

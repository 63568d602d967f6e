"""Faults on sarbot's own machine: a full export disk, and SIGTERM in the middle of an export."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sarbot.store.states import MailKind, RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from tests.conftest import CA_FILE, BotFactory, unique
from tests.crashkit import SETTLE_SECONDS
from tests.test_cli import write_config

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB filesystem, loop-mounted (the tests run as root), to fill up."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as out:
        out.truncate(8 * 1024 * 1024)
    for argv in (
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop", str(image), str(mount)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed: {result.stderr}", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run([shutil.which("umount") or "/usr/bin/umount", str(mount)], check=False)


ROOM_LEFT = 256 * 1024  # what the filler leaves free on the tiny disk


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def bulky_store(path: Path, email: str, rows: int, width: int = 400) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, email TEXT, detail TEXT)")
        conn.executemany(
            "INSERT INTO events (email, detail) VALUES (?, ?)",
            [(email, os.urandom(width // 2).hex()) for _ in range(rows)],
        )
    return f"sqlite:///{path}"


def events_connector(url: str) -> dict[str, object]:
    return {
        "name": "events",
        "type": "sql",
        "url": url,
        "queries": [
            {
                "name": "events",
                "category": "Event",
                "key": "id",
                "sql": "SELECT id, email, detail FROM events WHERE email = :email",
                "verify": "email",
            }
        ],
    }


class TestFullDisk:
    def test_a_full_export_disk_retries_tells_operators_and_sends_no_truncated_zip(
        self, make_bot: BotFactory, person: Person, tiny_disk: Path, tmp_path: Path
    ) -> None:
        """ENOSPC while writing the answer: retried later, operators told, nothing half-sent."""
        alice = person("alice", "example.test")
        dpo = Correspondent(alice.server, unique("dpo", "redtrain.test"))
        store = bulky_store(tmp_path / "store.db", alice.address, rows=2500)
        bot = make_bot(
            connectors=[events_connector(store)],
            storage={"export_dir": str(tiny_disk / "exports")},
            notifications={"operators": [dpo.address], "digest_hour": 23},
        )
        filler = tiny_disk / "filler"
        filler.write_bytes(b"\0" * (free_bytes(tiny_disk) - ROOM_LEFT))
        assert free_bytes(tiny_disk) < 2 * ROOM_LEFT  # far less than the export needs
        alice.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        alice.reply(alice.wait_for(ACK))
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.COLLECTING
        assert (request.last_error or "").startswith("cannot write the export: No space left")
        assert request.next_attempt_at is not None
        assert sorted(p.name for p in tiny_disk.iterdir()) == ["exports", "filler", "lost+found"]
        assert list((tiny_disk / "exports").iterdir()) == []  # no partial file left
        assert [m.kind for m in bot.outgoing() if m.kind is MailKind.EXPORT] == []
        dpo.wait_for(subject_contains("keeps failing"))
        filler.unlink()  # someone makes room
        bot.offset = timedelta(minutes=6)
        bot.run_once()
        export = alice.wait_for(EXPORT)
        [part] = list(export.iter_attachments())
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            assert len(json.loads(archive.read("data.json"))["sources"][0]["records"]) == 2500
        assert bot.request().state is RequestState.DELIVERED


class TestSigterm:
    def test_sigterm_during_a_large_export_sends_it_once(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """SIGTERM while an export is being made: it is finished, or finished at the next start."""
        support = unique("support", "redtrain.test")
        config = write_config(tmp_path, support)
        alice = Correspondent(MailServer(ca_file=str(CA_FILE)), unique("alice", "example.test"))
        store = bulky_store(tmp_path / "store.db", alice.address, rows=20000, width=200)
        query = "SELECT id, email, detail FROM events WHERE email = :email"
        with config.open("a") as out:
            out.write(
                '\n[[connectors]]\nname = "events"\ntype = "sql"\n'
                f'url = "{store}"\n[[connectors.queries]]\nname = "events"\ncategory = "Event"\n'
                f'key = "id"\nverify = "email"\nsql = "{query}"\n'
            )
        sarbot = [sys.executable, "-m", "sarbot", "--config", str(config)]
        subprocess.run([*sarbot, "db", "upgrade"], check=True, capture_output=True)
        alice.send(support, "GDPR DATA REQUEST")
        supportbox = Correspondent(alice.server, support)
        supportbox.wait_for(subject_contains("GDPR"))
        subprocess.run([*sarbot, "run", "--once"], check=True, capture_output=True)
        alice.reply(alice.wait_for(ACK))
        supportbox.wait_for(subject_contains("Re: [SAR-"))
        log = tmp_path / "daemon.log"
        with log.open("w") as out:
            daemon = subprocess.Popen([*sarbot, "run"], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_line(log, '"connector.collected"', timeout=60)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=120) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
        subprocess.run([*sarbot, "run", "--once"], check=True, capture_output=True)
        alice.wait_for(EXPORT)
        time.sleep(SETTLE_SECONDS)  # a second copy would be on its way by now
        assert len([m for m in alice.messages() if EXPORT(m)]) == 1
        assert list((tmp_path / "exports").iterdir()) == []
        verified = subprocess.run([*sarbot, "audit", "verify"], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout
        assert '"daemon.stopping"' in log.read_text()


def _wait_for_line(path: Path, needle: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"{needle} never appeared in {path}:\n{path.read_text()[-2000:]}")

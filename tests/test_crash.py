"""Nothing lost, nothing sent twice: sarbot killed with SIGKILL, then checked.

Each test runs the real daemon as a subprocess against the real mail stack.
The crash-point tests arm one point of ``sarbot.faults`` (a real SIGKILL at a
chosen moment), restart the daemon unarmed and check every invariant; the
random test kills the daemon at least 20 times while 50 requests go through.
The migration test needs no mail: it kills ``sarbot db upgrade`` between two
migrations.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import zipfile
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from sarbot.export.archive import pack
from sarbot.store import db
from sarbot.store.models import OutgoingMail
from sarbot.store.states import MailKind, MailState
from sarbot.testing import MailServer
from tests.conftest import unique
from tests.crashkit import (
    SEED_VARIABLE,
    Attribution,
    Findings,
    Plan,
    Requester,
    Site,
    export_problems,
    run_armed,
    run_with_kills,
)

REVISIONS = [r.revision for r in ScriptDirectory(str(files("migrations"))).walk_revisions()][::-1]
MIGRATIONS = len(REVISIONS)


def one_person(*, big: bool = False) -> list[Requester]:
    """One requester; a big one's export is split into several zips."""
    address = unique("crash", "example.test")
    return [Requester(address, 20, 10_000) if big else Requester(address, 3, 500)]


def assert_sound(findings: Findings) -> None:
    assert findings.failures == [], findings.report()


def schema(path: Path) -> list[tuple[str, str, list[str]]]:
    """Every table, index and trigger, with its definition's lines in sorted order.

    Alembic's batch mode writes a rebuilt table's constraints in no fixed order,
    so two clean upgrades can differ in that order alone.
    """
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    connection.close()
    return [
        (str(kind), str(name), sorted(line.strip().rstrip(",") for line in str(sql).splitlines()))
        for kind, name, sql in rows
    ]


@pytest.mark.mailstack
class TestCrashPoints:
    def test_kill_before_the_request_commits(self, tmp_path: Path, mailstack: MailServer) -> None:
        """A request fetched but not committed is read again; one request, one ack, one export."""
        seen: dict[str, object] = {}
        findings = run_armed(
            tmp_path,
            mailstack,
            one_person(),
            "intake.before_commit",
            on_crash=lambda site: seen.update(rows=site.query("SELECT count(*) FROM requests")),
        )
        assert_sound(findings)  # first: it also says if the daemon never died there
        assert seen["rows"] == [(0,)]  # the kill rolled the request back
        assert (findings.duplicate_acks, findings.duplicate_exports) == (0, 0)

    def test_kill_before_the_confirmation_commits(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """A confirmation fetched but not committed is read again and confirms the request."""
        seen: dict[str, object] = {}
        findings = run_armed(
            tmp_path,
            mailstack,
            one_person(),
            "intake.before_commit:2",
            on_crash=lambda site: seen.update(states=site.query("SELECT state FROM requests")),
        )
        assert_sound(findings)
        assert seen["states"] == [("awaiting_confirmation",)]
        assert (findings.duplicate_acks, findings.duplicate_exports) == (0, 0)

    def test_kill_after_moving_handled_mail(self, tmp_path: Path, mailstack: MailServer) -> None:
        """Mail moved to the processed folder before the database knew is not moved twice."""
        seen: dict[str, object] = {}
        findings = run_armed(
            tmp_path,
            mailstack,
            one_person(),
            "intake.moved",
            on_crash=lambda site: seen.update(
                pending=site.query("SELECT count(*) FROM seen_messages WHERE move_pending")
            ),
        )
        assert_sound(findings)
        assert seen["pending"] == [(1,)]
        # The acknowledgement queued by the request's commit is sent alongside the move: the
        # kill may fall in its send window, and then it may arrive twice (the crash rule,
        # which assert_sound checks against the logs). Nothing else may.
        assert findings.duplicate_acks <= 1 and findings.duplicate_exports == 0

    def test_kill_after_smtp_accepted_the_acknowledgement(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """The acknowledgement goes out again, once, the very same message; the rest once."""
        findings = run_armed(tmp_path, mailstack, one_person(), "deliver.accepted")
        assert_sound(findings)
        assert (findings.duplicate_acks, findings.duplicate_exports) == (1, 0)

    def test_kill_after_smtp_accepted_the_export(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """The export goes out again, once, from the same file, which is then deleted."""
        seen: dict[str, object] = {}
        findings = run_armed(
            tmp_path,
            mailstack,
            one_person(),
            "deliver.accepted:2",
            on_crash=lambda site: seen.update(files=sorted(os.listdir(site.export_dir))),
        )
        files_then = seen["files"]
        assert isinstance(files_then, list) and len(files_then) == 1
        assert_sound(findings)
        assert (findings.duplicate_acks, findings.duplicate_exports) == (0, 1)

    def test_kill_while_writing_an_export(self, tmp_path: Path, mailstack: MailServer) -> None:
        """A half-written multi-part export is swept, prepared again and sent whole, once."""
        seen: dict[str, object] = {}
        findings = run_armed(
            tmp_path,
            mailstack,
            one_person(big=True),
            "package.partial:2",
            on_crash=lambda site: seen.update(
                files=sorted(os.listdir(site.export_dir)),
                queued=site.query("SELECT count(*) FROM outgoing_mail WHERE kind = 'export'"),
            ),
        )
        assert_sound(findings)
        left = seen["files"]
        assert isinstance(left, list)
        assert sorted(name.endswith(".partial") for name in left) == [False, True], left
        assert seen["queued"] == [(0,)]
        assert (findings.duplicate_acks, findings.duplicate_exports) == (0, 0)


def revision(path: Path) -> str | None:
    """The schema revision a database file records, or None."""
    with sqlite3.connect(path) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        rows = (
            connection.execute("SELECT version_num FROM alembic_version").fetchall()
            if ("alembic_version",) in tables.fetchall()
            else []
        )
        found = str(rows[0][0]) if rows else None
    connection.close()
    return found


@pytest.fixture(scope="module")
def clean_schema(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, list[str]]]:
    """The schema of a database upgraded without a crash."""
    return schema(Site(tmp_path_factory.mktemp("clean"), [], seed=0).state_db)


class TestMigrationCrash:
    @pytest.mark.parametrize("after", range(1, MIGRATIONS + 1))
    def test_upgrade_killed_between_migrations_completes_on_rerun(
        self, tmp_path: Path, after: int, clean_schema: list[tuple[str, str, list[str]]]
    ) -> None:
        """``db upgrade`` killed after any migration: the next upgrade gives the clean schema."""
        site = Site(tmp_path, [], seed=0, migrate=False)
        killed = site.cli("db", "upgrade", crash_at=f"migration:{after}")
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert revision(site.state_db) in {None, *REVISIONS[:after]}
        rerun = site.cli("db", "upgrade")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert rerun.stdout.strip() == f"database at revision {db.head_revision()}"
        assert schema(site.state_db) == clean_schema
        verified = site.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.mailstack
class TestRandomKills:
    def test_fifty_requests_through_twenty_kills(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """50 requests, 20+ random SIGKILLs: every request answered, copies only from kills."""
        seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(10**6))
        findings = run_with_kills(tmp_path, Plan(requests=50, kills=20, seed=seed), mailstack)
        print(findings.figures())
        assert findings.kills >= 20, findings.report()
        assert_sound(findings)


class TestTheChecks:
    def test_export_check_accepts_a_sound_export_and_names_damage(self) -> None:
        """A whole multi-part export passes; a cut, missing or foreign part is named."""
        when = datetime(2026, 1, 2, tzinfo=UTC)

        def export(seed: int) -> list[bytes]:
            data = random.Random(seed).randbytes(150_000).hex().encode()
            files = {"index.html": b"<p>report</p>", "data.json": data}
            return [
                p.data for p in pack(files, reference="SAR-1", generated_at=when, limit=100_000)
            ]

        parts = export(1)
        assert len(parts) > 2 and export_problems(parts) == []
        cut = [parts[0], parts[1][: len(parts[1]) // 2], *parts[2:]]
        assert export_problems(cut)[0].startswith("a zip does not open")
        assert "data.json is missing from the zips" in export_problems(parts[:-1])
        foreign = [parts[0], export(2)[1], *parts[2:]]
        assert export_problems(foreign) == ["the parts do not carry one and the same manifest"]
        assert export_problems([]) == ["no zip arrived"]

    def test_export_check_names_a_file_unlike_its_manifest_entry(self) -> None:
        """A zip whose member differs from the manifest's size and hash is named."""
        [part] = pack(
            {"data.json": b"[1]"}, reference="SAR-1", generated_at=datetime.now(UTC), limit=10**6
        )
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            manifest = archive.read("manifest.json")
        forged = io.BytesIO()
        with zipfile.ZipFile(forged, "w") as archive:
            archive.writestr("data.json", b"[2]")
            archive.writestr("manifest.json", manifest)
        assert export_problems([forged.getvalue()]) == [
            "data.json does not match its manifest entry"
        ]

    def test_a_copy_is_excused_only_by_a_kill_inside_its_send_window(self) -> None:
        """Kills before the outbox row or after it was marked sent excuse no copy."""
        queued = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
        mail = OutgoingMail(
            kind=MailKind.EXPORT,
            state=MailState.SENT,
            created_at=queued,
            sent_at=queued + timedelta(seconds=5),
        )
        kills = [queued + timedelta(seconds=s) for s in (-3, 1, 4, 9)]
        assert Attribution("SAR-1", [], kills).kills(mail) == 2

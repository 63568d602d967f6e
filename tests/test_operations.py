"""Running sarbot day to day: deadlines, the review queue, operator commands, notices, retention."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from sarbot.app import App
from sarbot.cli.main import cli
from sarbot.mail.mailer import Mailer
from sarbot.pipeline import Pipeline
from sarbot.steps.collect import ConnectorOutcome
from sarbot.store.audit import verify
from sarbot.store.deadlines import due_date, start_date
from sarbot.store.models import AuditEvent, OutgoingMail, Request
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import Correspondent, subject_contains
from tests.conftest import Bot, BotFactory, unique
from tests.test_outages import refusing

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")


def command(bot: Bot, *args: str, status: int = 0) -> str:
    """Run an operator command against the bot's database and config."""
    result = CliRunner().invoke(cli, args, obj={"app": bot.app, "config_path": bot.app.config_path})
    assert result.exit_code == status, result.output
    return result.output


def requested(bot: Bot, person: Person, *, confirm: bool = False) -> Correspondent:
    alice = person("alice", "example.test")
    alice.send(bot.address, "GDPR DATA REQUEST")
    bot.support.wait_for(subject_contains("GDPR"))
    bot.run_once()
    if confirm:
        alice.reply(alice.wait_for(ACK))
        bot.support.wait_for(subject_contains("Re: [SAR-"))
    return alice


def sent_by(requester: Correspondent, subject: str) -> Callable[[EmailMessage], bool]:
    """A message from the requester whose subject holds ``subject``."""
    return lambda m: subject in str(m["Subject"]) and requester.address in str(m["From"])


def set_due(bot: Bot, due: date) -> None:
    with bot.app.sessions.begin() as session:
        for request in session.scalars(select(Request)):
            request.due_on = due


class TestDeadlines:
    def test_the_clock_starts_at_confirmation(self, make_bot: BotFactory, person: Person) -> None:
        """The due date counts from the confirmation, the ICO's way, and `show` displays it."""
        bot = make_bot(connectors=[])
        requested(bot, person, confirm=True)
        bot.run_once()
        request = bot.request()
        calendar = bot.app.settings.deadlines.calendar()
        expected = due_date(
            start_date(request.received_at, request.confirmed_at, calendar), calendar
        )
        assert request.due_on == expected
        shown = json.loads(command(bot, "requests", "show", request.reference, "--json"))
        assert shown["due_on"] == expected.isoformat()

    def test_list_filters_overdue_and_due_soon(self, bot: Bot, person: Person) -> None:
        """--overdue and --due-within select open requests by their deadline."""
        requested(bot, person)
        today = bot.app.settings.deadlines.calendar().local_date(bot.now())
        set_due(bot, today + timedelta(days=5))
        assert len(json.loads(command(bot, "requests", "list", "--due-within", "7", "--json"))) == 1
        assert json.loads(command(bot, "requests", "list", "--due-within", "3", "--json")) == []
        assert json.loads(command(bot, "requests", "list", "--overdue", "--json")) == []
        set_due(bot, today - timedelta(days=1))
        [row] = json.loads(command(bot, "requests", "list", "--overdue", "--json"))
        assert row["state"] == "awaiting_confirmation"

    def test_extension_within_the_first_month_tells_the_requester(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """`extend` adds two months once, within the first month; the requester gets the reason."""
        bot = make_bot(
            connectors=[
                {
                    "name": "slow",
                    "type": "sql",
                    "url": "sqlite:///nowhere.db",
                    "queries": [
                        {
                            "name": "q",
                            "category": "c",
                            "sql": "SELECT 1 AS email WHERE :email = ''",
                            "verify": "email",
                        }
                    ],
                }
            ]
        )
        alice = requested(bot, person, confirm=True)
        bot.run_once()  # the connector fails: the request stays in collection
        reference = bot.request().reference
        output = command(
            bot, "requests", "extend", reference, "--reason", "Our archive is offline."
        )
        assert "now due" in output
        bot.run_once()
        notice = alice.wait_for(subject_contains("need more time"))
        assert "Our archive is offline." in notice.get_content()
        request = bot.request()
        assert request.extended_due_on is not None and request.deadline == request.extended_due_on
        assert "already extended" in command(
            bot, "requests", "extend", reference, "--reason", "x", status=1
        )

    def test_extension_after_the_first_month_is_refused(self, bot: Bot, person: Person) -> None:
        """Past the original due date, the deadline cannot be extended."""
        requested(bot, person, confirm=True)
        with bot.app.sessions.begin() as session:
            request = session.scalars(select(Request)).one()
            request.state = RequestState.COLLECTING
            request.due_on = date(2026, 1, 5)
            request.received_at = request.received_at - timedelta(days=60)
        reference = bot.request().reference
        output = command(bot, "requests", "extend", reference, "--reason", "x", status=1)
        assert "only be extended within its first month" in output


class TestOperatorCommands:
    def test_reject_tells_the_requester_why(self, bot: Bot, person: Person) -> None:
        """A rejected request gets a letter with the reason, and never an export."""
        alice = requested(bot, person)
        reference = bot.request().reference
        command(bot, "requests", "reject", reference, "--reason", "We cannot verify who you are.")
        bot.run_once()
        letter = alice.wait_for(subject_contains("About your data request"))
        assert "We cannot verify who you are." in letter.get_content()
        assert bot.request().state is RequestState.REJECTED
        alice.reply(alice.messages()[0])
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        assert not any(m.kind is MailKind.EXPORT for m in bot.outgoing())

    def test_a_rejected_requests_export_is_withdrawn_and_retry_cannot_send_it(
        self, bot: Bot, person: Person
    ) -> None:
        """Rejecting withdraws a waiting export for good: its file goes, `retry` skips it."""
        alice = requested(bot, person, confirm=True)
        with refusing(alice.address, "450 4.7.1 try later"):
            bot.run_once()  # the export is made; the mail server defers it
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.state is MailState.PENDING and export.file_path is not None
        reference = bot.request().reference
        command(bot, "requests", "reject", reference, "--reason", "Sent to us by mistake.")
        assert not Path(export.file_path).exists()
        assert "rejection mail" in command(bot, "requests", "retry", reference)
        bot.offset = timedelta(days=1)
        bot.run_once()
        alice.wait_for(subject_contains("About your data request"))
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert (export.state, export.file_path) == (MailState.FAILED, None)
        assert bot.request().state is RequestState.REJECTED
        assert not [m for m in alice.messages() if EXPORT(m)]

    def test_create_runs_the_same_path_for_a_request_by_post(
        self, bot: Bot, mailstack: object
    ) -> None:
        """`create` sends the challenge to the address given; a reply completes it as usual."""
        alice = Correspondent(bot.support.server, unique("alice", "example.test"))
        output = command(
            bot,
            "requests",
            "create",
            "--email",
            alice.address.upper(),
            "--note",
            "Letter received 20 Nov 2026",
        )
        assert "awaiting_confirmation" in output
        bot.run_once()
        alice.reply(alice.wait_for(ACK))
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        alice.wait_for(EXPORT)
        request = bot.request()
        assert (request.received_via, request.note) == ("manual", "Letter received 20 Nov 2026")
        actors = {e.actor for e in bot.audit() if e.event == "request.created"}
        assert actors and all(a.startswith("cli:") for a in actors)

    def test_resend_replaces_the_challenge(self, bot: Bot, person: Person) -> None:
        """After `resend` only the new acknowledgement confirms."""
        alice = requested(bot, person)
        reference = bot.request().reference
        command(bot, "requests", "resend", reference)
        bot.run_once()
        first, second = [m for m in alice.messages() if "Please confirm" in str(m["Subject"])]
        alice.reply(first, "old one")
        bot.support.wait_for(lambda m: "old one" in m.get_content())
        bot.run_once()
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        alice.reply(second, "new one")
        bot.support.wait_for(lambda m: "new one" in m.get_content())
        bot.run_once()
        assert bot.request().state is RequestState.DELIVERED

    def test_retry_and_collect_show_each_connector(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """`collect` asks the connectors now and prints a line for each; `retry` reschedules."""
        bot = make_bot(
            connectors=[
                {
                    "name": "gone",
                    "type": "sql",
                    "url": "sqlite:///nowhere.db",
                    "queries": [
                        {
                            "name": "q",
                            "category": "c",
                            "sql": "SELECT 1 AS email WHERE :email = ''",
                            "verify": "email",
                        }
                    ],
                }
            ]
        )
        requested(bot, person, confirm=True)
        bot.run_once()
        reference = bot.request().reference
        assert bot.request().next_attempt_at is not None
        assert "will retry collection" in command(bot, "requests", "retry", reference)
        assert bot.request().next_attempt_at is None
        output = command(bot, "requests", "collect", reference, status=1)
        assert "FAILED  gone (sql): OperationalError" in output
        assert "not complete; the daemon will retry" in output

    def test_a_rejection_while_the_export_is_being_sent_waits_for_the_outcome(
        self, bot: Bot, person: Person, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An operator (another process) rejects alice's request while the daemon is handing
        her export to the mail server: the decision waits for the outcome instead of recording
        a withdrawal that did not happen, then finds the export sent and says so."""
        rejected_while_sending(bot, person, monkeypatch)

    def test_a_request_rejected_during_its_collection_is_not_packaged(
        self, make_bot: BotFactory, person: Person, tmp_path: Path
    ) -> None:
        """A collection keeps what it found only if the request is still collecting when it
        ends: alice's request, rejected by an operator while her connectors answer, gets no
        export; bob's, collected the same way, gets his."""
        bot, pipeline, (first, second) = both_collecting(make_bot, person, tmp_path)

        def rejected(_outcome: ConnectorOutcome) -> None:  # an operator, mid-collection
            command(bot, "requests", "reject", first.reference, "--reason", "not who they say")

        assert not asyncio.run(pipeline.collect_one(first, [rejected]))
        assert asyncio.run(pipeline.collect_one(second))
        by_id = {r.id: r for r in bot.requests()}
        assert by_id[first.id].state is RequestState.REJECTED
        assert by_id[second.id].state is not RequestState.REJECTED
        exports = [m.request_id for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert exports and set(exports) == {second.id}

    def test_a_packaging_killed_midway_leaves_nothing_once_packaged_again(
        self, make_bot: BotFactory, person: Person, tmp_path: Path
    ) -> None:
        """Letters of an answer left by a packaging that was killed (before the rename, or
        after it but before the commit) go when the request is packaged again, by whichever
        instance: alice's when hers is, bob's when his is, and never one of a request whose
        reference merely starts alike."""
        bot, pipeline, (first, second) = both_collecting(make_bot, person, tmp_path)
        folder = bot.app.settings.storage.export_dir
        folder.mkdir(mode=0o700, exist_ok=True)

        def half_written(reference: str) -> Path:
            path = folder / f".{reference}.part1of2.eml.k1ll3d.partial"
            path.write_bytes(b"From: half a letter\r\n")
            return path

        def uncommitted(reference: str) -> Path:
            path = folder / f"{reference}.part3of3.eml"
            path.write_bytes(b"From: a whole letter nothing records\r\n")
            return path

        alices = [half_written(first.reference), uncommitted(first.reference)]
        bobs = [half_written(second.reference), uncommitted(second.reference)]
        alike = [half_written(first.reference[:-1]), uncommitted(first.reference + "7")]
        assert asyncio.run(pipeline.collect_one(first))
        assert not any(path.exists() for path in alices)
        assert all(path.exists() for path in bobs + alike)
        assert asyncio.run(pipeline.collect_one(second))
        assert not any(path.exists() for path in bobs)
        assert all(path.exists() for path in alike)
        written = {m.request_id: Path(str(m.file_path)) for m in bot.outgoing() if m.file_path}
        assert set(written) == {first.id, second.id}
        assert all(path.is_file() for path in written.values())
        assert set(folder.iterdir()) == set(written.values()) | set(alike)

    def test_the_register_lists_dates_and_decisions(self, bot: Bot, person: Person) -> None:
        """export-register gives every request with its dates, state and operators' decisions."""
        requested(bot, person)
        reference = bot.request().reference
        command(bot, "requests", "reject", reference, "--reason", "duplicate of a postal request")
        rows = list(
            csv.DictReader(io.StringIO(command(bot, "requests", "export-register", "--csv")))
        )
        [row] = rows
        assert row["reference"] == reference and row["state"] == "rejected"
        assert row["received_at"] and "duplicate of a postal request" in row["decisions"]
        assert json.loads(command(bot, "requests", "export-register", "--json")) == rows


class TestNotifications:
    def test_operators_hear_once_per_kind_and_get_a_daily_digest(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Review, deadline and overdue notices go out once each; the digest once a day."""
        dpo = Correspondent(person("x", "redtrain.test").server, unique("dpo", "redtrain.test"))
        bot = make_bot(
            notifications={"operators": [dpo.address], "digest_hour": 0},
            verification={"mode": "manual"},
        )
        # Mid-morning, so that the test's few seconds never cross midnight (a second digest).
        bot.travel_to(bot.now().replace(hour=10, minute=0, second=0))
        alice = requested(bot, person, confirm=True)
        bot.run_once()  # confirmed: waits for an operator in manual mode
        assert bot.request().state is RequestState.NEEDS_REVIEW
        review = dpo.wait_for(subject_contains("waits for a person"))
        assert bot.request().reference in str(review["Subject"])
        assert alice.address not in review.as_string()  # masked
        dpo.wait_for(subject_contains("Daily summary"))
        today = bot.app.settings.deadlines.calendar().local_date(bot.now())
        set_due(bot, today + timedelta(days=2))
        bot.run_once()
        dpo.wait_for(subject_contains("deadline is near"))
        set_due(bot, today - timedelta(days=1))
        bot.run_once()
        bot.run_once()
        dpo.wait_for(subject_contains("is overdue"))
        kinds = [m.kind for m in bot.outgoing() if m.kind.to_operators]
        assert sorted(k.value for k in kinds) == [
            "operator_deadline",
            "operator_digest",
            "operator_overdue",
            "operator_review",
        ]


class TestReminders:
    def test_one_reminder_before_expiry_with_a_working_challenge(
        self, bot: Bot, person: Person
    ) -> None:
        """An unconfirmed requester is reminded once, and the reminder's challenge works."""
        alice = requested(bot, person)
        bot.offset = timedelta(days=11, hours=1)
        bot.run_once()
        bot.run_once()
        reminder = alice.wait_for(subject_contains("Reminder"))
        assert [m.kind for m in bot.outgoing()].count(MailKind.REMINDER) == 1
        alice.reply(reminder)
        bot.support.wait_for(
            lambda m: "Reminder" in str(m["Subject"]) and "Re:" in str(m["Subject"])
        )
        bot.run_once()
        assert bot.request().state is RequestState.DELIVERED


class TestRetention:
    def test_purge_removes_old_closed_requests_and_keeps_the_trail_verifiable(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Old requests go with their audit events; the chain is anchored and still verifies."""
        bot = make_bot(retention={"requests_days": 30})
        alice = requested(bot, person, confirm=True)
        bot.run_once()
        alice.wait_for(EXPORT)
        old_reference = bot.request().reference
        bot.offset = timedelta(days=40)
        newer = person("bob", "example.test")
        newer.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(lambda m: m["From"] == newer.address)
        bot.run_once()  # the daemon purges once a day
        with bot.app.sessions() as session:
            references = set(session.scalars(select(Request.reference)))
            assert old_reference not in references and len(references) == 1
            assert (
                session.scalar(
                    select(OutgoingMail.id)
                    .where(OutgoingMail.state == MailState.SENT)
                    .where(OutgoingMail.recipient == alice.address)
                )
                is None
            )
            assert verify(session).intact
            events = [e.event for e in session.scalars(select(AuditEvent))]
        assert "audit.purged" in events and "retention.purged" in events
        assert "the audit trail stays verifiable" in command(bot, "purge")
        assert command(bot, "audit", "verify").startswith("audit trail intact")

    def test_purge_deletes_old_copies_from_the_processed_folder(self, make_bot: BotFactory) -> None:
        """`sarbot purge` deletes the copies in the real GDPR folder that are past
        processed_mail_days and keeps the recent ones, and the inbox is not touched."""
        bot = make_bot(retention={"processed_mail_days": 30})
        support = bot.support
        now = bot.now()
        filed = {
            "<old@example.test>": now - timedelta(days=90),
            "<older@example.test>": now - timedelta(days=400),
            "<recent@example.test>": now - timedelta(days=3),
        }
        for message_id, arrived in filed.items():
            support.append(copy(bot, message_id), "GDPR", arrived=arrived)
        support.append(copy(bot, "<inbox-old@example.test>"), arrived=now - timedelta(days=90))
        output = command(bot, "purge")
        before = (now - timedelta(days=30)).date()
        lines = output.splitlines()  # with the log lines, where logging goes to the terminal
        assert "purged 0 request(s) and 0 audit event(s); the audit trail stays verifiable" in lines
        assert f"deleted 2 mail copy(ies) in the folder GDPR received before {before}" in lines
        assert message_ids(support, "GDPR") == ["<recent@example.test>"]
        assert message_ids(support, "INBOX") == ["<inbox-old@example.test>"]
        [purged] = [e for e in bot.audit() if e.event == "retention.purged"]
        assert purged.actor.startswith("cli:")

    def test_the_daemon_purges_the_processed_folder_the_same_way(
        self, make_bot: BotFactory
    ) -> None:
        """The daemon's daily purge is the same: old copies go, recent ones stay."""
        bot = make_bot(retention={"processed_mail_days": 30})
        now = bot.now()
        for message_id, age in (("<old@example.test>", 35), ("<recent@example.test>", 25)):
            bot.support.append(copy(bot, message_id), "GDPR", arrived=now - timedelta(days=age))
        bot.run_once()
        assert message_ids(bot.support, "GDPR") == ["<recent@example.test>"]
        assert [e.actor for e in bot.audit() if e.event == "retention.purged"] == ["daemon"]


def both_collecting(
    make_bot: BotFactory, person: Person, tmp_path: Path
) -> tuple[Bot, Pipeline, list[Request]]:
    """Alice's and bob's confirmed requests, left collecting by a database that was missing
    (and is there now), with the pipeline to collect each of them by hand."""
    held = tmp_path / "held.db"
    query = {"name": "q", "category": "c", "sql": "SELECT :email AS email", "verify": "email"}
    held_db = {"name": "held", "type": "sql", "url": f"sqlite:///{held}", "queries": [query]}
    bot = make_bot(connectors=[held_db])
    alice, bob = person("alice", "example.test"), person("bob", "example.test")
    for requester in (alice, bob):
        requester.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(sent_by(requester, "GDPR"))
    bot.run_once()
    for requester in (alice, bob):
        requester.reply(requester.wait_for(ACK))
        bot.support.wait_for(sent_by(requester, "Re: [SAR-"))
    bot.run_once()  # the database is missing: both stay in collection
    assert [r.state for r in bot.requests()] == [RequestState.COLLECTING] * 2
    sqlite3.connect(held).close()
    return bot, bot.app.pipeline(clock=bot.now), bot.requests()


def rejected_while_sending(bot: Bot, person: Person, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice's request is rejected by an operator (another App, as the sarbot command would
    be) while the daemon hands her export to the mail server: the decision waits for the
    outcome, then finds the export sent and says so; the request is not rejected."""
    alice = requested(bot, person, confirm=True)
    reference = bot.request().reference
    real_send = Mailer.send
    decision: dict[str, Any] = {}

    def reject() -> None:  # a separate App, as the sarbot command would be
        operator = App(bot.app.config_path, bot.app.settings)
        args = ["requests", "reject", reference, "--reason", "not who they say"]
        decision["result"] = CliRunner().invoke(cli, args, obj={"app": operator})
        operator.engine.dispose()

    async def send(self: Mailer, raw: bytes, *, sender: str, recipient: str) -> None:
        if b"A copy of your personal data" in raw and "thread" not in decision:
            [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
            decision["marked"] = export.sending_since is not None
            decision["thread"] = thread = threading.Thread(target=reject)
            thread.start()
            await asyncio.sleep(2)  # the decision cannot end before the send does
            decision["waiting"] = thread.is_alive()
        await real_send(self, raw, sender=sender, recipient=recipient)

    monkeypatch.setattr(Mailer, "send", send)
    bot.run_once()
    decision["thread"].join(timeout=120)
    result = decision["result"]
    assert decision["marked"] and decision["waiting"], result.output
    assert result.exit_code == 1, result.output
    assert "being handed to the mail server" in result.output
    assert f"{reference} is delivered and cannot be rejected" in result.output
    alice.wait_for(EXPORT)
    assert bot.request().state is RequestState.DELIVERED
    [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
    assert (export.state, export.sending_since) == (MailState.SENT, None)
    assert not any(m.kind is MailKind.REJECTION for m in bot.outgoing())


def copy(bot: Bot, message_id: str) -> bytes:
    """A handled request mail, as the processed folder keeps it."""
    return (
        f"From: someone@example.test\r\nTo: {bot.address}\r\nSubject: GDPR DATA REQUEST\r\n"
        f"Message-ID: {message_id}\r\n\r\nplease\r\n"
    ).encode()


def message_ids(box: Correspondent, folder: str) -> list[str]:
    return [str(m["Message-ID"]) for m in box.messages(folder)]

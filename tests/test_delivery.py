"""Collecting and delivering when things go wrong, and what the logs say (and never say)."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import ClassVar

import pytest
import structlog
from click.testing import CliRunner
from pydantic import BaseModel
from sqlalchemy import select

from connectors.sql import SqlConnector
from sarbot.cli.main import cli
from sarbot.config import Section
from sarbot.connector import Identity, Record
from sarbot.store.audit import verify
from sarbot.store.models import Request
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import Correspondent, subject_contains
from tests.conftest import Bot, BotFactory
from tests.servers import free_port
from tests.test_encryption import GnuPG, gnupg  # noqa: F401 (the fixture)

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]


class FlakySettings(Section):
    secret_marker: str = "canary"


class FlakyConnector:
    """Fails until told otherwise; then returns one record holding a marker."""

    Settings: ClassVar[type[BaseModel]] = FlakySettings
    healthy = False

    def __init__(self, name: str, settings: FlakySettings) -> None:
        self.name, self.marker = name, settings.secret_marker

    def collect(self, identity: Identity) -> Iterable[Record]:
        if not FlakyConnector.healthy:
            raise ConnectionError(f"cannot reach the store while looking up {identity.email}")
        return [Record("Note", {"text": self.marker}, identity.identifiers[0])]

    def close(self) -> None:
        pass


def confirmed(bot: Bot, person: Person) -> Correspondent:
    """A request from alice, acknowledged and confirmed (not yet collected)."""
    alice, support = person("alice", "example.test"), bot.support
    alice.send(bot.address, "GDPR DATA REQUEST", "my body text PRIVATE-BODY-MARKER")
    support.wait_for(subject_contains("GDPR"))
    bot.run_once()
    alice.reply(alice.wait_for(subject_contains("Please confirm")))
    support.wait_for(subject_contains("Re: [SAR-"))
    return alice


class TestConnectorFailure:
    def test_failing_connector_keeps_the_request_collecting_until_it_recovers(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """No partial export is sent; the request waits in collecting and completes later."""
        FlakyConnector.healthy = False
        bot = make_bot(
            connectors=[{"name": "flaky", "type": "flaky"}],
            connector_types={"flaky": FlakyConnector, "sql": SqlConnector},
        )
        alice = confirmed(bot, person)
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.COLLECTING
        assert request.last_error == "connectors failed: flaky"
        assert [m.kind for m in bot.outgoing()] == [MailKind.ACKNOWLEDGEMENT]
        bot.run_once()  # the retry is not due yet
        assert bot.request().attempts == 1

        FlakyConnector.healthy = True
        bot.offset = timedelta(minutes=6)
        bot.run_once()
        alice.wait_for(subject_contains("A copy of your personal data"))
        assert bot.request().state is RequestState.DELIVERED


class TestSmtpFailure:
    def test_unreachable_smtp_defers_and_retries(self, bot: Bot, person: Person) -> None:
        """A connection failure leaves the message pending; it goes out on a later cycle."""
        good = bot.app.settings
        bot.app.settings = good.model_copy(
            update={"smtp": good.smtp.model_copy(update={"port": free_port(), "attempts": 2})}
        )
        alice, support = person("alice", "example.test"), bot.support
        alice.send(bot.address, "GDPR DATA REQUEST")
        support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        [mail] = bot.outgoing()
        assert (mail.state, mail.attempts) == (MailState.PENDING, 1)
        assert mail.next_attempt_at is not None
        assert alice.messages() == []

        bot.app.settings = good
        bot.run_once()  # not due yet
        assert bot.outgoing()[0].state is MailState.PENDING
        bot.offset = timedelta(minutes=6)
        bot.run_once()
        alice.wait_for(subject_contains("Please confirm"))
        assert bot.outgoing()[0].state is MailState.SENT

    def test_permanent_refusal_needs_review(self, bot: Bot, person: Person) -> None:
        """A 5xx refusal moves the request to needs_review instead of retrying forever."""
        outsider = person("someone", "elsewhere.test")
        support = bot.support
        support.append(
            f"From: {outsider.address}\r\nTo: {bot.address}\r\nSubject: GDPR DATA REQUEST\r\n"
            "Message-ID: <outsider-1@elsewhere.test>\r\n\r\nplease\r\n".encode()
        )
        bot.run_once()
        assert bot.request().state is RequestState.NEEDS_REVIEW
        [mail] = bot.outgoing()
        assert mail.state is MailState.FAILED
        assert mail.raw is None


def run_and_count_sessions(bot: Bot) -> int:
    """One ``run --once``; how many SMTP sessions its deliveries opened."""
    daemon = bot.app.daemon(clock=bot.now)
    assert asyncio.run(daemon.run(once=True))
    return daemon.pipeline.steps.deliverer.mailer.sessions


class TestOneSession:
    def test_the_mail_due_at_once_goes_on_one_smtp_session(self, bot: Bot, person: Person) -> None:
        """Three acknowledgements due in one cycle: one SMTP session, each marked sent."""
        people = [person(name, "example.test") for name in ("alice", "bob", "carol")]
        for someone in people:
            someone.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(lambda _m: len(bot.support.messages()) == 3)
        assert run_and_count_sessions(bot) == 1
        assert [m.state for m in bot.outgoing()] == [MailState.SENT] * 3
        for someone in people:
            someone.wait_for(subject_contains("Please confirm"))

    def test_a_refused_message_ends_the_session_and_the_rest_go_on(
        self, bot: Bot, person: Person
    ) -> None:
        """A session that failed is never used again: the next message opens a new one."""
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        outsider = person("someone", "elsewhere.test")  # the stack refuses this domain (5xx)
        support = bot.support
        for n, sender in enumerate((alice, outsider, bob)):
            support.append(
                f"From: {sender.address}\r\nTo: {bot.address}\r\nSubject: GDPR DATA REQUEST\r\n"
                f"Message-ID: <batch-{n}@example.test>\r\n\r\nplease\r\n".encode()
            )
        assert run_and_count_sessions(bot) == 2
        states = {m.recipient: m.state for m in bot.outgoing()}
        assert states == {
            alice.address: MailState.SENT,
            outsider.address: MailState.FAILED,
            bob.address: MailState.SENT,
        }
        bob.wait_for(subject_contains("Please confirm"))


class TestSendingAlongside:
    """The cycle's letters go out while its steps go on: as soon as a commit queues one."""

    @staticmethod
    def queue_manual_request(bot: Bot, email: str) -> None:
        """An operator enters a request by phone: its acknowledgement is queued and committed."""
        with bot.app.sessions.begin() as session:
            bot.app.acknowledger.open_manual(session, email, "by phone", now=bot.now(), actor="op")

    def test_letters_queued_inside_go_out_by_its_end_on_one_session(
        self, bot: Bot, person: Person
    ) -> None:
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        deliverer = bot.app.pipeline(clock=bot.now).steps.deliverer

        async def steps() -> bool:
            async with deliverer.alongside() as sending:
                self.queue_manual_request(bot, alice.address)
                await asyncio.sleep(0)  # a step awaiting its I/O: the sending may go on
                self.queue_manual_request(bot, bob.address)
            return sending.sent

        assert asyncio.run(steps())
        assert [m.state for m in bot.outgoing()] == [MailState.SENT, MailState.SENT]
        assert deliverer.mailer.sessions == 1
        alice.wait_for(subject_contains("Please confirm"))
        bob.wait_for(subject_contains("Please confirm"))

    def test_a_failing_step_is_raised_and_no_letter_is_sent_twice(
        self, bot: Bot, person: Person
    ) -> None:
        """The sending stops after the message in hand; what is left goes at the next cycle."""
        alice = person("alice", "example.test")
        deliverer = bot.app.pipeline(clock=bot.now).steps.deliverer

        async def failing_steps() -> None:
            async with deliverer.alongside():
                self.queue_manual_request(bot, alice.address)
                raise RuntimeError("a step failed")

        with pytest.raises(RuntimeError, match="a step failed"):
            asyncio.run(failing_steps())
        bot.run_once()
        [mail] = bot.outgoing()
        assert mail.state is MailState.SENT and mail.attempts == 1
        alice.wait_for(subject_contains("Please confirm"))
        assert len(alice.messages()) == 1


class TestLogs:
    def test_logs_hold_no_address_body_secret_or_data(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Across a whole request, log events carry masked addresses and counts only."""
        FlakyConnector.healthy = True
        bot = make_bot(
            connectors=[
                {"name": "notes", "type": "flaky", "secret_marker": "EXPORTED-DATA-MARKER"}
            ],
            connector_types={"flaky": FlakyConnector},
        )
        with structlog.testing.capture_logs() as events:
            alice = confirmed(bot, person)
            ack_message = alice.messages()[0]
            ack = ack_message.get_body(preferencelist=("plain",))
            bot.run_once()
            alice.wait_for(subject_contains("A copy of your personal data"))
        assert ack is not None
        code = next(
            line.strip() for line in ack.get_content().splitlines() if line.startswith("    ")
        )
        text = json.dumps(events, default=str)
        assert "mail.sent" in text and "request.packaged" in text
        token = str(ack_message["Message-ID"]).split(".", 1)[1].split("@")[0]
        for forbidden in (
            alice.address,
            "PRIVATE-BODY-MARKER",
            "EXPORTED-DATA-MARKER",
            code,
            token,
        ):
            assert forbidden not in text
        assert alice.address[0] + "***@example.test" in text


class TestPartialDelivery:
    def test_operator_can_deliver_without_a_failing_source(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """``requests deliver --partial`` sends what answers; the letter gives the reason."""
        FlakyConnector.healthy = False
        bot = make_bot(
            connectors=[{"name": "flaky", "type": "flaky", "description": "Old CRM"}],
            connector_types={"flaky": FlakyConnector},
        )
        alice = confirmed(bot, person)
        bot.run_once()
        reference = bot.request().reference
        config = bot.app.config_path
        result = CliRunner().invoke(
            cli,
            ["requests", "deliver", reference, "--partial", "--reason", "The old CRM is offline."],
            obj={"app": bot.app, "config_path": config},
        )
        assert result.exit_code == 0, result.output
        bot.run_once()
        export = alice.wait_for(subject_contains("A copy of your personal data"))
        body = export.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert "THIS COPY IS INCOMPLETE" in text
        assert "The old CRM is offline." in text
        assert "Not included: Old CRM." in text
        events = [(e.event, e.actor) for e in bot.audit()]
        assert ("request.partial_delivery", f"cli:{getpass.getuser()}") in events
        assert bot.request().state is RequestState.DELIVERED

    def test_partial_delivery_needs_a_request_in_collection(self, bot: Bot, person: Person) -> None:
        """A request still waiting for its confirmation cannot be forced out."""
        alice, support = person("alice", "example.test"), bot.support
        alice.send(bot.address, "GDPR DATA REQUEST")
        support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        result = CliRunner().invoke(
            cli,
            ["requests", "deliver", bot.request().reference, "--partial", "--reason", "x"],
            obj={"app": bot.app, "config_path": bot.app.config_path},
        )
        assert result.exit_code == 1
        assert "only a request being collected" in result.output


def operator(bot: Bot, *args: str, status: int = 0, answer: str | None = None) -> str:
    """An operator command against the bot; ``answer`` is typed at its prompt."""
    result = CliRunner().invoke(
        cli, args, obj={"app": bot.app, "config_path": bot.app.config_path}, input=answer
    )
    assert result.exit_code == status, result.output
    return result.output


def key_expired_since(bot: Bot, address: str, gnupg: GnuPG) -> None:  # noqa: F811
    """The request carried a key for the address that has expired before the export is made.

    GnuPG makes it in 2020 with a day's lifetime: expired whatever the pinned clock says.
    """
    fpr = gnupg.generate(
        f"Test <{address}>",
        "future-default",
        "default",
        "1d",
        "--faked-system-time",
        "20200101T000000",
    )
    key = gnupg.export(fpr)
    with bot.app.sessions.begin() as session:
        request = session.scalars(select(Request)).one()
        request.pgp_key = key
        request.encryption_note = "The export is encrypted to your OpenPGP key."


class TestUnencryptedDelivery:
    REASON = "She asked by phone on 3 Dec for the copy <as it is>; her key expired."

    def test_an_operator_can_send_an_export_that_cannot_be_encrypted(
        self,
        bot: Bot,
        person: Person,
        gnupg: GnuPG,  # noqa: F811
    ) -> None:
        """After an encryption failure `approve` would only fail again; `deliver --unencrypted
        --reason` asks first, audits the decision and the letter quotes it, and the clear
        export goes to the verified requester only, on the real mail stack."""
        alice = confirmed(bot, person)
        key_expired_since(bot, alice.address, gnupg)
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.NEEDS_REVIEW
        assert request.last_error is not None and "no longer usable: EXPIRED" in request.last_error
        assert f"deliver {request.reference} --unencrypted" in str(request.review_reason)
        assert not [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        reference = request.reference
        refused = operator(bot, "requests", "approve", reference, status=1)
        assert "would only fail again" in refused and "--unencrypted --reason TEXT" in refused

        asked = operator(
            bot, "requests", "deliver", reference, "--unencrypted", "--reason", self.REASON,
            status=1, answer="n\n",
        )  # fmt: skip
        assert f"Send their data to {alice.address} WITHOUT encryption? [y/N]" in asked
        assert "Aborted!" in asked
        assert bot.request().state is RequestState.NEEDS_REVIEW
        assert "request.unencrypted_delivery" not in [e.event for e in bot.audit()]

        output = operator(
            bot, "requests", "deliver", reference, "--unencrypted", "--reason", self.REASON, "--yes"
        )
        assert f"sent unencrypted to {alice.address} at the next cycle" in output
        bot.run_once()
        export = alice.wait_for(subject_contains("A copy of your personal data"))
        [attachment] = list(export.iter_attachments())
        assert str(attachment.get_filename()).endswith(".zip")
        data = attachment.get_payload(decode=True)
        assert isinstance(data, bytes) and data.startswith(b"PK")
        text, html = (export.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
        assert text is not None and html is not None
        assert "THIS COPY IS NOT ENCRYPTED" in text.get_content()
        assert "we decided to send it to you unencrypted" in text.get_content()
        assert f"Our reason: {self.REASON}" in text.get_content()
        assert "Our reason: She asked by phone on 3 Dec for the copy &lt;as it is&gt;" in (
            html.get_content()
        )
        assert "The export is encrypted" not in text.get_content()
        assert bot.request().state is RequestState.DELIVERED
        exports = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert exports and {m.recipient for m in exports} == {alice.address}
        events = [(e.event, e.actor, e.reason) for e in bot.audit()]
        actor = f"cli:{getpass.getuser()}"
        assert ("request.unencrypted_delivery", actor, self.REASON) in events
        with bot.app.sessions() as session:
            assert verify(session).intact
        again = operator(
            bot, "requests", "deliver", reference, "--unencrypted", "--reason", "x", "--yes",
            status=1,
        )  # fmt: skip
        assert f"{reference} is delivered; only a request held for review because" in again

    def test_only_a_request_whose_encryption_failed(self, bot: Bot, person: Person) -> None:
        """Any other request is refused, without a question, whatever its state; and the
        reason is required."""
        alice, support = person("alice", "example.test"), bot.support
        alice.send(bot.address, "GDPR DATA REQUEST")
        support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        reference = bot.request().reference
        deliver = ("requests", "deliver", reference)
        assert "Missing option '--reason'" in operator(bot, *deliver, "--unencrypted", status=2)
        assert "must say why" in operator(
            bot, *deliver, "--unencrypted", "--reason", " ", "--yes", status=2
        )
        for flags in ((), ("--partial", "--unencrypted")):
            output = operator(bot, *deliver, *flags, "--reason", "x", status=2)
            assert "give one of --partial and --unencrypted" in output
        refused = "is awaiting_confirmation; only a request held for review because its export"
        assert refused in operator(bot, *deliver, "--unencrypted", "--reason", "x", status=1)
        with bot.app.sessions.begin() as session:  # waits for review, but for another reason
            request = session.scalars(select(Request)).one()
            request.state, request.last_error = RequestState.NEEDS_REVIEW, "redirection"
        output = operator(bot, *deliver, "--unencrypted", "--reason", "x", "--yes", status=1)
        assert "is needs_review; only a request held for review because" in output
        assert bot.request().state is RequestState.NEEDS_REVIEW
        assert "request.unencrypted_delivery" not in [e.event for e in bot.audit()]

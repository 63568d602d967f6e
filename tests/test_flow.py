"""A request travels from a real mailbox to a real reply (the mail stack of scripts/mailstack)."""

from __future__ import annotations

import io
import json
import re
import secrets
import sqlite3
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from hashlib import sha256
from pathlib import Path

import pytest

from sarbot.store.states import MailKind, MailState, Outcome, RequestState
from sarbot.testing import Correspondent, subject_contains
from tests.conftest import Bot, BotFactory

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]

ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")


def request_from(sender: Correspondent, bot: Bot, support: Correspondent, **kw: object) -> str:
    """Send a request and wait until it is in the support mailbox."""
    message_id = sender.send(bot.address, "GDPR DATA REQUEST", "Please send me my data.", **kw)  # type: ignore[arg-type]
    support.wait_for(lambda m: m["Message-ID"] == message_id)
    return message_id


def attachment(message: EmailMessage) -> zipfile.ZipFile:
    parts = list(message.iter_attachments())
    assert len(parts) == 1
    data = parts[0].get_payload(decode=True)
    assert isinstance(data, bytes)
    return zipfile.ZipFile(io.BytesIO(data))


@pytest.fixture
def website_db(tmp_path: Path) -> str:
    path = tmp_path / "website.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE comments (author TEXT, email TEXT, content TEXT)")
        conn.executemany(
            "INSERT INTO comments VALUES (?, ?, ?)",
            [
                ("Alice", "ALICE@EXAMPLE.TEST", "<script>alert(1)</script> hello"),
                ("Bob", "bob@example.test", "hi"),
            ],
        )
    return f"sqlite:///{path}"


class TestWholeFlow:
    def test_request_is_acknowledged_confirmed_and_answered_with_the_export(
        self, make_bot: BotFactory, person: Person, website_db: str, tmp_path: Path
    ) -> None:
        """alice asks, replies to the acknowledgement, and receives her data in the same thread."""
        bot = make_bot(
            connectors=[
                {
                    "name": "website",
                    "type": "sql",
                    "description": "Website comments",
                    "url": website_db,
                    "queries": [
                        {
                            "name": "comments",
                            "category": "Comment",
                            "sql": "SELECT author, email, content FROM comments"
                            " WHERE lower(email) = :email",
                            "verify": "email",
                        }
                    ],
                }
            ]
        )
        alice = person("alice", "example.test")
        support = bot.support
        with sqlite3.connect(website_db.removeprefix("sqlite:///")) as conn:
            conn.execute(
                "UPDATE comments SET email = ? WHERE author = 'Alice'", (alice.address.upper(),)
            )
        request_id = request_from(alice, bot, support)

        bot.run_once()
        ack = alice.wait_for(ACK)
        request = bot.request()
        assert request.state is RequestState.AWAITING_CONFIRMATION
        assert re.fullmatch(rf"SAR-{request.received_at.year}-\d{{8}}", request.reference)
        assert request.reference in str(ack["Subject"])
        assert ack["In-Reply-To"] == request_id
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["To"] == alice.address

        confirmation = alice.reply(ack)
        support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()

        export = alice.wait_for(EXPORT)
        assert export["In-Reply-To"] == confirmation
        assert request_id in str(export["References"])
        with attachment(export) as archive:
            assert sorted(archive.namelist()) == [
                "README.txt",
                "csv/website-comment.csv",
                "data.json",
                "index.html",
                "manifest.json",
            ]
            manifest = json.loads(archive.read("manifest.json"))
            for entry in manifest["files"]:
                assert sha256(archive.read(entry["name"])).hexdigest() == entry["sha256"]
            data = json.loads(archive.read("data.json"))
            html = archive.read("index.html").decode()
        records = data["sources"][0]["records"]
        assert [r["fields"]["author"] for r in records] == ["Alice"]
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script>" not in html
        assert "Bob" not in html
        final = bot.request()
        assert final.state is RequestState.DELIVERED
        assert list((tmp_path / "exports").iterdir()) == []
        assert [m.state for m in bot.outgoing()] == [MailState.SENT, MailState.SENT]
        assert all(m.raw is None for m in bot.outgoing())

        gdpr = {m["Message-ID"] for m in support.messages("GDPR")}
        assert request_id in gdpr
        assert len(gdpr) == 2

    def test_running_once_twice_answers_nothing_twice(self, bot: Bot, person: Person) -> None:
        """A second run finds nothing to do and sends nothing."""
        alice, support = person("alice", "example.test"), bot.support
        request_from(alice, bot, support)
        bot.run_once()
        alice.wait_for(ACK)
        bot.run_once()
        assert len(bot.requests()) == 1
        assert len(bot.outgoing()) == 1
        assert len(alice.messages()) == 1

    def test_the_same_message_is_not_taken_twice_after_the_position_is_lost(
        self, bot: Bot, person: Person
    ) -> None:
        """Deduplication by Message-ID holds even if the mailbox is read from the start again."""
        alice, support = person("alice", "example.test"), bot.support
        support.send(bot.address, "hello", "not a request")
        alice.send(bot.address, "GDPR DATA REQUEST")
        support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        with bot.app.sessions.begin() as session:
            from sarbot.store.models import MailboxPosition

            for position in session.query(MailboxPosition):
                position.last_uid = 0
        bot.run_once()
        assert len(bot.requests()) == 1


class TestLeavesOtherMailAlone:
    def test_non_request_mail_stays_unread_in_inbox(self, bot: Bot, person: Person) -> None:
        """Humans work the support mailbox: sarbot does not read, move or flag their mail."""
        customer, alice = person("customer", "example.test"), person("alice", "example.test")
        support = bot.support
        other = customer.send(bot.address, "My printer is broken", "Help!")
        support.wait_for(lambda m: m["Message-ID"] == other)
        request_from(alice, bot, support)
        bot.run_once()
        assert support.flags("INBOX") == [(other, ())]  # the request itself moved to GDPR
        assert customer.messages() == []


class TestRepliesOnlyToTheSender:
    def test_reply_to_and_sender_pointing_elsewhere_are_ignored(
        self, bot: Bot, person: Person
    ) -> None:
        """The acknowledgement goes to the From address, never to Reply-To or Sender."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        support = bot.support
        request_from(
            alice,
            bot,
            support,
            headers={"Reply-To": mallory.address, "Sender": mallory.address},
            envelope_from=mallory.address,
        )
        bot.run_once()
        alice.wait_for(ACK)
        assert bot.request().email == alice.address
        assert mallory.messages() == []

    def test_display_name_with_an_address_is_not_the_address(
        self, bot: Bot, person: Person
    ) -> None:
        """``"alice@..." <mallory@...>`` is mallory's request; alice gets nothing."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        support = bot.support
        request_from(mallory, bot, support, from_header=f'"{alice.address}" <{mallory.address}>')
        bot.run_once()
        mallory.wait_for(ACK)
        assert bot.request().email == mallory.address
        assert alice.messages() == []


class TestConfirmation:
    def _acknowledged(
        self, bot: Bot, person: Person
    ) -> tuple[Correspondent, Correspondent, EmailMessage]:
        alice, support = person("alice", "example.test"), bot.support
        request_from(alice, bot, support)
        bot.run_once()
        return alice, support, alice.wait_for(ACK)

    def test_confirmation_from_another_address_is_refused(self, bot: Bot, person: Person) -> None:
        """A reply citing the token but sent from another address confirms nothing."""
        alice, support, ack = self._acknowledged(bot, person)
        mallory = person("mallory", "evil.test")
        mallory.reply(ack)
        support.wait_for(lambda m: m["From"] == mallory.address)
        bot.run_once()
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        assert mallory.messages() == []
        assert len(alice.messages()) == 1
        assert [s.outcome for s in bot.seen()][-1] is Outcome.CONFIRMATION_REFUSED

    def test_forged_from_with_a_guessed_token_confirms_nothing(
        self, bot: Bot, person: Person
    ) -> None:
        """Mail forged as alice cannot confirm: the token went only to alice's mailbox."""
        alice, support, ack = self._acknowledged(bot, person)
        mallory = person("mallory", "evil.test")
        guessed = f"<{bot.request().reference}.{'A' * 32}@{bot.address.partition('@')[2]}>"
        mallory.send(
            bot.address,
            f"Re: {ack['Subject']}",
            "guessing",
            from_header=alice.address,
            headers={"In-Reply-To": guessed, "References": guessed},
        )
        support.wait_for(lambda m: "guessing" in m.get_content())
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.AWAITING_CONFIRMATION
        assert request.confirmation_failures == 0  # a wrong token is recorded, never counted
        assert [e.reason for e in bot.audit() if e.event == "confirmation.wrong_token"] == [
            "wrong token"
        ]
        assert mallory.messages() == []

    def test_code_quoted_with_the_reference_confirms(self, bot: Bot, person: Person) -> None:
        """A new mail with the reference in the subject and the code in the text confirms."""
        alice, support, ack = self._acknowledged(bot, person)
        body = ack.get_body(preferencelist=("plain",))
        assert body is not None
        code = next(
            line.strip() for line in body.get_content().splitlines() if line.startswith("    ")
        )
        alice.send(bot.address, f"My request {bot.request().reference}", f"The code is {code}")
        support.wait_for(subject_contains("My request"))
        bot.run_once()
        alice.wait_for(EXPORT)
        assert bot.request().state is RequestState.DELIVERED

    def test_replayed_confirmation_does_nothing(self, bot: Bot, person: Person) -> None:
        """Sending the same confirmation again (even as a new message) sends nothing more."""
        alice, support, ack = self._acknowledged(bot, person)
        alice.reply(ack)
        support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        alice.wait_for(EXPORT)
        alice.reply(ack, "me again")
        support.wait_for(lambda m: "me again" in m.get_content())
        bot.run_once()
        assert len(alice.messages()) == 2
        assert [m.kind for m in bot.outgoing()] == [MailKind.ACKNOWLEDGEMENT, MailKind.EXPORT]
        assert [s.outcome for s in bot.seen()][-1] is Outcome.UNRELATED_REPLY


class TestExpiry:
    def test_expired_request_sends_nothing_but_a_notice(self, bot: Bot, person: Person) -> None:
        """An unconfirmed request expires with a notice; a late confirmation gets no data."""
        alice, support = person("alice", "example.test"), bot.support
        request_from(alice, bot, support)
        bot.run_once()
        ack = alice.wait_for(ACK)
        bot.offset = timedelta(days=14, minutes=1)
        bot.run_once()
        alice.wait_for(subject_contains("has expired"))
        assert bot.request().state is RequestState.EXPIRED
        alice.reply(ack)
        support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        assert bot.request().state is RequestState.EXPIRED
        assert [m.kind for m in bot.outgoing()] == [
            MailKind.ACKNOWLEDGEMENT,
            MailKind.EXPIRY_NOTICE,
        ]
        assert len(alice.messages()) == 2


class TestNeverAnswered:
    @pytest.mark.parametrize(
        ("headers", "envelope_from", "reason"),
        [
            ({"Auto-Submitted": "auto-replied"}, None, "auto_submitted"),
            ({"Precedence": "bulk"}, None, "bulk_precedence"),
            ({"List-Id": "<announce.example.test>"}, None, "header_list_id"),
            ({"X-Autoreply": "yes"}, None, "header_x_autoreply"),
            ({"X-Loop": "someone"}, None, "header_x_loop"),
            ({}, "", "null_sender"),
        ],
    )
    def test_automatic_mail_gets_no_answer(
        self,
        bot: Bot,
        person: Person,
        headers: dict[str, str],
        envelope_from: str | None,
        reason: str,
    ) -> None:
        """Auto-replies, list mail and bounces asking for data are refused and stay in INBOX."""
        sender, support = person("robot", "example.test"), bot.support
        message_id = request_from(
            sender, bot, support, headers=headers, envelope_from=envelope_from
        )
        bot.run_once()
        assert bot.requests() == []
        assert bot.outgoing() == []
        assert [(s.outcome, s.message_key) for s in bot.seen()] == [(Outcome.GUARDED, message_id)]
        assert dict(support.flags("INBOX")) == {message_id: ()}

    def test_mailer_daemon_is_never_answered(self, bot: Bot, person: Person) -> None:
        """A message from MAILER-DAEMON quoting the subject is not a request."""
        support = bot.support
        daemon = Correspondent(support.server, "MAILER-DAEMON@example.test")
        request_from(daemon, bot, support)
        bot.run_once()
        assert bot.outgoing() == []

    def test_delivery_report_is_never_answered(self, bot: Bot, person: Person) -> None:
        """A multipart/report bounce of an acknowledgement confirms nothing and gets no answer."""
        alice, support = person("alice", "example.test"), bot.support
        request_from(alice, bot, support)
        bot.run_once()
        ack = alice.wait_for(ACK)
        report = (
            f"From: {alice.address}\r\nTo: {bot.address}\r\nSubject: Re: {ack['Subject']}\r\n"
            f"In-Reply-To: {ack['Message-ID']}\r\nMessage-ID: <dsn-1@example.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n--b--\r\n"
        ).encode()
        alice.send_raw(report, bot.address)
        support.wait_for(lambda m: m["Message-ID"] == "<dsn-1@example.test>")
        bot.run_once()
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        assert len(bot.outgoing()) == 1

    def test_a_second_request_joins_the_open_one(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """More request mails from one address are one request, acknowledged within the cap;
        a reply to any of its acknowledgements confirms it, the first one included."""
        bot = make_bot(requests={"acks_per_sender_per_day": 2})
        alice, support = person("alice", "example.test"), bot.support
        for _ in range(3):
            request_from(alice, bot, support)
        bot.run_once()
        assert len(bot.requests()) == 1
        assert len(bot.outgoing()) == 2
        assert [s.outcome for s in bot.seen()] == [Outcome.REQUEST, Outcome.JOINED, Outcome.JOINED]
        first, _second = alice.messages()
        alice.reply(first, "the first acknowledgement")
        bot.support.wait_for(lambda m: "the first" in m.get_content())
        bot.run_once()
        assert bot.request().state is RequestState.DELIVERED

    def test_a_joining_request_is_told_its_new_expiry_date(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """The fresh acknowledgement names the expiry the request now has, not the old one."""
        bot = make_bot()
        alice = person("alice", "example.test")
        request_from(alice, bot, bot.support)
        bot.run_once()
        first_expiry = bot.request().expires_at
        bot.offset = timedelta(days=3)
        request_from(alice, bot, bot.support)
        bot.run_once()
        renewed = bot.request().expires_at
        assert timedelta(days=3) <= renewed - first_expiry < timedelta(days=3, minutes=1)

        def naming(when: datetime) -> Callable[[EmailMessage], bool]:
            return lambda m: f"by {when:%-d %B %Y}," in " ".join(m.get_content().split())

        alice.wait_for(naming(renewed))  # the second acknowledgement
        letters = alice.messages()
        assert [naming(first_expiry)(m) for m in letters] == [True, False]
        assert [naming(renewed)(m) for m in letters] == [False, True]


@pytest.fixture
def bulky_db(tmp_path: Path) -> str:
    """A store holding a lot of alice's data: 3,000 rows of incompressible text."""
    path = tmp_path / "bulky.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, email TEXT, detail TEXT)")
        conn.executemany(
            "INSERT INTO events (email, detail) VALUES (?, ?)",
            [("ALICE", secrets.token_hex(200)) for _ in range(3000)],
        )
    return f"sqlite:///{path}"


def bulky_connector(url: str) -> dict[str, object]:
    return {
        "name": "events",
        "type": "sql",
        "description": "Event log",
        "url": url,
        "queries": [
            {
                "name": "events",
                "category": "Event",
                "key": "id",
                # Every row is alice's: the address column echoes the one asked about.
                "sql": "SELECT id, detail, :email AS email FROM events"
                " WHERE email = 'ALICE' AND :email <> ''",
                "verify": "email",
            }
        ],
    }


class TestExportMail:
    def confirm(self, bot: Bot, person: Person) -> Correspondent:
        alice, support = person("alice", "example.test"), bot.support
        request_from(alice, bot, support)
        bot.run_once()
        alice.reply(alice.wait_for(ACK))
        support.wait_for(subject_contains("Re: [SAR-"))
        return alice

    def test_letter_has_text_and_html_and_the_zip(self, bot: Bot, person: Person) -> None:
        """The answer is a text letter with an HTML alternative, and the zip attached."""
        alice = self.confirm(bot, person)
        bot.run_once()
        export = alice.wait_for(EXPORT)
        text = export.get_body(preferencelist=("plain",))
        html = export.get_body(preferencelist=("html",))
        assert text is not None and html is not None
        assert "we hold no personal data about you beyond this request" in text.get_content()
        assert "<strong>SAR-" in html.get_content()
        [zipped] = list(export.iter_attachments())
        assert zipped.get_content_type() == "application/zip"

    def test_a_large_export_arrives_in_numbered_parts_in_one_thread(
        self, make_bot: BotFactory, person: Person, bulky_db: str, tmp_path: Path
    ) -> None:
        """Over the attachment limit, each part is its own mail in the thread; all are delivered."""
        bot = make_bot(
            connectors=[bulky_connector(bulky_db)], export={"max_attachment_bytes": 400_000}
        )
        alice = self.confirm(bot, person)
        bot.run_once()
        assert bot.request().state is RequestState.DELIVERED
        parts = [m for m in alice.messages() if "A copy of your personal data" in m["Subject"]]
        count = len(parts)
        assert count > 1
        assert [str(m["Subject"]).split("(")[1] for m in parts] == [
            f"part {n} of {count})" for n in range(1, count + 1)
        ]
        first_ref = str(parts[0]["In-Reply-To"])
        assert all(str(m["In-Reply-To"]) == first_ref for m in parts)
        contents = []
        for message in parts:
            with attachment(message) as archive:
                contents.append({name: archive.read(name) for name in archive.namelist()})
            assert len(message.as_bytes()) < 400_000 * 1.4  # base64 of a part within the limit
        assert "index.html" in contents[0]
        manifest = json.loads(contents[0]["manifest.json"])
        [entry] = [e for e in manifest["files"] if e["name"] == "data.json"]
        pieces = entry.get("pieces") or [{"name": "data.json", "part": entry["part"]}]
        data = b"".join(contents[p["part"] - 1][p["name"]] for p in pieces)
        assert sha256(data).hexdigest() == entry["sha256"]
        assert len(json.loads(data)["sources"][0]["records"]) == 3000
        assert list((tmp_path / "exports").iterdir()) == []

    def test_exports_can_be_kept_for_a_while_then_go(
        self, make_bot: BotFactory, person: Person, tmp_path: Path
    ) -> None:
        """With keep_exports_days, the sent export stays (0600) until the period is over."""
        bot = make_bot(storage={"keep_exports_days": 1})
        alice = self.confirm(bot, person)
        bot.run_once()
        alice.wait_for(EXPORT)
        [kept] = list((tmp_path / "exports").iterdir())
        assert kept.stat().st_mode & 0o777 == 0o600
        bot.offset = timedelta(days=1, minutes=1)
        bot.run_once()
        assert list((tmp_path / "exports").iterdir()) == []

    def test_the_sweep_knows_a_kept_export_under_another_name_of_its_folder(
        self, make_bot: BotFactory, person: Person, tmp_path: Path
    ) -> None:
        """The folder is named otherwise after a change of config (here a link to it): the
        sweep keeps the file its message names until the period is over, then removes it."""
        bot = make_bot(storage={"keep_exports_days": 1})
        alice = self.confirm(bot, person)
        bot.run_once()
        alice.wait_for(EXPORT)
        [kept] = list((tmp_path / "exports").iterdir())
        (tmp_path / "link").symlink_to(tmp_path / "exports", target_is_directory=True)
        renamed = make_bot(storage={"keep_exports_days": 1, "export_dir": str(tmp_path / "link")})
        renamed.run_once()
        assert kept.is_file()
        renamed.offset = timedelta(days=1, minutes=1)
        renamed.run_once()
        assert list((tmp_path / "exports").iterdir()) == []


class TestEncryptedExport:
    def test_a_key_in_the_request_encrypts_the_export_to_it(self, bot: Bot, person: Person) -> None:
        """alice attaches her OpenPGP key: the ack names it, and only her key opens the export."""
        from pysequoia import CipherSuite, Tsk, decrypt

        alice = person("alice", "example.test")
        key = Tsk.generate(f"Alice <{alice.address}>", cipher_suite=CipherSuite.RSA2k)
        message = EmailMessage()
        message["From"], message["To"] = alice.address, bot.address
        message["Subject"], message["Message-ID"] = "GDPR DATA REQUEST", "<with-key@example.test>"
        message.set_content("Please encrypt my data to the attached key.")
        message.add_attachment(
            str(key.extract_certificate()).encode(),
            maintype="application",
            subtype="pgp-keys",
            filename="alice.asc",
        )
        alice.send_raw(message.as_bytes(), bot.address)
        bot.support.wait_for(lambda m: m["Message-ID"] == "<with-key@example.test>")
        bot.run_once()
        ack = alice.wait_for(ACK)
        body = ack.get_body(preferencelist=("plain",))
        assert body is not None
        fingerprint = key.extract_certificate().fingerprint.upper()
        assert fingerprint in body.get_content().replace(" ", "")
        alice.reply(ack)
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        export = alice.wait_for(EXPORT)
        [part] = list(export.iter_attachments())
        assert str(part.get_filename()).endswith(".zip.pgp")
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes) and not data.startswith(b"PK")
        clear = decrypt(data, decryptor=key.decryptor()).bytes
        assert clear is not None
        with zipfile.ZipFile(io.BytesIO(clear)) as archive:
            assert "index.html" in archive.namelist()
        letter = export.get_body(preferencelist=("plain",))
        assert letter is not None and "encrypted" in letter.get_content()

"""The test mail stack checks DKIM as a receiving server would, and auto-replies as one away."""

from __future__ import annotations

import re
import shutil
import subprocess
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import dkim
import pytest

from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing.dkim import SIGNING_DOMAINS, dnsfunc, sign
from tests.conftest import ROOT, STACK_DIR, unique

pytestmark = pytest.mark.mailstack

MAILSTACK = ROOT / "scripts" / "mailstack"
DKIM_DIR = STACK_DIR / "dkim"
AUTHSERV_ID = "mail.redtrain.test"


def compose(sender: str, to: str, subject: str, *, headers: dict[str, str] | None = None) -> bytes:
    """A plain-text mail as a mail client sends it (CRLF line ends)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content("Hello, this is a test.\n")
    return message.as_bytes(policy=policy.SMTP)


def results(message: EmailMessage) -> list[str]:
    """Every Authentication-Results value, top to bottom, whitespace collapsed."""
    return [" ".join(str(value).split()) for value in message.get_all("Authentication-Results", [])]


def ours(message: EmailMessage) -> str:
    """The one Authentication-Results header the stack added (authserv-id mail.redtrain.test)."""
    found = [value for value in results(message) if value.split(";")[0].strip() == AUTHSERV_ID]
    assert len(found) == 1, f"expected one {AUTHSERV_ID} result, got {results(message)}"
    return found[0]


def dkim_result(value: str) -> str:
    match = re.search(r"\bdkim=(\w+)", value)
    assert match, f"no dkim= result in {value!r}"
    return match.group(1)


def header_d(value: str) -> str:
    match = re.search(r"\bheader\.d=([^\s;]+)", value)
    assert match, f"no header.d in {value!r}"
    return match.group(1)


class Exchange:
    """A sender at example.test writing to a fresh mailbox at redtrain.test."""

    def __init__(self, mailstack: MailServer) -> None:
        self.sender = Correspondent(mailstack, unique("alice", "example.test"))
        self.recipient = Correspondent(mailstack, unique("support", "redtrain.test"))

    def deliver(self, raw: bytes, subject: str) -> EmailMessage:
        """Send ``raw`` over SMTP and return it as it lands in the recipient's INBOX."""
        self.sender.send_raw(raw, self.recipient.address)
        return self.recipient.wait_for(subject_contains(subject))

    def compose(self, subject: str, *, headers: dict[str, str] | None = None) -> bytes:
        return compose(self.sender.address, self.recipient.address, subject, headers=headers)


@pytest.fixture
def exchange(mailstack: MailServer) -> Exchange:
    return Exchange(mailstack)


class TestDkimVerification:
    def test_signed_mail_passes(self, exchange: Exchange) -> None:
        """Mail signed with example.test's published key gets dkim=pass, header.d=example.test."""
        raw = sign(exchange.compose("signed"), "example.test", keys_dir=DKIM_DIR)
        result = ours(exchange.deliver(raw, "signed"))
        assert result.startswith(f"{AUTHSERV_ID}; dkim=pass")
        assert header_d(result) == "example.test"

    def test_subdomain_signature_names_the_subdomain(self, exchange: Exchange) -> None:
        """A From at example.test signed as mail.example.test passes with header.d the subdomain."""
        raw = sign(exchange.compose("subdomain"), "mail.example.test", keys_dir=DKIM_DIR)
        result = ours(exchange.deliver(raw, "subdomain"))
        assert dkim_result(result) == "pass"
        assert header_d(result) == "mail.example.test"

    def test_unsigned_mail_does_not_pass(self, exchange: Exchange) -> None:
        """Unsigned mail still gets a result from the stack, and it is dkim=none."""
        result = ours(exchange.deliver(exchange.compose("unsigned"), "unsigned"))
        assert dkim_result(result) == "none"

    def test_body_altered_after_signing_fails(self, exchange: Exchange) -> None:
        """A signed mail whose body changes in transit gets dkim=fail."""
        raw = sign(exchange.compose("altered"), "example.test", keys_dir=DKIM_DIR)
        tampered = raw.replace(b"this is a test", b"this is a trap")
        assert tampered != raw
        result = ours(exchange.deliver(tampered, "altered"))
        assert dkim_result(result) == "fail"
        assert header_d(result) == "example.test"

    def test_signature_with_another_domains_key_fails(
        self, exchange: Exchange, tmp_path: Path
    ) -> None:
        """A signature claiming d=example.test but made with evil.test's key gets dkim=fail."""
        shutil.copy(DKIM_DIR / "evil.test.private", tmp_path / "example.test.private")
        raw = sign(exchange.compose("stolen name"), "example.test", keys_dir=tmp_path)
        assert dkim_result(ours(exchange.deliver(raw, "stolen name"))) == "fail"

    def test_forged_foreign_result_is_kept_below_the_real_one(self, exchange: Exchange) -> None:
        """A forged evil.test dkim=pass stays in the mail, under the stack's own dkim=none."""
        forged = "evil.test; dkim=pass header.d=example.test"
        raw = exchange.compose("forged", headers={"Authentication-Results": forged})
        arrived = exchange.deliver(raw, "forged")
        assert results(arrived) == [f"{AUTHSERV_ID}; dkim=none; dkim-atps=neutral", forged]

    def test_forged_result_in_the_stacks_name_is_removed(self, exchange: Exchange) -> None:
        """A forged result claiming authserv-id mail.redtrain.test is stripped before delivery."""
        forged = f"{AUTHSERV_ID}; dkim=pass header.d=example.test"
        raw = exchange.compose("impostor", headers={"Authentication-Results": forged})
        arrived = exchange.deliver(raw, "impostor")
        assert results(arrived) == [f"{AUTHSERV_ID}; dkim=none; dkim-atps=neutral"]


def published_record(domain: str) -> bytes:
    """The TXT record the stack should publish for ``domain``'s key."""
    pem = (DKIM_DIR / f"{domain}.public").read_text()
    key = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return f"v=DKIM1; k=rsa; p={key}".encode("ascii")


@pytest.mark.usefixtures("mailstack")
class TestDnsfunc:
    def test_returns_each_published_key(self) -> None:
        """The private DNS server publishes every signing domain's public key under selector s1."""
        for domain in SIGNING_DOMAINS:
            name = f"s1._domainkey.{domain}.".encode("ascii")
            assert dnsfunc(name) == published_record(domain), domain

    def test_unknown_name_is_none(self) -> None:
        """A selector nobody published is not found (None), as dkimpy expects."""
        assert dnsfunc(b"nope._domainkey.example.test.") is None

    def test_dkimpy_verifies_against_it(self) -> None:
        """dkimpy with this dnsfunc accepts a signed mail and rejects it once altered."""
        raw = sign(compose("a@evil.test", "b@redtrain.test", "x"), "evil.test", keys_dir=DKIM_DIR)
        assert dkim.verify(raw, dnsfunc=dnsfunc) is True
        assert dkim.verify(raw.replace(b"Hello", b"Howdy"), dnsfunc=dnsfunc) is False


def set_vacation(address: str, message: str) -> None:
    result = subprocess.run(
        [str(MAILSTACK), "vacation", address, message], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        pytest.fail(f"mailstack vacation failed:\n{result.stdout}\n{result.stderr}", pytrace=False)


def replies(person: Correspondent, subject: str) -> list[EmailMessage]:
    return [m for m in person.messages() if str(m.get("Subject", "")) == f"Auto: {subject}"]


class TestVacation:
    AWAY_TEXT = 'Away until Monday; "urgent" things to the desk.'

    @pytest.fixture
    def away(self, mailstack: MailServer) -> Correspondent:
        person = Correspondent(mailstack, unique("away", "redtrain.test"))
        set_vacation(person.address, self.AWAY_TEXT)
        return person

    @pytest.fixture
    def writer(self, mailstack: MailServer) -> Correspondent:
        return Correspondent(mailstack, unique("alice", "example.test"))

    def test_replies_once_to_each_normal_mail(
        self, away: Correspondent, writer: Correspondent
    ) -> None:
        """Each plain mail gets exactly one auto-reply, sent back through the private Postfix."""
        message_id = writer.send(away.address, "Where is my data?")
        reply = writer.wait_for(subject_contains("Auto: Where is my data?"))
        assert str(reply["Auto-Submitted"]).startswith("auto-replied")
        assert str(reply["In-Reply-To"]) == message_id
        assert str(reply["Return-Path"]) == "<>"
        assert reply.get_content().strip() == self.AWAY_TEXT
        assert dkim_result(ours(reply)) == "none"
        writer.send(away.address, "Second try")
        writer.wait_for(subject_contains("Auto: Second try"))
        assert len(replies(writer, "Where is my data?")) == 1

    def test_no_reply_to_auto_submitted_mail(
        self, away: Correspondent, writer: Correspondent
    ) -> None:
        """Mail marked Auto-Submitted: auto-replied is delivered but gets no auto-reply."""
        writer.send(away.address, "Robot note", headers={"Auto-Submitted": "auto-replied"})
        away.wait_for(subject_contains("Robot note"))
        # Sieve hands its reply to Postfix before the delivery completes, so a
        # reply to the first mail would be queued ahead of the reply to this one.
        writer.send(away.address, "Human note")
        writer.wait_for(subject_contains("Auto: Human note"))
        assert replies(writer, "Robot note") == []

    def test_off_stops_the_replies(self, away: Correspondent, writer: Correspondent) -> None:
        """After "vacation ADDRESS --off" mail gets no auto-reply; turning it on again works."""
        set_vacation(away.address, "--off")
        writer.send(away.address, "While back")
        away.wait_for(subject_contains("While back"))
        set_vacation(away.address, "Gone again.")
        writer.send(away.address, "Away again")
        reply = writer.wait_for(subject_contains("Auto: Away again"))
        assert reply.get_content().strip() == "Gone again."
        assert replies(writer, "While back") == []

    def test_refuses_an_address_outside_the_test_domains(self) -> None:
        """The vacation command only writes into mailboxes of the stack's own domains."""
        result = subprocess.run(
            [str(MAILSTACK), "vacation", "someone@elsewhere.example", "hi"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert "not an address here" in result.stderr

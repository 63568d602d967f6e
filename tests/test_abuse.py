"""Nobody gets someone else's data: impersonation, floods and loops, on the real mail stack.

Each case looks at every mailbox involved: the claimed victim's, the attacker's
at evil.test and support's.  Data goes only to the verified owner, and only
after verification.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
import structlog

from sarbot.store.states import MailKind, Outcome, RequestState
from sarbot.testing import Correspondent, subject_contains
from sarbot.testing.dkim import DNS_SERVER, sign
from tests.conftest import ROOT, STACK_DIR, Bot, BotFactory, unique

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
KEYS = STACK_DIR / "dkim"
ACK = subject_contains("Please confirm")
VERIFIED_ACK = subject_contains("We have received your data request")
EXPORT = subject_contains("A copy of your personal data")
TRUSTED = {"trusted_authserv_ids": ["mail.redtrain.test"]}


def request_mail(
    sender: str, to: str, body: str = "Please send me my data.", **headers: str
) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = headers.pop("from_header", sender), to
    message["Subject"] = "GDPR DATA REQUEST"
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def written_mail(
    from_fields: list[str],
    to: str,
    *extra: str,
    subject: str = "GDPR DATA REQUEST",
    body: str = "Please send me my data.",
) -> bytes:
    """A mail written out byte for byte, its From fields exactly as given."""
    lines = [
        *(f"From: {value}" for value in from_fields),
        f"To: {to}",
        f"Subject: {subject}",
        f"Message-ID: {make_msgid(domain='evil.test')}",
        "Date: Thu, 26 Nov 2026 10:00:00 +0000",
        *extra,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


def q_encoded(text: str) -> str:
    """``text`` as one RFC 2047 Q encoded word, every character but letters and digits escaped."""
    return "=?utf-8?q?" + "".join(c if c.isalnum() else f"={ord(c):02X}" for c in text) + "?="


def b_encoded(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def deliver(
    bot: Bot, sender: Correspondent, raw: bytes, *, envelope_from: str | None = None
) -> None:
    """Send through the real Postfix (which adds the DKIM verdict) and wait for delivery."""
    sender.send_raw(raw, bot.address, envelope_from=envelope_from)
    marker = raw.split(b"Message-ID: ", 1)[1].split(b"\n", 1)[0].strip().decode()
    bot.support.wait_for(lambda m: m["Message-ID"] == marker)


def code_in(ack: EmailMessage) -> str:
    """The confirmation code an acknowledgement prints (the one indented line)."""
    body = ack.get_body(preferencelist=("plain",))
    assert body is not None
    text: str = body.get_content()
    return next(line.strip() for line in text.splitlines() if line.startswith("    "))


def confirm(bot: Bot, alice: Correspondent) -> None:
    alice.reply(alice.wait_for(ACK))
    bot.support.wait_for(subject_contains("Re: [SAR-"))


class TestSpoofedSender:
    def test_forged_from_sends_the_challenge_to_the_real_owner_only(
        self, bot: Bot, person: Person
    ) -> None:
        """Forged as alice: alice gets the challenge and a warning, mallory nothing."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        raw = request_mail(
            mallory.address,
            bot.address,
            from_header=alice.address,
            Reply_To=mallory.address,
            Sender=mallory.address,
            Disposition_Notification_To=mallory.address,
        )
        deliver(bot, mallory, raw, envelope_from=mallory.address)
        bot.run_once()
        ack = alice.wait_for(ACK)
        body = ack.get_body(preferencelist=("plain",))
        assert body is not None and "DID YOU NOT ASK FOR THIS?" in body.get_content()
        bot.offset = timedelta(days=15)
        bot.run_once()  # nobody confirmed: it expires
        assert bot.request().state is RequestState.EXPIRED
        assert mallory.messages() == []
        assert [m.kind for m in bot.outgoing()] == [
            MailKind.ACKNOWLEDGEMENT,
            MailKind.EXPIRY_NOTICE,
        ]
        assert all(m.recipient == alice.address for m in bot.outgoing())

    def test_a_forged_authentication_result_counts_for_nothing(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """An Authentication-Results header with a foreign id claiming dkim=pass is ignored."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice = person("alice", "example.test")
        raw = request_mail(
            alice.address,
            bot.address,
            Authentication_Results="evil.test; dkim=pass header.d=example.test",
        )
        deliver(bot, alice, raw)
        bot.run_once()
        alice.wait_for(ACK)  # a challenge, not the authenticated acknowledgement
        request = bot.request()
        assert request.state is RequestState.AWAITING_CONFIRMATION
        assert not request.authenticated
        assert "dkim=none" in (request.authentication or "")

    def test_two_trusted_results_make_the_request_wait_for_review(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Mail carrying two headers with the trusted id (one must be forged) is reviewed."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice = person("alice", "example.test")
        raw = request_mail(alice.address, bot.address)
        forged = (
            b"Authentication-Results: mail.redtrain.test; dkim=pass header.d=example.test\r\n"
            b"Authentication-Results: mail.redtrain.test; dkim=pass header.d=example.test\r\n"
        )
        bot.support.append(forged + raw)  # as if it reached the mailbox another way
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.NEEDS_REVIEW
        assert "more than one Authentication-Results" in (request.review_reason or "")

    def test_an_unreadable_trusted_result_makes_the_request_wait_for_review(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """A header with the trusted id that cannot be parsed is not skipped: review, saying why."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice = person("alice", "example.test")
        raw = request_mail(alice.address, bot.address)
        unreadable = (
            b"Authentication-Results: mail.redtrain.test; dkim=pass header.d=example.test;;\r\n"
        )
        bot.support.append(unreadable + raw)  # as if it reached the mailbox another way
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.NEEDS_REVIEW
        assert not request.authenticated
        assert request.review_reason == (
            "an Authentication-Results header with a trusted authserv-id could not be read"
        )
        assert alice.wait_for(ACK)  # the challenge goes out: the reply is still needed

    def test_an_encoded_authserv_id_is_not_the_trusted_verifier(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """``=?utf-8?q?mail.redtrain.test?=`` passes OpenDKIM untouched and is still not trusted."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice = person("alice", "example.test")
        forged = f"{q_encoded('mail.redtrain.test')}; dkim=pass header.d=example.test"
        deliver(
            bot,
            alice,
            written_mail([alice.address], bot.address, f"Authentication-Results: {forged}"),
        )
        [arrived] = bot.support.messages()
        written = [v for k, v in arrived.raw_items() if k.lower() == "authentication-results"]
        assert forged in [" ".join(value.split()) for value in written]  # OpenDKIM kept it
        bot.run_once()
        alice.wait_for(ACK)
        request = bot.request()
        assert (request.state, request.review_reason) == (RequestState.AWAITING_CONFIRMATION, None)
        assert not request.authenticated
        assert "(mail.redtrain.test: dkim=none" in (request.authentication or "")


class TestTheFromFieldAsWritten:
    @pytest.mark.parametrize("encode", [q_encoded, b_encoded], ids=["q", "b"])
    def test_an_encoded_display_name_naming_the_victim_is_not_the_sender(
        self, bot: Bot, person: Person, encode: Callable[[str], str]
    ) -> None:
        """``From: =?utf-8?q?alice=40...?= <mallory@...>`` is mallory's request; alice gets none."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        raw = written_mail([f"{encode(alice.address)} <{mallory.address}>"], bot.address)
        deliver(bot, mallory, raw)
        bot.run_once()
        mallory.wait_for(ACK)
        assert [(r.email, r.state) for r in bot.requests()] == [
            (mallory.address, RequestState.AWAITING_CONFIRMATION)
        ]
        assert {m.recipient for m in bot.outgoing() if not m.kind.to_operators} == {mallory.address}
        assert alice.messages() == []

    def test_wrong_codes_under_an_encoded_display_name_are_not_the_requesters(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """mallory's wrong codes, his From dressed as alice's, count against no one."""
        bot = make_bot(requests={"max_confirmation_attempts": 2})
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        deliver(bot, alice, request_mail(alice.address, bot.address))
        bot.run_once()
        ack = alice.wait_for(ACK)
        reference = bot.request().reference
        dressed = f"{q_encoded(alice.address)} <{mallory.address}>"
        for n in range(3):
            raw = written_mail(
                [dressed], bot.address, subject=f"{reference} {n}", body=f"ABCD-EFG{'HJK'[n]}"
            )
            deliver(bot, mallory, raw)
        bot.run_once()
        assert bot.request().confirmation_failures == 0
        assert [s.outcome for s in bot.seen()][1:] == [Outcome.CONFIRMATION_REFUSED] * 3
        alice.send(bot.address, f"{reference} the code", f"code {code_in(ack)}")
        bot.support.wait_for(subject_contains("the code"))
        bot.run_once()
        assert bot.request().confirmed_at is not None
        assert mallory.messages() == []

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            (lambda alice, mallory: [alice, mallory], "more than one From header"),
            (lambda alice, mallory: [mallory, alice], "more than one From header"),
            (lambda alice, mallory: [alice, alice], "more than one From header"),
            (lambda alice, mallory: [f"{alice} <{mallory}>"], "malformed From header"),
        ],
        ids=["victim first", "victim second", "twice the same", "unquoted address as name"],
    )
    def test_a_second_or_malformed_from_field_is_left_for_a_person(
        self, bot: Bot, person: Person, fields: Callable[[str, str], list[str]], reason: str
    ) -> None:
        """Postfix takes it; sarbot refuses it (invalid sender), logs why and leaves it unread."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        raw = written_mail(fields(alice.address, mallory.address), bot.address)
        deliver(bot, mallory, raw)
        with structlog.testing.capture_logs() as logs:
            bot.run_once()
        assert bot.requests() == []
        assert [m for m in bot.outgoing() if not m.kind.to_operators] == []
        [seen] = bot.seen()
        assert seen.outcome is Outcome.INVALID_SENDER
        [refused] = [e for e in logs if e["event"] == "mail.refused"]
        assert refused["outcome"] == "invalid_sender"
        assert refused["reason"] == reason
        assert alice.address not in str(logs) and mallory.address not in str(logs)
        assert [flags for _, flags in bot.support.flags("INBOX")] == [()]  # still unread
        assert alice.messages() == [] and mallory.messages() == []


class TestDkimPolicy:
    def test_an_aligned_dkim_pass_confirms_without_a_challenge(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """In reply_or_dmarc mode, mail signed by the sender's domain is answered at once."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice = person("alice", "example.test")
        deliver(
            bot,
            alice,
            sign(request_mail(alice.address, bot.address), "example.test", keys_dir=KEYS),
        )
        bot.run_once()
        alice.wait_for(VERIFIED_ACK)
        export = alice.wait_for(EXPORT)
        letter = export.get_body(preferencelist=("plain",))
        assert letter is not None
        assert "your email was authenticated by its signature" in letter.get_content()
        request = bot.request()
        assert request.state is RequestState.DELIVERED
        assert request.authentication == (
            "dkim=pass for example.test, aligned with example.test (mail.redtrain.test)"
        )
        events = [e.event for e in bot.audit()]
        assert "request.authentication" in events and "state.confirmed" in events

    @pytest.mark.parametrize(("alignment", "authenticated"), [("relaxed", True), ("strict", False)])
    def test_a_subdomain_signature_aligns_relaxed_not_strict(
        self, make_bot: BotFactory, person: Person, alignment: str, authenticated: bool
    ) -> None:
        """d=mail.example.test aligns with example.test in relaxed mode only."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", "alignment": alignment, **TRUSTED})
        alice = person("alice", "example.test")
        raw = sign(request_mail(alice.address, bot.address), "mail.example.test", keys_dir=KEYS)
        deliver(bot, alice, raw)
        bot.run_once()
        assert bot.request().authenticated is authenticated

    def test_a_signature_of_another_domain_does_not_authenticate(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """evil.test signing a mail From alice@example.test passes DKIM but is not aligned."""
        bot = make_bot(verification={"mode": "reply_or_dmarc", **TRUSTED})
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        raw = sign(request_mail(alice.address, bot.address), "evil.test", keys_dir=KEYS)
        deliver(bot, mallory, raw, envelope_from=mallory.address)
        bot.run_once()
        alice.wait_for(ACK)
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        assert mallory.messages() == []

    def test_sarbot_can_check_dkim_itself(self, make_bot: BotFactory, person: Person) -> None:
        """Without a trusted verifier, verify_dkim checks the signature through the given DNS."""
        bot = make_bot(
            verification={
                "mode": "reply_or_dmarc",
                "verify_dkim": True,
                "dns_server": "{}:{}".format(*DNS_SERVER),
            }
        )
        alice = person("alice", "example.test")
        deliver(
            bot,
            alice,
            sign(request_mail(alice.address, bot.address), "example.test", keys_dir=KEYS),
        )
        bot.run_once()
        request = bot.request()
        assert request.authenticated
        assert request.authentication == (
            "dkim=pass for example.test, aligned with example.test (checked by sarbot)"
        )

    def test_reply_mode_records_the_evidence_but_still_asks(self, bot: Bot, person: Person) -> None:
        """In the default mode a signed request still needs the reply."""
        alice = person("alice", "example.test")
        deliver(
            bot,
            alice,
            sign(request_mail(alice.address, bot.address), "example.test", keys_dir=KEYS),
        )
        bot.run_once()
        alice.wait_for(ACK)
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION

    def test_manual_mode_waits_for_an_operator_after_the_reply(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """In manual mode the confirmed request waits until `requests approve`."""
        bot = make_bot(verification={"mode": "manual"})
        alice = person("alice", "example.test")
        deliver(bot, alice, request_mail(alice.address, bot.address))
        bot.run_once()
        confirm(bot, alice)
        bot.run_once()
        assert bot.request().state is RequestState.NEEDS_REVIEW
        approve(bot)
        bot.run_once()
        alice.wait_for(EXPORT)
        assert bot.request().state is RequestState.DELIVERED


def approve(bot: Bot) -> None:
    from click.testing import CliRunner

    from sarbot.cli.main import cli

    result = CliRunner().invoke(
        cli,
        ["requests", "approve", bot.request().reference],
        obj={"app": bot.app, "config_path": bot.app.config_path},
    )
    assert result.exit_code == 0, result.output


class TestRedirection:
    def test_asking_for_another_address_waits_for_review(self, bot: Bot, person: Person) -> None:
        """'Send it to my other address' is never followed: review, and the ack says why."""
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        body = f"Please send a copy of my data to {mallory.address} instead, I lost access."
        deliver(bot, alice, request_mail(alice.address, bot.address, body))
        bot.run_once()
        ack = alice.wait_for(ACK)
        text = ack.get_body(preferencelist=("plain",))
        assert text is not None
        assert "only ever send your data to" in " ".join(text.get_content().split())
        request = bot.request()
        assert request.state is RequestState.NEEDS_REVIEW
        confirm(bot, alice)
        bot.run_once()
        assert bot.request().confirmed_at is not None
        approve(bot)
        bot.run_once()
        alice.wait_for(EXPORT)
        assert mallory.messages() == []


class TestConfirmationAttacks:
    def test_a_token_of_another_request_confirms_nothing(self, bot: Bot, person: Person) -> None:
        """alice cannot confirm with bob's token, nor bob with alice's."""
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        for who in (alice, bob):
            deliver(bot, who, request_mail(who.address, bot.address))
        bot.run_once()
        bobs_ack = bob.wait_for(ACK)
        alice.reply(bobs_ack, "using bob's token")
        bot.support.wait_for(lambda m: "bob's token" in m.get_content())
        bot.run_once()
        assert {r.email: r.state for r in bot.requests()} == {
            alice.address: RequestState.AWAITING_CONFIRMATION,
            bob.address: RequestState.AWAITING_CONFIRMATION,
        }

    @pytest.mark.parametrize(
        ("body", "waiting"),
        [
            ("Please send me my data.", RequestState.AWAITING_CONFIRMATION),
            ("Please send my data to m@evil.test instead.", RequestState.NEEDS_REVIEW),
        ],
        ids=["awaiting confirmation", "in review"],
    )
    def test_guessed_codes_are_limited_per_request(
        self, bot: Bot, person: Person, body: str, waiting: RequestState
    ) -> None:
        """After five wrong codes even the right code is refused, also while in review;
        the reply citing the token still confirms."""
        alice = person("alice", "example.test")
        deliver(bot, alice, request_mail(alice.address, bot.address, body))
        bot.run_once()
        ack = alice.wait_for(ACK)
        reference = bot.request().reference
        assert bot.request().state is waiting
        for n in range(5):
            alice.send(bot.address, f"{reference} guess {n}", f"code {'ABCD'}-{'EFG' + 'HJKMN'[n]}")
        bot.support.wait_for(subject_contains("guess 4"))
        bot.run_once()
        assert bot.request().confirmation_failures == 5
        alice.send(bot.address, f"{reference} the real code", f"code {code_in(ack)}")
        bot.support.wait_for(subject_contains("the real code"))
        bot.run_once()
        assert (bot.request().state, bot.request().confirmed_at) == (waiting, None)
        assert [s.outcome for s in bot.seen()][-1] is Outcome.CONFIRMATION_REFUSED
        alice.reply(ack, "the real reply")
        bot.support.wait_for(lambda m: "the real reply" in m.get_content())
        bot.run_once()
        assert bot.request().confirmed_at is not None
        assert [s.outcome for s in bot.seen()][-1] is Outcome.CONFIRMATION

    def test_wrong_codes_are_limited_per_address_a_day(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Over the address's daily limit the right code is refused too; a day later it works."""
        bot = make_bot(
            requests={"max_confirmation_attempts": 5, "max_confirmation_attempts_per_sender": 2}
        )
        alice = person("alice", "example.test")
        deliver(bot, alice, request_mail(alice.address, bot.address))
        bot.run_once()
        ack = alice.wait_for(ACK)
        reference = bot.request().reference
        for n in range(2):
            alice.send(bot.address, f"{reference} guess {n}", f"code ABCD-EFG{'HJ'[n]}")
        bot.support.wait_for(subject_contains("guess 1"))
        bot.run_once()
        alice.send(bot.address, f"{reference} the real code", f"code {code_in(ack)}")
        bot.support.wait_for(subject_contains("the real code"))
        bot.run_once()
        assert bot.request().confirmed_at is None
        bot.offset = timedelta(days=1, minutes=1)
        alice.send(bot.address, f"{reference} once more", f"code {code_in(ack)}")
        bot.support.wait_for(subject_contains("once more"))
        bot.run_once()
        assert bot.request().confirmed_at is not None

    def test_forged_failures_never_lock_out_the_genuine_reply(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """mallory, as ``From: alice``, sends wrong codes and tokens past every limit, and a
        request mail that makes a new acknowledgement; alice's reply to the first one still
        confirms, she gets her data, mallory nothing."""
        bot = make_bot(
            requests={"max_confirmation_attempts": 2, "max_confirmation_attempts_per_sender": 3}
        )
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        deliver(bot, alice, request_mail(alice.address, bot.address))
        bot.run_once()
        ack = alice.wait_for(ACK)
        reference = bot.request().reference
        guessed = f"<{reference}.{'A' * 32}@{bot.address.partition('@')[2]}>"
        for n in range(4):
            mallory.send(
                bot.address,
                f"{reference} forged {n}",
                f"code ABCD-EFG{'HJKM'[n]}",
                from_header=alice.address,
            )
        for n in range(2):
            mallory.send(
                bot.address,
                f"Re: {ack['Subject']} forged token {n}",
                "yes",
                from_header=alice.address,
                headers={"In-Reply-To": guessed, "References": guessed},
            )
        mallory.send(bot.address, "GDPR DATA REQUEST again", from_header=alice.address)
        bot.support.wait_for(subject_contains("forged token 1"))
        bot.support.wait_for(subject_contains("request again"))
        bot.run_once()
        assert [s.outcome for s in bot.seen()].count(Outcome.JOINED) == 1
        assert [m.kind for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT] == [
            MailKind.ACKNOWLEDGEMENT,
            MailKind.ACKNOWLEDGEMENT,
        ]  # the forged request mail made a new challenge
        request = bot.request()
        assert (request.state, request.confirmation_failures) == (
            RequestState.AWAITING_CONFIRMATION,
            4,
        )
        events = [e.event for e in bot.audit()]
        assert (events.count("confirmation.failed"), events.count("confirmation.wrong_token")) == (
            4,
            2,
        )
        alice.reply(ack, "it is me")
        bot.support.wait_for(lambda m: "it is me" in m.get_content())
        bot.run_once()
        alice.wait_for(EXPORT)
        assert bot.request().state is RequestState.DELIVERED
        assert {m.recipient for m in bot.outgoing() if not m.kind.to_operators} == {alice.address}
        assert mallory.messages() == []


class TestFloods:
    def test_a_flood_from_one_address_is_one_request(self, make_bot: BotFactory) -> None:
        """1,000 request mails from one address: one request, acknowledged within the cap."""
        bot = make_bot(requests={"acks_per_sender_per_day": 3})
        alice = unique("alice", "example.test")
        for _ in range(1000):
            bot.support.append(request_mail(alice, bot.address))
        bot.run_once()
        assert len(bot.requests()) == 1
        assert len(bot.outgoing()) == 3
        assert len(bot.seen()) == 1000

    def test_over_the_domain_and_hourly_caps_requests_wait_then_go(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Requests over a cap are kept and acknowledged later: none is dropped."""
        bot = make_bot(requests={"acks_per_domain_per_day": 2, "acks_per_hour": 100})
        people = [person(f"user{n}", "example.test") for n in range(3)]
        for who in people:
            deliver(bot, who, request_mail(who.address, bot.address))
        bot.run_once()
        states = sorted(r.state.value for r in bot.requests())
        assert states == ["awaiting_confirmation", "awaiting_confirmation", "received"]
        bot.offset = timedelta(days=1, minutes=1)
        bot.run_once()
        assert all(r.state is not RequestState.RECEIVED for r in bot.requests())
        for who in people:
            who.wait_for(ACK)


class TestAutoResponder:
    def test_a_vacation_responder_never_starts_a_loop(self, bot: Bot, person: Person) -> None:
        """A real Sieve vacation responder: it does not answer sarbot's acknowledgement (which
        says Auto-Submitted), and its reply to a person's mail in the thread gets no answer."""
        alice = person("alice", "example.test")
        subprocess.run(
            [str(ROOT / "scripts" / "mailstack"), "vacation", alice.address, "I am away."],
            check=True,
            capture_output=True,
        )
        deliver(bot, alice, request_mail(alice.address, bot.address))
        bot.run_once()
        ack = alice.wait_for(ACK)
        # A member of staff writes in the thread by hand: the responder answers that one.
        bot.support.send(alice.address, f"Re: {ack['Subject']}", "Any questions?")
        vacation = bot.support.wait_for(subject_contains("Auto:"))
        assert str(vacation["Auto-Submitted"]).startswith("auto-replied")
        assert [m["Subject"] for m in bot.support.messages() if "Auto:" in str(m["Subject"])] == [
            vacation["Subject"]
        ]  # one reply: none to the acknowledgement
        bot.run_once()
        assert [s.outcome for s in bot.seen()] == [Outcome.REQUEST, Outcome.GUARDED]
        assert len(bot.outgoing()) == 1
        assert [m["Subject"] for m in alice.messages()] == [ack["Subject"], f"Re: {ack['Subject']}"]

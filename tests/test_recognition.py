"""Access requests in other words: found, registered for an operator, never answered by
themselves; accepted or dismissed by an operator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from sarbot.errors import ConfigError
from sarbot.mail.message import parse_message
from sarbot.steps.recognise import (
    PhraseError,
    Recogniser,
    builtin_phrases,
    compile_phrase,
    load_phrases,
    normalise,
    read_phrases,
)
from sarbot.store.deadlines import due_date, start_date
from sarbot.store.states import MailKind, Outcome, RequestState
from sarbot.testing import Correspondent, subject_contains
from tests.conftest import Bot, BotFactory, unique
from tests.test_cli import invoke
from tests.test_cli import write_config as cli_config
from tests.test_operations import command

Person = Callable[[str, str], Correspondent]
ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")
LABELLED = Path(__file__).parent / "data" / "recognition"
PEEK = 16 * 1024  # what intake reads of a message it is unsure of (Mailbox.fetch_starts)
ORDINARY_FLAGGED_AT_MOST = 3
"""How many of the 44 ordinary mails of the labelled set may be flagged (docs/recognition.md):
today a newsletter about access requests sent without list headers, a client asking for help
with an access request they received, and an erasure request ("all the personal data you hold
about me")."""


def recogniser(*extra: str) -> Recogniser:
    phrases = builtin_phrases() + read_phrases(extra)
    return Recogniser(
        phrases, own_address="support@redtrain.test", subject_phrase="GDPR DATA REQUEST"
    )


class TestPhrases:
    def test_normalised_without_case_accents_or_punctuation(self) -> None:
        assert normalise("Demande de DROIT d\u2019accès (Art. 15 RGPD)") == (
            "demande de droit d acces art 15 rgpd"
        )
        assert normalise("Auskunft gemäß Straße") == "auskunft gemass strasse"
        assert normalise("  \t\n ") == ""

    def test_alternatives_prefixes_and_gaps(self) -> None:
        phrase = compile_phrase("auskunft* ... art|artikel 15")
        assert phrase.pattern.search(normalise("Auskunftsersuchen nach Art. 15 DSGVO") + " ")
        assert phrase.pattern.search(normalise("Auskunft gemäß Artikel 15") + " ")
        assert not phrase.pattern.search(normalise("Auskunft über Artikel 150") + " ")
        # Words are whole: "sar request" is not inside "caesar requests".
        sar = compile_phrase("sar request")
        assert not sar.pattern.search(normalise("caesar request") + " ")

    @pytest.mark.parametrize("line", ["...", "a||b", "*", "... ..."])
    def test_a_phrase_that_cannot_be_read_is_refused(self, line: str) -> None:
        with pytest.raises(PhraseError):
            compile_phrase(line)

    def test_operators_add_phrases_in_a_file(self, tmp_path: Path) -> None:
        """The built-in phrases stay, the file's are added; comments and blank lines are
        skipped."""
        extra = tmp_path / "phrases.txt"
        extra.write_text("# ours\n\nsend me my file\n", encoding="utf-8")
        phrases = load_phrases(extra)
        assert len(phrases) == len(builtin_phrases()) + 1
        found = Recogniser(phrases, own_address="s@r.test", subject_phrase="GDPR DATA REQUEST")
        assert found.match("Please send me my file") == "send me my file"
        assert recogniser().match("Please send me my file") is None

    @pytest.mark.parametrize(
        "subject",
        [
            "Subject access request",
            "What data do you hold about me?",
            "Auskunftsersuchen nach Art. 15 DSGVO",
            "Demande d'accès à mes données",
            "Ejercicio del derecho de acceso",
            "Richiesta di accesso ai dati personali",
            "Inzageverzoek AVG",
        ],
    )
    def test_the_issues_examples_are_found(self, subject: str) -> None:
        assert recogniser().match(subject) is not None

    def test_the_body_counts_only_at_its_start(self) -> None:
        body = "Hello,\n" + "Thanks for fixing the printer. " * 200 + "copy of my personal data"
        assert recogniser().match("Data request", "please send me a copy of my personal data")
        assert recogniser().match("Thanks", body) is None


def labelled() -> list[tuple[str, bytes]]:
    files = sorted(LABELLED.glob("*.eml"))
    return [(path.name, path.read_bytes()) for path in files]


class TestLabelledSet:
    """``tests/data/recognition``: requests in six languages and ordinary support mail."""

    def test_the_set_is_big_enough_and_covers_six_languages(self) -> None:
        names = [name for name, _ in labelled()]
        requests = [n for n in names if n.startswith("request-")]
        ordinary = [n for n in names if n.startswith("ordinary-")]
        assert len(names) >= 60 and len(requests) + len(ordinary) == len(names)
        assert {n.split("-")[1] for n in requests} >= {"en", "de", "fr", "es", "it", "nl"}
        assert len(ordinary) >= 25

    def test_every_request_is_found(self) -> None:
        found = recogniser()
        missed = [
            name
            for name, raw in labelled()
            if name.startswith("request-") and not _flagged(found, raw)
        ]
        assert missed == []

    def test_few_ordinary_mails_are_flagged(self) -> None:
        found = recogniser()
        flagged = [
            name
            for name, raw in labelled()
            if name.startswith("ordinary-") and _flagged(found, raw)
        ]
        assert len(flagged) <= ORDINARY_FLAGGED_AT_MOST, flagged


def _flagged(found: Recogniser, raw: bytes) -> bool:
    """As intake decides: the headers first, then what it reads of the message."""
    head = parse_message(raw[:PEEK])
    return found.may_be_request(head) and found.match(head.subject, head.text) is not None


@pytest.mark.mailstack
class TestPossibleRequests:
    def test_registered_not_answered_not_moved_not_read_and_operators_told(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """A request in other words waits for an operator; the mail stays as it was."""
        dpo = Correspondent(person("x", "redtrain.test").server, unique("dpo", "redtrain.test"))
        bot = make_bot(notifications={"operators": [dpo.address], "digest_hour": 23})
        bot.travel_to(bot.now().replace(hour=10, minute=0, second=0))  # before the digest
        alice = person("alice", "example.test")
        alice.send(bot.address, "Data request", "Please send me a copy of my personal data.")
        bot.support.wait_for(subject_contains("Data request"))
        bot.run_once()
        request = bot.request()
        assert request.state is RequestState.POSSIBLE
        assert request.email == alice.address
        assert request.recognised_by is not None and "copy of" in request.recognised_by
        calendar = bot.app.calendar
        assert request.due_on == due_date(start_date(request.received_at, None, calendar), calendar)
        assert [s.outcome for s in bot.seen()] == [Outcome.POSSIBLE]
        # Nothing to alice; one notice to the operator, naming the reference, not her address.
        assert [m.kind for m in bot.outgoing()] == [MailKind.OPERATOR_POSSIBLE]
        notice = dpo.wait_for(subject_contains("may be an access request"))
        assert request.reference in notice.as_string()
        assert alice.address not in notice.as_string()
        # The mail is still in the inbox, unread.
        [(_, flags)] = bot.support.flags()
        assert b"\\Seen" not in flags
        assert bot.support.messages("GDPR") == []
        # A second run neither registers it again nor tells the operator again.
        bot.run_once()
        assert len(bot.requests()) == 1 and len(bot.outgoing()) == 1

    def test_ordinary_mail_and_automatic_mail_are_left_alone(
        self, bot: Bot, person: Person
    ) -> None:
        """Support mail with "access" and "data" in it, and an auto-reply or list mail that
        says "subject access request", are no candidates."""
        bob = person("bob", "example.test")
        bob.send(bot.address, "Access to the shared drive", "Please give me access to the data.")
        bob.send(
            bot.address,
            "Out of office: Subject access request",
            "I am away.",
            headers={"Auto-Submitted": "auto-replied"},
        )
        bob.send(
            bot.address,
            "GDPR news: how to handle a subject access request",
            "This month ...",
            headers={"List-Id": "<news.example.test>"},
        )
        bot.support.wait_for(subject_contains("GDPR news"))
        bot.run_once()
        assert bot.requests() == [] and bot.seen() == [] and bot.outgoing() == []
        assert all(b"\\Seen" not in flags for _, flags in bot.support.flags())

    def test_a_request_in_the_first_part_of_an_html_only_mail(
        self, bot: Bot, person: Person
    ) -> None:
        alice = person("alice", "example.test")
        message = EmailMessage()
        message["From"], message["To"] = alice.address, bot.address
        message["Subject"] = "Frage"
        message["Message-ID"] = make_msgid(domain="example.test")
        message.set_content(
            "<p>Sehr geehrte Damen und Herren,</p><p>ich bitte um <b>Auskunft</b> nach Art. 15 "
            "DSGVO.</p>",
            subtype="html",
        )
        alice.send_raw(bytes(message), bot.address)
        bot.support.wait_for(subject_contains("Frage"))
        bot.run_once()
        assert bot.request().state is RequestState.POSSIBLE

    def test_accepted_it_is_acknowledged_and_keeps_its_receipt(
        self, bot: Bot, person: Person
    ) -> None:
        """accept: the requester is asked to confirm, the deadline still runs from the first
        mail, and the confirmed request is answered."""
        alice = person("alice", "example.test")
        alice.send(bot.address, "What data do you hold about me?", "Thanks, Alice")
        bot.support.wait_for(subject_contains("What data"))
        bot.run_once()
        possible = bot.request()
        bot.travel_to(bot.now() + timedelta(days=5))
        output = command(bot, "requests", "accept", possible.reference, "--reason", "it is one")
        assert f"{possible.reference}: accepted" in output
        bot.run_once()
        accepted = bot.request()
        assert accepted.state is RequestState.AWAITING_CONFIRMATION
        assert (accepted.received_at, accepted.due_on) == (possible.received_at, possible.due_on)
        alice.reply(alice.wait_for(ACK))
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        bot.run_once()
        alice.wait_for(EXPORT)
        assert bot.request().due_on == possible.due_on  # confirmation did not restart it
        accept = [e for e in bot.audit() if e.to_state == "received"]
        assert accept and accept[0].reason == "it is one" and accept[0].actor != "daemon"

    def test_dismissed_it_is_closed_with_the_reason_and_nobody_is_written_to(
        self, bot: Bot, person: Person
    ) -> None:
        alice = person("alice", "example.test")
        alice.send(bot.address, "Subject access request", "Only a test of your form.")
        bot.support.wait_for(subject_contains("Subject access"))
        bot.run_once()
        reference = bot.request().reference
        command(bot, "requests", "dismiss", reference, status=2)  # the reason is required
        command(bot, "requests", "dismiss", reference, "--reason", "a test, said the sender")
        bot.run_once()
        assert bot.request().state is RequestState.DISMISSED
        assert bot.outgoing() == []
        [dismissal] = [e for e in bot.audit() if e.to_state == "dismissed"]
        assert dismissal.reason == "a test, said the sender"
        # Neither can be done twice, nor to a request.
        assert "only a possible request" in command(bot, "requests", "accept", reference, status=1)

    def test_a_later_request_in_the_agreed_words_takes_over_the_earlier_receipt(
        self, bot: Bot, person: Person
    ) -> None:
        """The month runs from the first mail: the request made later keeps its receipt."""
        alice = person("alice", "example.test")
        alice.send(bot.address, "Right of access", "What do you keep about me?")
        bot.support.wait_for(subject_contains("Right of access"))
        bot.run_once()
        possible = bot.request()
        bot.travel_to(bot.now() + timedelta(days=3))
        alice.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(subject_contains("GDPR DATA"))
        bot.run_once()
        earlier, request = bot.requests()
        assert earlier.state is RequestState.DISMISSED
        assert request.state is RequestState.AWAITING_CONFIRMATION
        assert (request.received_at, request.due_on) == (possible.received_at, possible.due_on)
        alice.wait_for(ACK)

    def test_two_mails_of_one_sender_are_one_possible_request(
        self, bot: Bot, person: Person
    ) -> None:
        alice = person("alice", "example.test")
        alice.send(bot.address, "Subject access request", "first")
        alice.send(bot.address, "Re: Subject access request", "second, as I heard nothing")
        bot.support.wait_for(subject_contains("Re: Subject access"))
        bot.run_once()
        assert len(bot.requests()) == 1
        assert [s.outcome for s in bot.seen()] == [Outcome.POSSIBLE, Outcome.POSSIBLE]

    def test_the_list_the_digest_and_an_accept_refused_for_a_sender_with_a_request(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        dpo = Correspondent(person("x", "redtrain.test").server, unique("dpo", "redtrain.test"))
        bot = make_bot(notifications={"operators": [dpo.address], "digest_hour": 0})
        bot.travel_to(bot.now().replace(hour=10, minute=0, second=0))
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        bob.send(bot.address, "DSAR", "Please treat this as a DSAR.")
        alice.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(subject_contains("GDPR DATA"))
        bot.run_once()
        states = {r.email: r for r in bot.requests()}
        possible = states[bob.address]
        assert possible.state is RequestState.POSSIBLE
        listing = command(bot, "requests", "list", "--state", "possible")
        assert possible.reference in listing and states[alice.address].reference not in listing
        digest = dpo.wait_for(subject_contains("Daily summary"))
        text = digest.get_body(preferencelist=("plain",))
        assert text is not None
        body = text.get_content()
        assert "may be an access request" in body and possible.reference in body
        assert bob.address not in body
        # bob sends a request in the agreed words after all: his possible one is taken over.
        bob.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(lambda m: m["From"] == bob.address and "GDPR" in m["Subject"])
        bot.run_once()
        assert "only a possible request" in command(
            bot, "requests", "accept", possible.reference, status=1
        )


class TestRecognitionSettings:
    def test_switched_off_nothing_is_registered(self, make_bot: BotFactory, person: Person) -> None:
        bot = make_bot(recognition={"enabled": False})
        person("alice", "example.test").send(bot.address, "Subject access request")
        bot.support.wait_for(subject_contains("Subject access"))
        bot.run_once()
        assert bot.requests() == []

    def test_a_phrases_file_that_cannot_be_read_stops_the_start(
        self, make_bot: BotFactory, tmp_path: Path
    ) -> None:
        bad = tmp_path / "phrases.txt"
        bad.write_text("a||b\n", encoding="utf-8")
        bot = make_bot(recognition={"phrases_file": str(bad)})
        with pytest.raises(ConfigError, match="phrases_file"):
            bot.app.daemon()

    def test_config_check_names_a_bad_phrases_file(self, tmp_path: Path) -> None:
        config = cli_config(tmp_path, "support@redtrain.test")
        (tmp_path / "phrases.txt").write_text("send me my file\na||b\n", encoding="utf-8")
        config.write_text(config.read_text() + '\n[recognition]\nphrases_file = "phrases.txt"\n')
        code, output = invoke(config, "config", "check")
        assert code == 1 and "phrases_file" in output and "a||b" in output
        (tmp_path / "phrases.txt").write_text("send me my file\n", encoding="utf-8")
        code, output = invoke(config, "config", "check")
        assert code == 0 and f"{len(builtin_phrases()) + 1} request phrase(s)" in output

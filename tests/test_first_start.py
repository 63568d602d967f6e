"""The first start on a support mailbox with history: only new mail is answered."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest

from sarbot.store.deadlines import due_date, start_date
from sarbot.store.models import MailboxPosition
from sarbot.store.states import MailKind, Outcome, RequestState
from sarbot.testing import Correspondent, subject_contains
from tests.conftest import Bot, BotFactory, unique
from tests.test_operations import command

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
ACK = subject_contains("Please confirm")


def old_mail(bot: Bot, sender: str, subject: str, body: str, arrived: datetime) -> None:
    """A mail that arrived in the support mailbox at ``arrived``, long before sarbot."""
    message = EmailMessage()
    message["From"], message["To"] = sender, bot.address
    message["Subject"] = subject
    message["Date"] = format_datetime(arrived)
    message["Message-ID"] = make_msgid(domain="example.test")
    message.set_content(body)
    bot.support.append(bytes(message), arrived=arrived)


def history_bot(make_bot: BotFactory, person: Person, start: str) -> tuple[Bot, Correspondent]:
    dpo = Correspondent(person("x", "redtrain.test").server, unique("dpo", "redtrain.test"))
    bot = make_bot(
        imap={"start": start}, notifications={"operators": [dpo.address], "digest_hour": 23}
    )
    bot.travel_to(bot.now().replace(hour=10, minute=0, second=0))  # before the digest
    return bot, dpo


class TestFirstStart:
    def test_mail_from_before_the_start_is_listed_never_answered(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """start = "now": old requests, in the agreed words or others, are listed; ordinary old
        mail is left alone; nothing old is answered, moved or read; new mail is answered."""
        bot, dpo = history_bot(make_bot, person, "now")
        alice, bob, carol = (person(n, "example.test") for n in ("alice", "bob", "carol"))
        two_years_ago = datetime(2024, 11, 4, 9, 30, tzinfo=UTC)
        old_mail(bot, alice.address, "GDPR DATA REQUEST", "Please.", two_years_ago)
        old_mail(
            bot, bob.address, "Question", "What personal data do you hold on me?", two_years_ago
        )
        old_mail(bot, carol.address, "Printer broken", "It jams.", two_years_ago)
        bot.run_once()
        assert bot.outgoing()[0].kind is MailKind.OPERATOR_HISTORY
        assert {m.recipient for m in bot.outgoing()} == {dpo.address}
        requests = {r.email: r for r in bot.requests()}
        assert set(requests) == {alice.address, bob.address}
        for request in requests.values():
            assert request.state is RequestState.HISTORY
            assert request.received_at == two_years_ago
            calendar = bot.app.calendar
            assert request.due_on == due_date(start_date(two_years_ago, None, calendar), calendar)
        assert sorted(s.outcome for s in bot.seen()) == [Outcome.HISTORY, Outcome.HISTORY]
        assert all(b"\\Seen" not in flags for _, flags in bot.support.flags())
        assert bot.support.messages("GDPR") == []
        notice = dpo.wait_for(subject_contains("before the start"))
        text = notice.get_body(preferencelist=("plain",))
        assert text is not None
        body = text.get_content()
        assert requests[alice.address].reference in body and alice.address not in body
        listing = command(bot, "requests", "history")
        assert requests[bob.address].reference in listing
        assert "take one in with 'sarbot requests accept REF'" in listing
        listed = {r["email"]: r for r in json.loads(command(bot, "requests", "history", "--json"))}
        assert set(listed) == {alice.address, bob.address}
        for address, row in listed.items():
            assert row["reference"] == requests[address].reference
            assert (row["state"], row["received_at"]) == ("history", "2024-11-04T09:30:00+00:00")
            assert row["due"] == str(requests[address].due_on)
        assert listed[alice.address]["recognised_by"] == "the subject phrase GDPR DATA REQUEST"
        assert "personal data" in listed[bob.address]["recognised_by"]
        # New mail after the start is answered as usual; the history list goes out once.
        dave = person("dave", "example.test")
        dave.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(lambda m: m["From"] == dave.address)
        bot.run_once()
        dave.wait_for(ACK)
        kinds = [m.kind for m in bot.outgoing()]
        assert kinds.count(MailKind.OPERATOR_HISTORY) == 1
        assert [m.recipient for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT] == [
            dave.address
        ]

    def test_an_operator_takes_an_old_request_in(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """accept on a history entry: acknowledged now; its deadline stays from its receipt."""
        bot, _ = history_bot(make_bot, person, "now")
        alice = person("alice", "example.test")
        arrived = bot.now() - timedelta(days=10)
        old_mail(bot, alice.address, "GDPR DATA REQUEST", "Please.", arrived)
        bot.run_once()
        old = bot.request()
        assert old.state is RequestState.HISTORY
        command(bot, "requests", "accept", old.reference)
        bot.run_once()
        alice.wait_for(ACK)
        request = bot.request()
        assert request.state is RequestState.AWAITING_CONFIRMATION
        assert request.due_on == old.due_on and request.received_at == old.received_at

    def test_a_start_date_answers_the_mail_that_came_after_it(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """start = a date: mail already there that arrived on or after it is answered."""
        start = date(2026, 6, 1)
        bot, _ = history_bot(make_bot, person, start.isoformat())
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        old_mail(
            bot, alice.address, "GDPR DATA REQUEST", "old", datetime(2026, 5, 31, 21, tzinfo=UTC)
        )
        old_mail(bot, bob.address, "GDPR DATA REQUEST", "new", datetime(2026, 6, 2, 9, tzinfo=UTC))
        bot.run_once()
        states = {r.email: r.state for r in bot.requests()}
        # 31 May 21:00 UTC is 22:00 in London, before the start; 2 June is after it.
        assert states == {
            alice.address: RequestState.HISTORY,
            bob.address: RequestState.AWAITING_CONFIRMATION,
        }
        bob.wait_for(ACK)

    def test_the_start_is_recorded_once(self, make_bot: BotFactory, person: Person) -> None:
        """A restart does not move the start: mail that came while sarbot was down is new."""
        bot, _ = history_bot(make_bot, person, "now")
        alice = person("alice", "example.test")
        bot.run_once()  # an empty mailbox: the start is before any mail
        with bot.app.sessions() as session:
            [position] = session.query(MailboxPosition).all()
            assert position.history_until_uid == 0
        alice.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        alice.wait_for(ACK)

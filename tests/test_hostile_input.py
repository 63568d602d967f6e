"""Hostile and broken mail ends in a defined state: no crash, no hang, no answer.

Parsing and deciding are pure functions here; the same mail goes through the
whole daemon on the real mail stack at the end.  Hypothesis's per-example
deadline is the hang detector: no mail may take more than a second.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sarbot.config import VerificationSettings
from sarbot.export.keys import find_key
from sarbot.mail.authentication import evaluate
from sarbot.mail.challenge import cited_tokens, quoted_codes
from sarbot.mail.message import parse_headers, parse_message
from sarbot.steps.classify import Classifier, Kind
from sarbot.steps.recognise import asks_for_another_address
from sarbot.store.states import MailKind, Outcome, RequestState
from tests.conftest import Bot, BotFactory
from tests.test_corpus import MAILS

CLASSIFIER = Classifier(
    own_address="support@redtrain.test",
    message_id_domain="redtrain.test",
    phrase="GDPR DATA REQUEST",
    prefix="SAR",
)
TRUSTING = VerificationSettings(trusted_authserv_ids=("mail.redtrain.test",))
ONE_SECOND = settings(deadline=timedelta(seconds=1), max_examples=150)


def decide(raw: bytes) -> Kind:
    """Everything sarbot works out from one message, before any state changes."""
    mail = parse_message(raw)
    kind = CLASSIFIER.classify(mail).kind
    evaluate(mail, "alice@example.test", TRUSTING)
    find_key(raw, "alice@example.test")
    asks_for_another_address(mail.text, "alice@example.test", "support@redtrain.test")
    cited_tokens(mail.cited_ids, "redtrain.test")
    quoted_codes(mail.text)
    return kind


def nested(depth: int) -> bytes:
    head = b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\nMIME-Version: 1.0\r\n"
    body = b"hello\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\nContent-Type: text/plain\r\n\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    return head + body


HOSTILE: dict[str, bytes] = {
    "deeply nested MIME": nested(300),
    "huge header": b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\nX-Junk: "
    + b"a" * 2_000_000
    + b"\r\n\r\nbody\r\n",
    "ten thousand headers": b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\n"
    + b"".join(b"X-H%d: v\r\n" % n for n in range(10_000))
    + b"\r\nbody\r\n",
    "raw-unicode-escape subject": (
        b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST \\u00e9\\x\r\n\r\nb\r\n"
    ),
    "latin-1 garbage": (
        b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST caf\xe9\r\n\r\n\xef\r\n"
    ),
    "broken encoded words": (
        b"From: =?utf-8?q?=ZZ?= <alice@example.test>\r\n"
        b"Subject: =?x-unknown?b?R0RQUiBEQVRBIFJFUVVFU1Q=?=\r\n\r\n.\r\n"
    ),
    "non-ASCII attachment name": (
        b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b'--x\r\nContent-Type: application/octet-stream; name="\xe5\xa5\x91\xe7\xb4\x84.pdf"\r\n'
        b"Content-Disposition: attachment; filename*=utf-8''%E5%A5%91.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--x--\r\n"
    ),
    "no header at all": b"just text, no headers\r\n",
    "empty": b"",
    "NUL bytes": b"From: alice@example.test\x00\r\nSubject: GDPR\x00 DATA REQUEST\r\n\r\n\x00\r\n",
}
KIND = {
    "deeply nested MIME": Kind.REQUEST,
    "huge header": Kind.REQUEST,
    "ten thousand headers": Kind.REQUEST,
    "raw-unicode-escape subject": Kind.REQUEST,
    "latin-1 garbage": Kind.REQUEST,
    "broken encoded words": Kind.UNRELATED,  # the subject's charset is unknown: not a request
    "non-ASCII attachment name": Kind.REQUEST,
    "no header at all": Kind.UNRELATED,
    "empty": Kind.UNRELATED,
    "NUL bytes": Kind.UNRELATED,  # the NUL splits the subject's phrase
}


class TestHostileMail:
    @pytest.mark.parametrize("name", sorted(HOSTILE))
    def test_hostile_mail_is_decided_without_error(self, name: str) -> None:
        """Each hostile message parses and is classified as its headers say; nothing raises."""
        assert decide(HOSTILE[name]) is KIND[name]

    @pytest.mark.parametrize("path", MAILS, ids=[p.name for p in MAILS])
    def test_every_corpus_mail_is_decided_without_error(self, path: Path) -> None:
        """The shared corpus, bounces and malformed mails included, goes through every decision.

        The test is that no decision raises; tests/test_corpus.py pins each mail's kind.
        """
        decide(path.read_bytes())


class TestFuzzing:
    @ONE_SECOND
    @given(st.sampled_from(MAILS), st.data())
    def test_damaged_corpus_mail_never_breaks_a_decision(
        self, path: Path, data: st.DataObject
    ) -> None:
        """Corpus mail with random bytes overwritten, cut or inserted still gets a decision.

        The test is that nothing raises or takes over a second.
        """
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 20))):
            at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
            raw[at : at + data.draw(st.integers(0, 50))] = data.draw(st.binary(max_size=50))
        decide(bytes(raw))

    @ONE_SECOND
    @given(st.lists(st.text(max_size=120), max_size=6), st.text(max_size=300))
    def test_reply_matching_takes_anything(self, ids: list[str], text: str) -> None:
        """Cited ids and quoted codes are found in any input, or not at all, without error."""
        for cited in cited_tokens(tuple(ids), "redtrain.test"):
            assert cited.reference.startswith(("SAR-",)) or cited.reference[:2].isupper()
        assert len(quoted_codes(text)) <= 3

    @ONE_SECOND
    @given(st.binary(max_size=4000))
    def test_headers_alone_never_fail(self, raw: bytes) -> None:
        """The cheap first look at a message works on any bytes (nothing raises)."""
        CLASSIFIER.classify(parse_headers(raw))


@pytest.mark.mailstack
class TestThroughTheDaemon:
    def test_hostile_mail_through_the_mailbox_ends_in_a_defined_state(self, bot: Bot) -> None:
        """Through the real mailbox: the requests are alice's one request, the rest left alone.

        Every hostile request claims alice@example.test: the first opens her request, the
        others join it, and only alice is written to (within the acknowledgement cap).
        """
        sent = [name for name, raw in HOSTILE.items() if raw]
        for name in sent:
            bot.support.append(HOSTILE[name])
        bot.run_once()
        requests = [name for name in sent if KIND[name] is Kind.REQUEST]
        outcomes = [seen.outcome for seen in bot.seen()]
        assert outcomes == [Outcome.REQUEST] + [Outcome.JOINED] * (len(requests) - 1)
        assert [(r.email, r.state) for r in bot.requests()] == [
            ("alice@example.test", RequestState.AWAITING_CONFIRMATION)
        ]
        answers = bot.outgoing()
        assert answers and {(m.kind, m.recipient) for m in answers} == {
            (MailKind.ACKNOWLEDGEMENT, "alice@example.test")
        }
        left = [flags for _, flags in bot.support.flags("INBOX")]
        assert left == [()] * (len(sent) - len(requests))  # untouched, still unread

    def test_mail_over_the_size_cap_is_left_for_a_person(self, make_bot: BotFactory) -> None:
        """A request larger than the cap is not downloaded: refused with a note, left unread."""
        bot = make_bot(imap={"max_message_bytes": 100_000})
        raw = (
            b"From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\n"
            b"Message-ID: <big@example.test>\r\n\r\n" + b"x" * 200_000 + b"\r\n"
        )
        bot.support.append(raw)
        bot.run_once()
        [seen] = bot.seen()
        assert seen.outcome is Outcome.TOO_LARGE
        assert bot.outgoing() == []
        assert dict(bot.support.flags("INBOX")) == {"<big@example.test>": ()}

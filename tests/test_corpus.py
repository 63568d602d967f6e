"""Real-world mail, malformed included, never crashes sarbot or draws a reply."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sarbot.store.states import MailState, Outcome, RequestState
from tests.conftest import Bot

pytestmark = pytest.mark.mailstack
CORPUS_CANDIDATES = [
    Path(os.environ.get("SARBOT_CORPUS", "/nonexistent")),
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "spamscope-mail-parser",
    Path("/work/shared/corpus/spamscope-mail-parser"),
]
CORPUS = next((path for path in CORPUS_CANDIDATES if path.is_dir()), CORPUS_CANDIDATES[1])
MAILS = sorted(CORPUS.glob("*.eml"))
SUBJECT_RE = re.compile(rb"^Subject:[^\n]*\n(?:[ \t][^\n]*\n)*", re.IGNORECASE | re.MULTILINE)


def test_the_corpus_is_there() -> None:
    """The shared corpus must be found (or named by SARBOT_CORPUS), or nothing below is tested."""
    assert len(MAILS) >= 20, f"corpus not found; looked in {[str(p) for p in CORPUS_CANDIDATES]}"


def as_request(raw: bytes) -> bytes:
    """The same mail with its subject made into a request."""
    head_end = raw.find(b"\n\n")
    head, body = (raw, b"") if head_end < 0 else (raw[: head_end + 1], raw[head_end + 1 :])
    head = SUBJECT_RE.sub(b"", head)
    return b"Subject: GDPR DATA REQUEST\r\n" + head + body


def test_corpus_mail_is_left_alone(bot: Bot) -> None:
    """None of it is a request: nothing is answered, read, moved or flagged."""
    support = bot.support
    for path in MAILS:
        support.append(path.read_bytes())
    bot.run_once()
    assert bot.requests() == []
    assert bot.outgoing() == []
    flags = support.flags("INBOX")
    assert len(flags) == len(MAILS)
    assert all(value == () for _id, value in flags)


def test_corpus_mail_as_requests_reaches_a_defined_state(bot: Bot) -> None:
    """As requests, each mail is refused or becomes a request; bounces are never answered."""
    support = bot.support
    for path in MAILS:
        support.append(as_request(path.read_bytes()))
    bot.run_once()
    seen = bot.seen()
    assert len(seen) == len(MAILS)
    outcomes = {s.outcome for s in seen}
    assert outcomes <= {
        Outcome.REQUEST,
        Outcome.GUARDED,
        Outcome.INVALID_SENDER,
        Outcome.RATE_LIMITED,
        Outcome.JOINED,
    }
    bounce = CORPUS / "mail_malformed_2.eml"
    bounce_id = re.search(rb"^Message-ID:\s*(<[^>]+>)", bounce.read_bytes(), re.I | re.M)
    assert bounce_id is not None
    assert {s.message_key: s.outcome for s in seen}[bounce_id.group(1).decode()] is Outcome.GUARDED
    # The senders are outside the test domains, so the mail server refuses every acknowledgement
    # for good: each request waits for a human instead of being answered elsewhere.
    for request in bot.requests():
        assert request.state is RequestState.NEEDS_REVIEW
    assert {m.state for m in bot.outgoing()} <= {MailState.FAILED}

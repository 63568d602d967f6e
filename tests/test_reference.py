"""References: random, unique, and in the format replies are recognised by."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from connectors.imap_mailbox import SAR_REFERENCE_RE
from sarbot.mail.challenge import challenge_message_id, cited_tokens, new_challenge
from sarbot.mail.message import parse_headers
from sarbot.steps.classify import Classifier
from sarbot.store import db
from sarbot.store.models import Request
from sarbot.store.references import ReferenceExhausted, new_reference, random_reference
from sarbot.store.states import RequestState

FORMAT = re.compile(r"^SAR-2026-\d{8}$")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine)
    with db.session_factory(engine)() as opened:
        yield opened
    engine.dispose()


def store(session: Session, ref: str) -> None:
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    session.add(
        Request(
            reference=ref,
            email="alice@example.test",
            state=RequestState.RECEIVED,
            attempts=0,
            token_hash="",
            code_hash="",
            confirmation_failures=0,
            thread="",
            received_at=at,
            expires_at=at + timedelta(days=14),
        )
    )
    session.flush()


class TestFormat:
    def test_the_year_and_eight_digits(self) -> None:
        """SAR-2026- and eight digits, leading zeros kept."""
        for _ in range(200):
            assert FORMAT.match(random_reference("SAR", 2026))

    def test_every_recogniser_finds_it(self) -> None:
        """The classifier, the challenge token and the mailbox connector all match it."""
        ref = random_reference("SAR", 2026)
        classifier = Classifier(
            own_address="support@redtrain.test",
            message_id_domain="redtrain.test",
            phrase="GDPR DATA REQUEST",
            prefix="SAR",
        )
        mail = parse_headers(f"From: a@example.test\r\nSubject: Re: [{ref}] Your data\r\n".encode())
        assert classifier.references_in(mail) == (ref,)
        token = new_challenge().token
        [cited] = cited_tokens(
            (challenge_message_id(ref, token, "redtrain.test")[1:-1],), "redtrain.test"
        )
        assert (cited.reference, cited.token) == (ref, token)
        assert SAR_REFERENCE_RE.search(f"Re: [{ref}] Your data")


class TestUnguessable:
    def test_references_in_a_row_are_not_a_sequence(self, session: Session) -> None:
        """Fifty references in a row: all different, and spread over the whole range."""
        refs = []
        for _ in range(50):
            refs.append(new_reference(session, "SAR", 2026))
            store(session, refs[-1])
        numbers = sorted(int(ref.rpartition("-")[2]) for ref in refs)
        assert len(set(numbers)) == 50
        assert numbers[-1] - numbers[0] > 10**6  # a counter would span 49

    def test_a_reference_in_use_is_drawn_again(
        self, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A draw that collides with a stored reference is replaced by a fresh one."""
        store(session, "SAR-2026-00000042")
        draws = iter([42, 42, 7])
        monkeypatch.setattr(secrets, "randbelow", lambda _n: next(draws))
        assert new_reference(session, "SAR", 2026) == "SAR-2026-00000007"

    def test_no_endless_loop(self, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
        """Should every draw collide, it stops with an error instead of looping."""
        store(session, "SAR-2026-00000042")
        monkeypatch.setattr(secrets, "randbelow", lambda _n: 42)
        with pytest.raises(ReferenceExhausted):
            new_reference(session, "SAR", 2026)

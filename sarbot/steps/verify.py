"""Checking the replies that answer a challenge, and expiring what was never confirmed.

The identity of a request is the normalised From address of the request mail;
sarbot writes only to that address.  A confirmation must come from the same
address and prove it read the acknowledgement, through one of two channels:

* the **token** channel: the reply cites the acknowledgement's Message-ID, which
  carries a 192-bit random token, in In-Reply-To or References.  Nobody can
  guess it, so it is never rate limited: while the request waits for proof
  and has not expired, the right token confirms whatever failed before.
  Wrong tokens are recorded (``confirmation.wrong_token``) and count for
  nothing, so mail forged in the requester's name cannot lock them out.
* the **code** channel: the reply quotes the reference with the 8-character
  code printed in the acknowledgement, for mail clients that drop the
  threading headers.  A code is short enough to be worth guessing, so wrong
  codes are limited per request (``max_confirmation_attempts``) and per
  address a day (``max_confirmation_attempts_per_sender``); over a limit, even
  the right code is refused, and only the token still confirms.

(Opening a request and sending the challenge is ``sarbot.steps.acknowledge``'s job.)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sarbot.config import Settings
from sarbot.mail.challenge import (
    cited_tokens,
    matches,
    quoted_codes,
)
from sarbot.mail.letters import Letters
from sarbot.mail.message import IncomingMail
from sarbot.steps.classify import Classification
from sarbot.steps.intake import Verdict
from sarbot.store.deadlines import Calendar
from sarbot.store.lifecycle import audit, start_the_clock, transition
from sarbot.store.models import AuditEvent, Request
from sarbot.store.states import MailKind, Outcome, RequestState

WRONG_CODE_EVENT = "confirmation.failed"
"""Audit event of a wrong code: these count towards the code channel's limits."""
WRONG_TOKEN_EVENT = "confirmation.wrong_token"  # noqa: S105 (an event name, not a secret)
"""Audit event of a wrong token: recorded, and never counted."""


class Proof(StrEnum):
    """The channel a reply proved itself through."""

    NONE = "nothing"
    TOKEN = "challenge token"  # noqa: S105 (a name, not a secret)
    CODE = "confirmation code"


class Verifier:
    def __init__(self, settings: Settings, letters: Letters, calendar: Calendar) -> None:
        self.settings = settings
        self.letters = letters
        self.domain = settings.message_id_domain
        self.calendar = calendar

    def check_reply(
        self, session: Session, mail: IncomingMail, found: Classification, *, now: datetime
    ) -> Verdict:
        """Decide what a reply to sarbot's mail does: confirm a request, or nothing."""
        sender = mail.sender
        if sender is None:
            return Verdict(Outcome.INVALID_SENDER, reason=mail.sender_problem)
        request, proof = self._proven_request(session, mail, found)
        if request is None:
            return self._unproven(session, sender, mail, found, now=now)
        if sender != request.email:
            return _from_another_address(session, request, now)
        if not _awaits_proof(request):
            audit(
                session,
                request,
                "reply.received",
                at=now,
                reason=f"reply while {request.state.value}",
            )
            return Verdict(Outcome.UNRELATED_REPLY, request, f"request is {request.state.value}")
        if request.state is RequestState.AWAITING_CONFIRMATION and now >= request.expires_at:
            audit(
                session, request, "confirmation.refused", at=now, reason="confirmation after expiry"
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "request expired")
        if proof is Proof.CODE and self._code_locked(session, request, now):
            audit(
                session,
                request,
                "confirmation.refused",
                at=now,
                reason="too many wrong codes: only the token confirms now",
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "too many wrong codes")
        request.confirmed_at = now
        start_the_clock(request, self.calendar)
        request.add_to_thread(mail.message_id)
        if request.state is RequestState.NEEDS_REVIEW:
            # The operator decides; the reply still proves the mailbox, for when they approve.
            audit(
                session, request, "confirmation.recorded", at=now, reason=f"cites the {proof.value}"
            )
            return Verdict(Outcome.CONFIRMATION, request)
        reason = f"reply from the requester citing the {proof.value}"
        if self.settings.verification.mode == "manual":
            request.review_reason = "manual verification: an operator approves every request"
            transition(session, request, RequestState.NEEDS_REVIEW, at=now, reason=reason)
        else:
            transition(session, request, RequestState.CONFIRMED, at=now, reason=reason)
        return Verdict(Outcome.CONFIRMATION, request)

    def _code_locked(self, session: Session, request: Request, now: datetime) -> bool:
        """Wrong codes: a few per request, and a few more per address a day (tokens never count)."""
        limits = self.settings.requests
        if request.confirmation_failures >= limits.max_confirmation_attempts:
            return True
        failures_today = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .join(Request, AuditEvent.request_id == Request.id)
            .where(Request.email == request.email)
            .where(AuditEvent.event == WRONG_CODE_EVENT)
            .where(AuditEvent.at > now - timedelta(days=1))
        )
        return int(failures_today or 0) >= limits.max_confirmation_attempts_per_sender

    def _proven_request(
        self, session: Session, mail: IncomingMail, found: Classification
    ) -> tuple[Request | None, Proof]:
        """The request this reply proves it read the acknowledgement of, and by which channel."""
        for cited in cited_tokens(mail.cited_ids, self.domain):
            request = self._by_reference(session, cited.reference)
            if request is not None and any(
                matches(cited.token, token) for token, _ in request.challenges() if token
            ):
                return request, Proof.TOKEN
        codes = quoted_codes(mail.text)
        for reference in found.references:
            request = self._by_reference(session, reference)
            if request is not None and any(
                matches(code, stored)
                for code in codes
                for _, stored in request.challenges()
                if stored
            ):
                return request, Proof.CODE
        return None, Proof.NONE

    def _unproven(
        self,
        session: Session,
        sender: str,
        mail: IncomingMail,
        found: Classification,
        *,
        now: datetime,
    ) -> Verdict:
        """A reply that proves nothing: record a failed attempt if it tried to.

        Wrong codes count towards the code channel's limits; wrong tokens are
        only recorded, since no one can guess a token and anyone can forge a From.
        """
        named = [cited.reference for cited in cited_tokens(mail.cited_ids, self.domain)]
        coded = list(found.references) if quoted_codes(mail.text) else []
        for reference in dict.fromkeys([*named, *found.references]):
            request = self._by_reference(session, reference)
            if request is None or not _awaits_proof(request):
                continue
            if request.email != sender:
                return _from_another_address(session, request, now)
            if reference in coded:
                request.confirmation_failures += 1
                audit(session, request, WRONG_CODE_EVENT, at=now, reason="wrong code")
                return Verdict(Outcome.CONFIRMATION_REFUSED, request, "wrong code")
            if reference in named:
                audit(session, request, WRONG_TOKEN_EVENT, at=now, reason="wrong token")
                return Verdict(Outcome.CONFIRMATION_REFUSED, request, "wrong token")
        return Verdict(Outcome.UNRELATED_REPLY, reason="no request proven")

    def expire_due(self, session: Session, *, now: datetime) -> list[Request]:
        """Expire unconfirmed requests past their date and queue the notice."""
        query = (
            select(Request)
            .where(Request.state == RequestState.AWAITING_CONFIRMATION)
            .where(Request.expires_at <= now)
            .order_by(Request.id)
            .with_for_update()  # each row before the audit head, in the order decisions lock them
        )
        expired = list(session.scalars(query))
        for request in expired:
            transition(
                session, request, RequestState.EXPIRED, at=now, reason="not confirmed in time"
            )
            self.letters.post(
                session,
                request,
                MailKind.EXPIRY_NOTICE,
                # Called at once, inside post: the loop's request is the one meant.
                lambda message_id: self.letters.expiry_notice(
                    request,  # noqa: B023
                    message_id=message_id,
                    now=now,
                ),
                now=now,
            )
        return expired

    @staticmethod
    def _by_reference(session: Session, reference: str) -> Request | None:
        return session.scalar(select(Request).where(Request.reference == reference))


def _from_another_address(session: Session, request: Request, now: datetime) -> Verdict:
    """A reply naming a request but sent from another address: refused, and recorded."""
    audit(session, request, "confirmation.refused", at=now, reason="reply from another address")
    return Verdict(Outcome.CONFIRMATION_REFUSED, request, "sender does not match")


def _awaits_proof(request: Request) -> bool:
    """Waiting for the requester's confirmation (also while an operator reviews it)."""
    return request.confirmed_at is None and request.state in (
        RequestState.AWAITING_CONFIRMATION,
        RequestState.NEEDS_REVIEW,
    )

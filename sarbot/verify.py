"""Checking the replies that answer a challenge, and expiring what was never confirmed.

The identity of a request is the normalised From address of the request mail;
sarbot writes only to that address.  A confirmation must come from the same
address and prove it read the acknowledgement: it cites the challenge token,
or it quotes the reference together with the confirmation code.  Wrong
tokens and codes are limited per request and per address.  (Opening a request
and sending the challenge is ``sarbot.acknowledge``'s job.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sarbot import outbox
from sarbot.challenge import (
    cited_tokens,
    matches,
    quoted_codes,
)
from sarbot.classify import Classification
from sarbot.compose import Composer, as_bytes, new_message_id
from sarbot.config import Settings
from sarbot.lifecycle import audit, start_the_clock, transition
from sarbot.message import IncomingMail
from sarbot.models import AuditEvent, Request
from sarbot.states import MailKind, Outcome, RequestState


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    request: Request | None = None
    reason: str = ""


class Verifier:
    def __init__(self, settings: Settings, composer: Composer) -> None:
        self.settings = settings
        self.composer = composer
        self.domain = settings.message_id_domain
        self.calendar = settings.deadlines.calendar()

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
        if self._too_many_failures(session, request, now):
            audit(
                session, request, "confirmation.refused", at=now, reason="too many failed attempts"
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "too many failed attempts")
        request.confirmed_at = now
        start_the_clock(request, self.calendar)
        request.add_to_thread(mail.message_id)
        if request.state is RequestState.NEEDS_REVIEW:
            # The operator decides; the reply still proves the mailbox, for when they approve.
            audit(session, request, "confirmation.recorded", at=now, reason=f"cites the {proof}")
            return Verdict(Outcome.CONFIRMATION, request)
        reason = f"reply from the requester citing the {proof}"
        if self.settings.verification.mode == "manual":
            request.review_reason = "manual verification: an operator approves every request"
            transition(session, request, RequestState.NEEDS_REVIEW, at=now, reason=reason)
        else:
            transition(session, request, RequestState.CONFIRMED, at=now, reason=reason)
        return Verdict(Outcome.CONFIRMATION, request)

    def _too_many_failures(self, session: Session, request: Request, now: datetime) -> bool:
        """Wrong tokens or codes: a few per request, and a few more per address a day."""
        limits = self.settings.requests
        if request.confirmation_failures >= limits.max_confirmation_attempts:
            return True
        failures_today = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .join(Request, AuditEvent.request_id == Request.id)
            .where(Request.email == request.email)
            .where(AuditEvent.event == "confirmation.failed")
            .where(AuditEvent.at > now - timedelta(days=1))
        )
        return int(failures_today or 0) >= limits.max_confirmation_attempts_per_sender

    def _proven_request(
        self, session: Session, mail: IncomingMail, found: Classification
    ) -> tuple[Request | None, str]:
        for cited in cited_tokens(mail.cited_ids, self.domain):
            request = self._by_reference(session, cited.reference)
            if request is not None and matches(cited.token, request.token_hash):
                return request, "challenge token"
        codes = quoted_codes(mail.text)
        for reference in found.references:
            request = self._by_reference(session, reference)
            if request is not None and any(matches(code, request.code_hash) for code in codes):
                return request, "confirmation code"
        return None, ""

    def _unproven(
        self,
        session: Session,
        sender: str,
        mail: IncomingMail,
        found: Classification,
        *,
        now: datetime,
    ) -> Verdict:
        """A reply that proves nothing: count a failed attempt if it tried to."""
        named = [cited.reference for cited in cited_tokens(mail.cited_ids, self.domain)]
        for reference in dict.fromkeys([*named, *found.references]):
            request = self._by_reference(session, reference)
            if request is None or not _awaits_proof(request):
                continue
            if request.email == sender and (named or quoted_codes(mail.text)):
                request.confirmation_failures += 1
                audit(session, request, "confirmation.failed", at=now, reason="wrong token or code")
                return Verdict(Outcome.CONFIRMATION_REFUSED, request, "wrong token or code")
            if request.email != sender:
                return _from_another_address(session, request, now)
        return Verdict(Outcome.UNRELATED_REPLY, reason="no request proven")

    def expire_due(self, session: Session, *, now: datetime) -> list[Request]:
        """Expire unconfirmed requests past their date and queue the notice."""
        query = (
            select(Request)
            .where(Request.state == RequestState.AWAITING_CONFIRMATION)
            .where(Request.expires_at <= now)
        )
        expired = list(session.scalars(query))
        for request in expired:
            transition(
                session, request, RequestState.EXPIRED, at=now, reason="not confirmed in time"
            )
            message_id = new_message_id(request.reference, self.domain)
            notice = self.composer.expiry_notice(request, message_id=message_id, now=now)
            outbox.queue(
                session,
                request,
                MailKind.EXPIRY_NOTICE,
                message_id=message_id,
                raw=as_bytes(notice),
                now=now,
            )
            request.add_to_thread(message_id)
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

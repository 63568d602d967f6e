"""Opening a request with a challenge, and checking the replies that answer it.

The identity of a request is the normalised From address of the request mail.
sarbot writes only to that address.  A confirmation must come from the same
address and prove it read the acknowledgement: it cites the challenge token,
or it quotes the reference together with the confirmation code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot import outbox
from sarbot.addresses import InvalidAddress, mask_address, single_sender
from sarbot.challenge import (
    challenge_message_id,
    cited_tokens,
    digest,
    matches,
    new_challenge,
    quoted_codes,
)
from sarbot.classify import Classification
from sarbot.compose import Composer, as_bytes, new_message_id
from sarbot.config import Settings
from sarbot.encryption import find_key
from sarbot.lifecycle import audit, transition
from sarbot.message import IncomingMail
from sarbot.models import Request
from sarbot.reference import next_reference
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

    def open_request(
        self, session: Session, mail: IncomingMail, *, now: datetime, log: FilteringBoundLogger
    ) -> Verdict:
        """Create a request for a new request mail and queue its acknowledgement."""
        try:
            sender = single_sender(mail.header("from"))
        except InvalidAddress as exc:
            return Verdict(Outcome.INVALID_SENDER, reason=str(exc))
        limits = self.settings.requests
        sent = outbox.acknowledgements_since(session, sender, now - timedelta(days=1))
        if sent >= limits.acks_per_sender_per_day:
            log.warning("request.rate_limited", sender=mask_address(sender), acks_today=sent)
            return Verdict(Outcome.RATE_LIMITED, reason="acknowledgement limit reached")
        challenge = new_challenge()
        request = Request(
            reference=next_reference(session, limits.reference_prefix, now.year),
            email=sender,
            state=RequestState.RECEIVED,
            attempts=0,
            token_hash=challenge.token_hash,
            code_hash=challenge.code_hash,
            confirmation_failures=0,
            request_message_id=mail.message_id,
            thread="",
            received_at=now,
            expires_at=now + timedelta(days=limits.confirmation_expiry_days),
        )
        request.add_to_thread(mail.message_id)
        key = find_key(mail.raw, sender)
        request.pgp_key, request.encryption_note = key.key_armored, key.reason
        session.add(request)
        audit(
            session, request, "request.received", at=now, reason="request mail from the requester"
        )
        if key.fingerprint:
            audit(session, request, "request.encryption_key", at=now, reason=key.fingerprint)
        message_id = challenge_message_id(request.reference, challenge.token, self.domain)
        ack = self.composer.acknowledgement(
            request, code=challenge.code, message_id=message_id, now=now
        )
        # The acknowledgement's Message-ID carries the challenge: only its digest is kept, and
        # it stays out of the thread (the confirmation, which cites it, threads the answer).
        outbox.queue(
            session,
            request,
            MailKind.ACKNOWLEDGEMENT,
            message_id="sha256:" + digest(message_id),
            raw=as_bytes(ack),
            now=now,
        )
        transition(
            session,
            request,
            RequestState.AWAITING_CONFIRMATION,
            at=now,
            reason="acknowledgement queued",
        )
        return Verdict(Outcome.REQUEST, request)

    def check_reply(
        self, session: Session, mail: IncomingMail, found: Classification, *, now: datetime
    ) -> Verdict:
        """Decide what a reply to sarbot's mail does: confirm a request, or nothing."""
        try:
            sender = single_sender(mail.header("from"))
        except InvalidAddress as exc:
            return Verdict(Outcome.INVALID_SENDER, reason=str(exc))
        request, proof = self._proven_request(session, mail, found)
        if request is None:
            return self._unproven(session, sender, mail, found, now=now)
        if sender != request.email:
            audit(
                session,
                request,
                "confirmation.refused",
                at=now,
                reason="reply from another address",
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "sender does not match")
        if request.state is not RequestState.AWAITING_CONFIRMATION:
            audit(
                session,
                request,
                "reply.received",
                at=now,
                reason=f"reply while {request.state.value}",
            )
            return Verdict(Outcome.UNRELATED_REPLY, request, f"request is {request.state.value}")
        if now >= request.expires_at:
            audit(
                session, request, "confirmation.refused", at=now, reason="confirmation after expiry"
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "request expired")
        if request.confirmation_failures >= self.settings.requests.max_confirmation_attempts:
            audit(
                session, request, "confirmation.refused", at=now, reason="too many failed attempts"
            )
            return Verdict(Outcome.CONFIRMATION_REFUSED, request, "too many failed attempts")
        request.confirmed_at = now
        request.add_to_thread(mail.message_id)
        transition(
            session,
            request,
            RequestState.CONFIRMED,
            at=now,
            reason=f"reply from the requester citing the {proof}",
        )
        return Verdict(Outcome.CONFIRMATION, request)

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
            if request is None or request.state is not RequestState.AWAITING_CONFIRMATION:
                continue
            if request.email == sender and (named or quoted_codes(mail.text)):
                request.confirmation_failures += 1
                audit(session, request, "confirmation.failed", at=now, reason="wrong token or code")
                return Verdict(Outcome.CONFIRMATION_REFUSED, request, "wrong token or code")
            if request.email != sender:
                audit(
                    session,
                    request,
                    "confirmation.refused",
                    at=now,
                    reason="reply from another address",
                )
                return Verdict(Outcome.CONFIRMATION_REFUSED, request, "sender does not match")
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

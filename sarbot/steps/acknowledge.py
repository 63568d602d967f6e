"""Answering a new request mail: open a request (or join the open one) and acknowledge it.

The acknowledgement carries the challenge the requester answers to prove the
mailbox is theirs.  What happens besides depends on the evidence and the
policy (``[verification] mode``):

* ``reply`` (default): the challenge reply is always required; DKIM results
  are recorded as evidence.
* ``reply_or_dmarc``: an aligned DKIM pass from a trusted verifier confirms
  the request at once; the acknowledgement then carries no challenge.
* ``manual``: the challenge reply is required, and then an operator approves.

A request that asks for the data to go to another address, or whose
authentication results look forged or cannot be read, waits for an operator
(``needs_review``).  The sender is the one ``IncomingMail`` parsed from the
From field as written; a mail without one is refused (``invalid_sender``).
Acknowledgements are capped per address and per domain a day and overall an
hour; a request over a cap waits and is acknowledged when the cap allows.
A second request mail from an address with an open request joins that one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot.addresses import mask_address, normalize_address
from sarbot.config import Settings
from sarbot.export.keys import KeyChoice, find_key
from sarbot.mail.authentication import Evidence, evaluate, resolver
from sarbot.mail.challenge import challenge_message_id, digest, new_challenge
from sarbot.mail.letters import Letters
from sarbot.mail.message import IncomingMail
from sarbot.steps.intake import Verdict
from sarbot.steps.recognise import REDIRECT_REASON, asks_for_another_address
from sarbot.store import outbox
from sarbot.store.deadlines import Calendar, due_date, start_date
from sarbot.store.lifecycle import audit, start_the_clock, transition
from sarbot.store.models import OutgoingMail, Request
from sarbot.store.references import new_reference
from sarbot.store.states import TERMINAL, MailKind, Outcome, RequestState

CAP_RETRY = timedelta(minutes=15)


class Acknowledger:
    def __init__(self, settings: Settings, letters: Letters, calendar: Calendar):
        self.settings = settings
        self.letters = letters
        self.dnsfunc = resolver(settings.verification.dns_server)  # one, for every request
        self.domain = settings.message_id_domain
        self.calendar = calendar

    def open(
        self, session: Session, mail: IncomingMail, *, now: datetime, log: FilteringBoundLogger
    ) -> Verdict:
        """A request for this mail: a new one, or the sender's open one.

        A possible request of the sender's (mail in other words, not yet accepted) gives way
        to this one, which keeps its receipt: the month runs from the first mail.
        """
        sender = mail.sender
        if sender is None:
            return Verdict(Outcome.INVALID_SENDER, reason=mail.sender_problem)
        existing, earlier = self._open_or_possible(session, sender)
        if existing is not None:
            return self._join(session, existing, now=now, log=log)
        request = self._new_request(session, mail, sender, now=now)
        self._supersede(session, earlier, request, now=now)
        self._acknowledge_or_wait(session, request, now=now, log=log)
        return Verdict(Outcome.REQUEST, request)

    def _open_or_possible(
        self, session: Session, sender: str
    ) -> tuple[Request | None, Request | None]:
        """The sender's open request, or else their possible one (mail in other words)."""
        existing = self.open_request_of(session, sender)
        if existing is not None and existing.state is RequestState.POSSIBLE:
            return None, existing
        return existing, None

    @staticmethod
    def _supersede(
        session: Session, earlier: Request | None, request: Request, *, now: datetime
    ) -> None:
        """A new request takes over the sender's possible one: its receipt and deadline."""
        if earlier is None:
            return
        request.received_at, request.due_on = earlier.received_at, earlier.due_on
        transition(
            session,
            earlier,
            RequestState.DISMISSED,
            at=now,
            reason=f"superseded by {request.reference}, which keeps its receipt",
        )
        audit(session, request, "request.earlier_mail", at=now, reason=earlier.reference)

    def register_possible(
        self,
        session: Session,
        mail: IncomingMail,
        *,
        recognised_by: str,
        history: bool,
        received_at: datetime,
        now: datetime,
    ) -> Verdict:
        """Record mail that may be a request for an operator; nothing is sent.

        ``history``: it was in the mailbox before sarbot watched it.  The deadline that
        would apply runs from its receipt.  A sender's further mail in other words joins
        their open possible or real request.
        """
        outcome = Outcome.HISTORY if history else Outcome.POSSIBLE
        sender = mail.sender
        if sender is None:
            return Verdict(Outcome.INVALID_SENDER, reason=mail.sender_problem)
        existing = None if history else self.open_request_of(session, sender)
        if existing is not None:
            audit(session, existing, "request.possible_mail", at=now, reason=recognised_by)
            return Verdict(outcome, existing, reason="joined")
        state = RequestState.HISTORY if history else RequestState.POSSIBLE
        request = self._new_request(
            session, mail, sender, now=now, received_at=received_at, state=state
        )
        request.recognised_by = recognised_by
        request.due_on = due_date(start_date(received_at, None, self.calendar), self.calendar)
        return Verdict(outcome, request, reason=recognised_by)

    def accept(
        self, session: Session, request: Request, *, now: datetime, actor: str, reason: str
    ) -> None:
        """An operator found a possible request is one: acknowledged as if it had just come,
        its receipt and deadline kept."""
        transition(session, request, RequestState.RECEIVED, at=now, reason=reason, actor=actor)
        self._acknowledge_or_wait(session, request, now=now, log=None)

    def _acknowledge_or_wait(
        self,
        session: Session,
        request: Request,
        *,
        now: datetime,
        log: FilteringBoundLogger | None,
    ) -> None:
        capped = self._cap(session, request.email, now)
        if capped:
            request.next_attempt_at = now + CAP_RETRY
            audit(session, request, "request.ack_waiting", at=now, reason=capped)
            if log is not None:
                log.warning("request.ack_waiting", reference=request.reference, cap=capped)
        else:
            self._respond(session, request, now=now)

    def send_waiting(self, session: Session, *, now: datetime, log: FilteringBoundLogger) -> int:
        """Acknowledge requests that waited for a cap, as far as the caps now allow."""
        waiting = session.scalars(
            select(Request)
            .where(Request.state == RequestState.RECEIVED)
            .where(Request.next_attempt_at <= now)
            .order_by(Request.id)
        )
        sent = 0
        for request in waiting:
            capped = self._cap(session, request.email, now)
            if capped:
                request.next_attempt_at = now + CAP_RETRY
                continue
            request.next_attempt_at = None
            self._respond(session, request, now=now)
            log.info("request.acknowledged_late", reference=request.reference)
            sent += 1
        return sent

    def open_manual(
        self, session: Session, email: str, note: str, *, now: datetime, actor: str
    ) -> Verdict:
        """A request received by post or phone: the same path, the challenge to that address."""
        sender = normalize_address(email)
        existing, earlier = self._open_or_possible(session, sender)
        if existing is not None:
            audit(session, existing, "request.joined", at=now, reason=note, actor=actor)
            return Verdict(Outcome.JOINED, existing)
        request = self._new_request(session, None, sender, now=now, note=note)
        audit(session, request, "request.created", at=now, reason=note, actor=actor)
        self._supersede(session, earlier, request, now=now)
        self._acknowledge_or_wait(session, request, now=now, log=None)
        return Verdict(Outcome.REQUEST, request)

    def _new_request(
        self,
        session: Session,
        mail: IncomingMail | None,
        sender: str,
        *,
        now: datetime,
        received_at: datetime | None = None,
        state: RequestState = RequestState.RECEIVED,
        note: str | None = None,
    ) -> Request:
        limits = self.settings.requests
        if mail is None:
            evidence = Evidence(False, "received by post or phone: no email to authenticate")
            key = KeyChoice(None, None, "")
            review = ""
        else:
            evidence = evaluate(mail, sender, self.settings.verification, self.dnsfunc)
            key = find_key(mail.raw, sender)
            review = evidence.suspicious or (
                REDIRECT_REASON
                if asks_for_another_address(mail.text, sender, self.settings.controller.email)
                else ""
            )
        request = Request(
            reference=new_reference(session, limits.reference_prefix, now.year),
            email=sender,
            state=state,
            attempts=0,
            token_hash="",
            code_hash="",
            confirmation_failures=0,
            request_message_id=mail.message_id if mail else None,
            thread="",
            received_at=received_at or now,
            expires_at=now + timedelta(days=limits.confirmation_expiry_days),
            pgp_key=key.key_armored,
            encryption_note=key.reason,
            authentication=evidence.summary,
            authenticated=evidence.aligned_dkim and not evidence.suspicious,
            review_reason=review or None,
            received_via="email" if mail else "manual",
            note=note,
        )
        request.add_to_thread(mail.message_id if mail else None)
        session.add(request)
        how = (
            "entered by an operator"
            if mail is None
            else "request mail from the requester"
            if not state.is_possible
            else f"mail that may be a request ({state.value})"
        )
        audit(session, request, "request.received", at=now, reason=how)
        audit(session, request, "request.authentication", at=now, reason=evidence.summary)
        if key.fingerprint:
            audit(session, request, "request.encryption_key", at=now, reason=key.fingerprint)
        return request

    def _respond(self, session: Session, request: Request, *, now: datetime) -> None:
        """Send the acknowledgement and move the request on, as the policy says."""
        self._renew_expiry(request, now)
        mode = self.settings.verification.mode
        if request.review_reason is None and mode == "reply_or_dmarc" and request.authenticated:
            self.letters.post(
                session,
                request,
                MailKind.ACKNOWLEDGEMENT,
                lambda message_id: self.letters.acknowledgement_verified(
                    request, message_id=message_id, now=now
                ),
                now=now,
                thread=False,
            )
            request.confirmed_at = now
            start_the_clock(request, self.calendar)
            transition(
                session,
                request,
                RequestState.CONFIRMED,
                at=now,
                reason=f"sender authenticated: {request.authentication}",
            )
            return
        self.challenge(session, request, now=now)
        if request.review_reason is not None:
            transition(
                session, request, RequestState.NEEDS_REVIEW, at=now, reason=request.review_reason
            )
        else:
            transition(
                session,
                request,
                RequestState.AWAITING_CONFIRMATION,
                at=now,
                reason="acknowledgement queued",
            )

    def challenge(
        self,
        session: Session,
        request: Request,
        *,
        now: datetime,
        reminder: bool = False,
        revoke: bool = False,
    ) -> None:
        """A fresh challenge in a new acknowledgement.

        The earlier ones keep working (the last few): every acknowledgement went to the
        requester's own mailbox, and a request mail forged in their name, which makes a
        new one, must not void the one they are answering.  ``revoke`` (an operator's
        resend) makes the new challenge the only one.
        """
        challenge = new_challenge()
        request.keep_challenge(revoke=revoke)
        request.token_hash, request.code_hash = challenge.token_hash, challenge.code_hash
        message_id = challenge_message_id(request.reference, challenge.token, self.domain)
        # The acknowledgement's Message-ID carries the challenge: only its digest is kept, and
        # it stays out of the thread (the confirmation, which cites it, threads the answer).
        self.letters.post(
            session,
            request,
            MailKind.REMINDER if reminder else MailKind.ACKNOWLEDGEMENT,
            lambda mid: self.letters.acknowledgement(
                request, code=challenge.code, message_id=mid, now=now, reminder=reminder
            ),
            now=now,
            message_id=message_id,
            recorded_id="sha256:" + digest(message_id),
            thread=False,
        )

    def send_reminders(self, session: Session, *, now: datetime, log: FilteringBoundLogger) -> int:
        """One reminder, with a fresh challenge, to each requester who has not confirmed yet."""
        before = timedelta(days=self.settings.notifications.remind_days_before_expiry)
        due = self._reminder_due(session, now, before)
        for request in due:
            self.challenge(session, request, now=now, reminder=True)
            audit(session, request, "request.reminded", at=now, reason="not confirmed yet")
            log.info("request.reminded", reference=request.reference)
        return len(due)

    @staticmethod
    def _reminder_due(session: Session, now: datetime, before: timedelta) -> list[Request]:
        reminded = select(OutgoingMail.request_id).where(OutgoingMail.kind == MailKind.REMINDER)
        waiting = session.scalars(
            select(Request)
            .where(Request.state == RequestState.AWAITING_CONFIRMATION)
            .where(Request.expires_at > now)
            .where(Request.id.not_in(reminded))
        )
        return [r for r in waiting if r.expires_at - before <= now]

    def _join(
        self, session: Session, request: Request, *, now: datetime, log: FilteringBoundLogger
    ) -> Verdict:
        """Another request mail from an address with an open request: it is the same request.

        While it still waits for confirmation, a new acknowledgement (with a new challenge)
        goes out, within the caps, in case the first was lost.
        """
        audit(session, request, "request.joined", at=now, reason="another request mail")
        log.info("request.joined", reference=request.reference, state=request.state.value)
        if request.state is RequestState.AWAITING_CONFIRMATION and not self._cap(
            session, request.email, now
        ):
            self._renew_expiry(request, now)  # before the letter, which names the date
            self.challenge(session, request, now=now)
        return Verdict(Outcome.JOINED, request)

    def _renew_expiry(self, request: Request, now: datetime) -> None:
        request.expires_at = now + timedelta(days=self.settings.requests.confirmation_expiry_days)

    def _cap(self, session: Session, sender: str, now: datetime) -> str:
        """The acknowledgement cap this sender is over now, or ''."""
        limits = self.settings.requests
        day = now - timedelta(days=1)
        if (
            outbox.acknowledgements_since(session, day, recipient=sender)
            >= limits.acks_per_sender_per_day
        ):
            return (
                f"{limits.acks_per_sender_per_day} acknowledgements a day to {mask_address(sender)}"
            )
        domain = sender.rpartition("@")[2]
        if (
            outbox.acknowledgements_since(session, day, domain=domain)
            >= limits.acks_per_domain_per_day
        ):
            return f"{limits.acks_per_domain_per_day} acknowledgements a day to {domain}"
        hour = now - timedelta(hours=1)
        if outbox.acknowledgements_since(session, hour) >= limits.acks_per_hour:
            return f"{limits.acks_per_hour} acknowledgements an hour"
        return ""

    @staticmethod
    def open_request_of(session: Session, sender: str) -> Request | None:
        """The sender's newest open request, a possible one included, history not."""
        return session.scalar(
            select(Request)
            .where(Request.email == sender)
            .where(Request.state.not_in([*TERMINAL, RequestState.HISTORY]))
            .order_by(Request.id.desc())
            .limit(1)
        )

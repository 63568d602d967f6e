"""What an operator can do to a request: the decisions behind ``sarbot requests ...``.

Every decision is a state change or an event in the audit trail, with the
operator as its actor, and the requester hears of it where the law expects:
an extension and a rejection each get a letter with the reason, and an export
sent in part or unencrypted quotes the reason in its letter.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sarbot.config import Settings
from sarbot.errors import SarbotError
from sarbot.mail.letters import Letters
from sarbot.steps.acknowledge import Acknowledger
from sarbot.steps.intake import Verdict
from sarbot.steps.package import ENCRYPTION_FAILED
from sarbot.store import outbox
from sarbot.store.deadlines import Calendar, can_extend, extended_due_date, start_date
from sarbot.store.instances import Claim, Instances
from sarbot.store.lifecycle import audit, transition
from sarbot.store.models import AuditEvent, OutgoingMail, Request
from sarbot.store.states import ALLOWED, MailKind, MailState, RequestState


class OperationError(SarbotError):
    """An operator's command does not fit the request's state."""


class InFlight(OperationError):
    """The decision must wait: a message it would withdraw is being handed to SMTP now.
    Asked again once that has ended, it finds the outcome (sent, or still to withdraw)."""


class Operations:
    def __init__(
        self,
        settings: Settings,
        letters: Letters,
        acknowledger: Acknowledger,
        calendar: Calendar,
        instances: Instances,
    ) -> None:
        self.settings = settings
        self.letters = letters
        self.acknowledger = acknowledger
        self.calendar = calendar
        self.instances = instances

    def find(self, session: Session, reference: str) -> Request:
        request = session.scalar(select(Request).where(Request.reference == reference))
        if request is None:
            raise OperationError(f"no request {reference}")
        return request

    def approve(self, session: Session, reference: str, *, now: datetime, actor: str) -> Request:
        request = self.find(session, reference)
        if request.state is not RequestState.NEEDS_REVIEW:
            raise OperationError(f"{reference} is {request.state.value}, not needs_review")
        if _export_waits(session, request):
            raise OperationError(
                f"{reference} waits because its export was refused by the mail server: once the "
                f"requester's mailbox takes mail, 'sarbot requests retry {reference}' sends it"
            )
        if encryption_failed(request):
            raise OperationError(
                f"{reference} waits because its export cannot be encrypted to the requester's "
                "key, and would only fail again: send it unencrypted with 'sarbot requests "
                f"deliver {reference} --unencrypted --reason TEXT', or reject it"
            )
        to = RequestState.CONFIRMED if request.confirmed_at else RequestState.AWAITING_CONFIRMATION
        request.review_reason = None
        transition(session, request, to, at=now, reason="approved by an operator", actor=actor)
        return request

    def accept(
        self, session: Session, reference: str, *, now: datetime, actor: str, reason: str = ""
    ) -> Request:
        """A possible request is one: acknowledged now, its receipt and deadline kept."""
        request = self.find(session, reference)
        if not request.state.is_possible:
            raise OperationError(
                f"{reference} is {request.state.value}; only a possible request "
                "(possible, history) can be accepted"
            )
        other = self.acknowledger.open_request_of(session, request.email)
        if other is not None and other.id != request.id:
            raise OperationError(
                f"the sender already has an open request, {other.reference}: dismiss "
                f"{reference} as part of it"
            )
        why = reason or "an operator found it is an access request"
        self.acknowledger.accept(session, request, now=now, actor=actor, reason=why)
        return request

    def dismiss(
        self, session: Session, reference: str, reason: str, *, now: datetime, actor: str
    ) -> Request:
        """A possible request is none: closed with the reason; nobody is written to."""
        request = self.find(session, reference)
        if not request.state.is_possible:
            raise OperationError(
                f"{reference} is {request.state.value}; only a possible request "
                "(possible, history) can be dismissed (use 'reject' for a request)"
            )
        transition(session, request, RequestState.DISMISSED, at=now, reason=reason, actor=actor)
        return request

    def extend(
        self, session: Session, reference: str, reason: str, *, now: datetime, actor: str
    ) -> Request:
        """Two further months, only within the first; the requester is told why."""
        request = self.find(session, reference)
        if request.state.is_possible:
            raise OperationError(f"{reference} is {request.state.value}: accept it first")
        if request.due_on is None or not request.state.is_open:
            raise OperationError(f"{reference} has no running deadline to extend")
        if request.extended_due_on is not None:
            raise OperationError(f"{reference} was already extended")
        start = start_date(request.received_at, request.confirmed_at, self.calendar)
        if not can_extend(start, self.calendar.local_date(now), self.calendar):
            raise OperationError(
                f"{reference} can only be extended within its first month (due {request.due_on})"
            )
        request.extended_due_on = extended_due_date(start, self.calendar)
        request.extension_reason = reason
        audit(session, request, "request.extended", at=now, reason=reason, actor=actor)
        self.letters.send_letter(
            session,
            request,
            MailKind.EXTENSION_NOTICE,
            "extension_notice.txt",
            "We need more time to answer your data request",
            now=now,
            reason=reason,
            extended_due_on=request.extended_due_on,
        )
        return request

    def reject(
        self, session: Session, reference: str, reason: str, *, now: datetime, actor: str
    ) -> tuple[Request, list[str]]:
        """Close a request without an answer; the requester gets the reason.  Also returned:
        a warning for each withdrawn message that may have gone already."""
        request = self.find(session, reference)
        # Locked in the order sending locks them (its messages, then the request), and read
        # again: sending or packaging may have changed both while this transaction waited.
        request_mail(session, request, MailKind.EXPORT, MailState.PENDING, lock=True)
        session.refresh(request, with_for_update=True)
        if RequestState.REJECTED not in ALLOWED[request.state]:
            raise OperationError(f"{reference} is {request.state.value} and cannot be rejected")
        exports = request_mail(session, request, MailKind.EXPORT, MailState.PENDING, lock=True)
        busy = self.instances.held_elsewhere(session, Claim.REQUEST, request.id)
        marked = [mail.sending_since for mail in exports if mail.sending_since is not None]
        if marked and busy:
            raise InFlight(
                f"{reference}: its export is being handed to the mail server (marked at "
                f"{min(marked).isoformat(timespec='seconds')}); the decision waits for the outcome"
            )
        warnings = []
        sent = request_mail(session, request, MailKind.EXPORT, MailState.SENT)
        if sent:
            warnings.append(
                f"{reference}: {len(sent)} export message(s) of this request were sent "
                "already; what was still to send is withdrawn"
            )
        for mail in exports:
            why = "the request was rejected"
            if mail.sending_since is not None:  # a daemon died handing it over
                at = mail.sending_since.isoformat(timespec="seconds")
                why += (
                    f"; a daemon stopped while handing it to the mail server at {at}, "
                    "so it may have gone"
                )
                warnings.append(
                    f"{reference}: a daemon stopped while handing its export to the mail "
                    f"server at {at}: it may have gone (the mail server's log says); "
                    "it is withdrawn"
                )
            outbox.cancel(mail, why)
            audit(session, request, "mail.withdrawn", at=now, reason=why, actor=actor)
        transition(session, request, RequestState.REJECTED, at=now, reason=reason, actor=actor)
        self.letters.send_letter(
            session,
            request,
            MailKind.REJECTION,
            "rejection.txt",
            "About your data request",
            now=now,
            reason=reason,
        )
        return request, warnings

    def create(
        self, session: Session, email: str, note: str, *, now: datetime, actor: str
    ) -> Verdict:
        """A request received by post or phone: the challenge goes to that address."""
        return self.acknowledger.open_manual(session, email, note, now=now, actor=actor)

    def retry(self, session: Session, reference: str, *, now: datetime, actor: str) -> str:
        """Try a stuck step again at the next cycle: collection, waiting mail, a failed export."""
        request = self.find(session, reference)
        done = []
        if request.state is RequestState.COLLECTING:
            request.next_attempt_at = None
            done.append("collection")
        for mail in request_mail(session, request, None, MailState.PENDING):
            mail.next_attempt_at = None
            done.append(f"{mail.kind.value} mail")
        # A failed message keeps only its export file (the stored copy of a letter is
        # cleared, as it may carry a challenge); a closed request's export never goes.
        for mail in request_mail(session, request, None, MailState.FAILED):
            if mail.file_path and request.state.is_open:
                mail.state, mail.next_attempt_at = MailState.PENDING, None
                done.append(f"failed {mail.kind.value} mail")
        if not done:
            raise OperationError(f"{reference} has nothing to retry ({request.state.value})")
        if request.state is RequestState.NEEDS_REVIEW and _export_waits(session, request):
            # It went to review because its export was refused: the export is ready again.
            transition(
                session, request, RequestState.READY, at=now, reason="export retried", actor=actor
            )
        audit(session, request, "request.retry", at=now, reason=", ".join(done), actor=actor)
        return ", ".join(done)

    def deliver_partial(
        self, session: Session, reference: str, reason: str, *, now: datetime, actor: str
    ) -> Request:
        """Send what the sources that answer hold; the letter names the others and quotes why."""
        request = self.find(session, reference)
        if request.state not in (RequestState.CONFIRMED, RequestState.COLLECTING):
            raise OperationError(
                f"{reference} is {request.state.value}; only a request being collected can be "
                "delivered in part"
            )
        request.partial_reason = reason
        request.next_attempt_at = None
        audit(session, request, "request.partial_delivery", at=now, reason=reason, actor=actor)
        return request

    def deliver_unencrypted(
        self, session: Session, reference: str, reason: str, *, now: datetime, actor: str
    ) -> Request:
        """Send an export that could not be encrypted to the requester's key without encryption.

        Only for a request held for review for that reason.  The requester's key is
        dropped, so the export is made again, in the clear, at the next cycle and sent
        to the verified address like every answer; its letter says that an operator
        decided so, and why.
        """
        request = self.find(session, reference)
        if not encryption_failed(request):
            raise OperationError(
                f"{reference} is {request.state.value}; only a request held for review because "
                "its export could not be encrypted can be sent unencrypted"
            )
        if not reason.strip():
            raise OperationError("say why it is sent unencrypted: the letter quotes the reason")
        audit(session, request, "request.unencrypted_delivery", at=now, reason=reason, actor=actor)
        request.pgp_key = None
        request.encryption_note = unencrypted_note(reason)
        request.review_reason = request.last_error = request.next_attempt_at = None
        transition(
            session,
            request,
            RequestState.CONFIRMED,
            at=now,
            reason="to be sent unencrypted, at an operator's decision",
            actor=actor,
        )
        return request

    def resend(self, session: Session, reference: str, *, now: datetime, actor: str) -> str:
        """Send the acknowledgement again with a fresh challenge (the old one stops working)."""
        request = self.find(session, reference)
        if request.state is not RequestState.AWAITING_CONFIRMATION:
            raise OperationError(
                f"{reference} is {request.state.value}; only an acknowledgement waiting for "
                "confirmation can be sent again (use 'retry' for mail that failed)"
            )
        self.acknowledger.challenge(session, request, now=now, revoke=True)
        audit(session, request, "request.resent", at=now, reason="acknowledgement", actor=actor)
        return "acknowledgement with a new challenge"


def encryption_failed(request: Request) -> bool:
    """Whether a request waits for review because its export cannot be encrypted."""
    return (
        request.state is RequestState.NEEDS_REVIEW
        and bool(request.pgp_key)
        and (request.last_error or "").startswith(ENCRYPTION_FAILED)
    )


def unencrypted_note(reason: str) -> str:
    """What the export's letter says when an operator sent it unencrypted."""
    return (
        "THIS COPY IS NOT ENCRYPTED. You sent us an OpenPGP key with your request, but we "
        "could not encrypt the copy to it, and we decided to send it to you unencrypted "
        f"rather than not at all. Our reason: {reason.strip()}"
    )


def request_mail(
    session: Session,
    request: Request,
    kind: MailKind | None,
    state: MailState,
    *,
    lock: bool = False,
) -> list[OutgoingMail]:
    """The request's messages of that kind and state; with ``lock``, their rows locked until
    the transaction ends (a sender marking one waits, or is waited for)."""
    query = (
        select(OutgoingMail)
        .where(OutgoingMail.request_id == request.id)
        .where(OutgoingMail.state == state)
    )
    if kind is not None:
        query = query.where(OutgoingMail.kind == kind)
    if lock:
        query = query.order_by(OutgoingMail.id).with_for_update()  # one order: no deadlock
    return list(session.scalars(query))


REGISTER_COLUMNS = [
    "reference",
    "received_via",
    "email",
    "state",
    "received_at",
    "confirmed_at",
    "verification",
    "due_on",
    "extended_due_on",
    "delivered_at",
    "decisions",
]


def register(session: Session) -> Iterator[dict[str, str]]:
    """Every request with its dates, verification and the operators' decisions."""
    for request in session.scalars(select(Request).order_by(Request.id)):
        decisions = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.request_id == request.id)
            .where(AuditEvent.actor != "daemon")
            .order_by(AuditEvent.id)
        )
        yield {
            "reference": request.reference,
            "received_via": request.received_via,
            "email": request.email,
            "state": request.state.value,
            "received_at": _iso(request.received_at),
            "confirmed_at": _iso(request.confirmed_at),
            "verification": request.authentication or "",
            "due_on": _iso(request.due_on),
            "extended_due_on": _iso(request.extended_due_on),
            "delivered_at": _iso(request.delivered_at),
            "decisions": "; ".join(
                f"{e.at.date().isoformat()} {e.actor} {e.event}: {e.reason}" for e in decisions
            ),
        }


def _iso(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else ""


def _export_waits(session: Session, request: Request) -> bool:
    """Whether the request's export is made and waits to be sent, or sent again."""
    return any(
        mail.file_path
        for state in (MailState.PENDING, MailState.FAILED)
        for mail in request_mail(session, request, MailKind.EXPORT, state)
    )

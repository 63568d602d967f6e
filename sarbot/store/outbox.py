"""Outgoing messages are written here before they are handed to SMTP.

A crash after the server accepted a message but before it was marked sent
leaves it pending, so it is sent again once: at most one duplicate, never a
lost message.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path, PurePath

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sarbot.store.models import OutgoingMail, Request
from sarbot.store.states import MailKind, MailState


def queue(
    session: Session,
    request: Request | None,
    kind: MailKind,
    *,
    message_id: str,
    raw: bytes | None,
    now: datetime,
    file_path: str | None = None,
    recipient: str | None = None,
) -> OutgoingMail:
    """Record a message to send: to the requester, unless it is an operator's mail."""
    if recipient is None:
        if request is None:
            raise ValueError("a message without a request needs a recipient")
        recipient = request.email
    mail = OutgoingMail(
        request=request,
        kind=kind,
        message_id=message_id,
        recipient=recipient,
        state=MailState.PENDING,
        attempts=0,
        raw=raw,
        file_path=file_path,
        created_at=now,
    )
    session.add(mail)
    return mail


def due(session: Session, now: datetime) -> list[OutgoingMail]:
    """Pending messages whose next attempt is due, oldest first."""
    query = (
        select(OutgoingMail)
        .where(OutgoingMail.state == MailState.PENDING)
        .where((OutgoingMail.next_attempt_at.is_(None)) | (OutgoingMail.next_attempt_at <= now))
        .order_by(OutgoingMail.id)
    )
    return list(session.scalars(query))


def still_due(session: Session, mail_id: int, now: datetime) -> OutgoingMail | None:
    """The message read again, if still pending and due (another instance may have sent it),
    its row locked until the transaction ends (an operator's decision waits for it)."""
    mail = session.get(OutgoingMail, mail_id, populate_existing=True, with_for_update=True)
    if mail is None or mail.state is not MailState.PENDING:
        return None
    if mail.next_attempt_at is not None and mail.next_attempt_at > now:
        return None
    return mail


def acknowledgements_since(
    session: Session, since: datetime, *, recipient: str | None = None, domain: str | None = None
) -> int:
    """Acknowledgements queued since a moment: to one address, one domain, or at all."""
    query = (
        select(func.count())
        .select_from(OutgoingMail)
        .where(OutgoingMail.kind == MailKind.ACKNOWLEDGEMENT)
        .where(OutgoingMail.created_at > since)
    )
    if recipient is not None:
        query = query.where(OutgoingMail.recipient == recipient)
    if domain is not None:
        query = query.where(OutgoingMail.recipient.endswith("@" + domain))
    return int(session.scalar(query) or 0)


def mark_sending(mail: OutgoingMail, now: datetime) -> None:
    """The message is about to be handed to SMTP: committed before the first byte goes, so
    an operator's decision that would withdraw it waits for the outcome."""
    mail.sending_since = now


def withdrawn(mail: OutgoingMail) -> bool:
    """Whether a decision withdrew the message (``cancel``)."""
    return mail.state is MailState.FAILED and (mail.last_error or "").startswith(WITHDRAWN)


def mark_sent(mail: OutgoingMail, now: datetime) -> None:
    mail.sending_since = None
    mail.state = MailState.SENT
    mail.sent_at = now
    mail.attempts += 1
    mail.raw = None  # the acknowledgement carries the challenge: keep no copy once sent
    mail.last_error = None


def mark_retry(mail: OutgoingMail, now: datetime, wait: timedelta, error: str) -> None:
    mail.sending_since = None
    mail.attempts += 1
    mail.next_attempt_at = now + wait
    mail.last_error = error


def mark_failed(mail: OutgoingMail, error: str) -> None:
    mail.sending_since = None
    mail.attempts += 1
    mail.state = MailState.FAILED
    mail.raw = None
    mail.last_error = error


WITHDRAWN = "cancelled: "
"""How the error of a message withdrawn by a decision begins (``cancel``)."""


def cancel(mail: OutgoingMail, reason: str) -> None:
    """Withdraw a message for good: failed, with nothing left that could be sent again."""
    mail.state, mail.raw, mail.sending_since = MailState.FAILED, None, None
    mail.last_error = WITHDRAWN + reason
    if mail.file_path:
        Path(mail.file_path).unlink(missing_ok=True)
        mail.file_path = None


def is_first_acknowledgement(session: Session, mail: OutgoingMail) -> bool:
    """Whether no other acknowledgement of this mail's request has been sent."""
    if mail.kind is not MailKind.ACKNOWLEDGEMENT:
        return False
    earlier = session.scalar(
        select(func.count())
        .select_from(OutgoingMail)
        .where(OutgoingMail.request_id == mail.request_id)
        .where(OutgoingMail.kind == MailKind.ACKNOWLEDGEMENT)
        .where(OutgoingMail.state == MailState.SENT)
        .where(OutgoingMail.id != mail.id)
    )
    return not earlier


def files_wanted(session: Session, *, sent_after: datetime) -> set[str]:
    """The names of the export files a message still needs: to be sent, to be sent again
    once its request's review is done (refused while the request is open), or kept after
    sending (sent after ``sent_after``).  Names, not paths: the folder may be named
    otherwise now than when the file was written (a changed config, a link)."""
    rows = session.execute(
        select(OutgoingMail.file_path, OutgoingMail.state, OutgoingMail.sent_at, Request.state)
        .outerjoin(Request, OutgoingMail.request_id == Request.id)
        .where(OutgoingMail.file_path.is_not(None))
    )
    return {
        PurePath(path).name
        for path, state, sent_at, request in rows
        if path is not None
        and (
            state is MailState.PENDING
            or (state is MailState.FAILED and request is not None and request.is_open)
            or (sent_at is not None and sent_at > sent_after)
        )
    }

"""Keeping sarbot's own records no longer than needed.

Closed requests, their messages and their audit events are deleted once
older than ``[retention] requests_days`` (default six years).  The audit
trail loses its oldest part only as a whole prefix, anchored (see
``sarbot.store.audit.purge_before``), so what remains still verifies.  Copies of
request mails in the processed folder are deleted after
``processed_mail_days``.

``apply`` does both, and it is the only way either is done: the daemon calls
it once a day (``run_daily``) and ``sarbot purge`` at once, so the two cannot
differ.  A mailbox that cannot be reached leaves the mail copies for the next
time, says so (``Applied.mail_deleted`` is None) and logs
``retention.mail_not_purged``; the database is purged all the same.

Export files have their own setting (``[storage] keep_exports_days``) and
only the daemon deletes them (``Deliverer.sweep``): a file it is writing is
not in the outbox yet, and another process would take it for one left over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.config import Settings
from sarbot.mail.mailbox import MAILBOX_ERRORS, MailboxThread
from sarbot.store.audit import purge_before
from sarbot.store.lifecycle import audit
from sarbot.store.models import AuditEvent, OutgoingMail, Request, SeenMessage
from sarbot.store.states import TERMINAL

PURGED_EVENT = "retention.purged"


@dataclass(frozen=True)
class Purged:
    requests: int
    audit_events: int


def due(session: Session, now: datetime) -> bool:
    """Whether a day has passed since the last purge."""
    last = session.scalar(select(func.max(AuditEvent.at)).where(AuditEvent.event == PURGED_EVENT))
    return last is None or last <= now - timedelta(days=1)


def purge(session: Session, settings: Settings, now: datetime, *, actor: str = "daemon") -> Purged:
    """Delete what is past its retention period; record that it happened."""
    cutoff = now - timedelta(days=settings.retention.requests_days)
    oldest, newest = session.execute(select(func.min(AuditEvent.id), func.max(AuditEvent.id))).one()
    first_kept = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.at >= cutoff))
    # The chain's ids are consecutive, so the old part is everything before the first kept.
    last_old = newest if first_kept is None else first_kept - 1
    events = purge_before(session, last_old, at=now) if oldest and last_old >= oldest else 0
    still_audited = select(AuditEvent.request_id).where(AuditEvent.request_id.is_not(None))
    old = list(
        session.scalars(
            select(Request.id)
            .where(Request.state.in_(list(TERMINAL)))
            .where(Request.received_at < cutoff)
            .where(Request.id.not_in(still_audited))
        )
    )
    if old:
        session.execute(delete(SeenMessage).where(SeenMessage.request_id.in_(old)))
        session.execute(delete(OutgoingMail).where(OutgoingMail.request_id.in_(old)))
        session.execute(delete(Request).where(Request.id.in_(old)))
    session.execute(
        delete(OutgoingMail)
        .where(OutgoingMail.request_id.is_(None))
        .where(OutgoingMail.created_at < cutoff)
    )
    audit(
        session,
        None,
        PURGED_EVENT,
        at=now,
        actor=actor,
        reason=f"{len(old)} request(s) and {events} audit event(s) older than {cutoff.date()}",
    )
    return Purged(len(old), events)


@dataclass(frozen=True)
class Applied:
    """What one application of the retention settings did."""

    requests: int
    audit_events: int
    folder: str
    mail_before: date
    """Copies in ``folder`` that arrived before this day are past their retention."""
    mail_deleted: int | None
    """How many copies were deleted; None if the mailbox could not be reached."""
    mail_error: str | None = None
    """Why the mailbox could not be reached (the error's type: its text may hold data)."""


async def apply(
    sessions: sessionmaker[Session],
    settings: Settings,
    mailbox: MailboxThread,
    *,
    now: datetime,
    log: FilteringBoundLogger,
    actor: str = "daemon",
) -> Applied:
    """Apply the retention settings now: purge the database, then the processed folder.

    The mailbox is logged in to if it is not already.  If it cannot be reached,
    or refuses, the database is purged all the same and the session is closed
    (a daemon logs in again, in the watched folder, at its next cycle).
    """
    with sessions.begin() as session:
        purged = purge(session, settings, now, actor=actor)
    log.info("retention.purged", requests=purged.requests, events=purged.audit_events)
    folder = settings.imap.processed_folder
    before = (now - timedelta(days=settings.retention.processed_mail_days)).date()
    done = Applied(purged.requests, purged.audit_events, folder, before, None)
    box = mailbox.mailbox
    try:
        if not box.connected:
            await mailbox.call(box.connect)
        deleted = await mailbox.call(box.delete_older_than, folder, before)
    except MAILBOX_ERRORS as exc:
        log.warning("retention.mail_not_purged", folder=folder, error_type=type(exc).__name__)
        await mailbox.call(box.close)
        return replace(done, mail_error=type(exc).__name__)
    log.info("retention.mail_deleted", messages=deleted, folder=folder)
    return replace(done, mail_deleted=deleted)


async def run_daily(
    sessions: sessionmaker[Session],
    settings: Settings,
    mailbox: MailboxThread,
    *,
    now: datetime,
    log: FilteringBoundLogger,
) -> Applied | None:
    """What the daemon does once a day: ``apply``.  None if it is not due yet."""
    with sessions() as session:
        if not due(session, now):
            return None
    return await apply(sessions, settings, mailbox, now=now, log=log)

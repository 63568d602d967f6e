"""Keeping sarbot's own records no longer than needed.

Closed requests, their messages and their audit events are deleted once
older than ``[retention] requests_days`` (default six years).  The audit
trail loses its oldest part only as a whole prefix, anchored (see
``sarbot.store.audit.purge_before``), so what remains still verifies.  Copies of
request mails in the processed folder are deleted after
``processed_mail_days``.  Export files have their own setting
(``[storage] keep_exports_days``).  The daemon purges once a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.config import Settings
from sarbot.mail.mailbox import MailboxThread
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


async def run_daily(
    sessions: sessionmaker[Session],
    settings: Settings,
    mailbox: MailboxThread,
    *,
    now: datetime,
    log: FilteringBoundLogger,
) -> None:
    """What the daemon does once a day: purge the database, then the processed folder."""
    with sessions.begin() as session:
        if not due(session, now):
            return
        purged = purge(session, settings, now)
    log.info("retention.purged", requests=purged.requests, events=purged.audit_events)
    box = mailbox.mailbox
    if box.connected:
        before = (now - timedelta(days=settings.retention.processed_mail_days)).date()
        deleted = await mailbox.call(box.delete_older_than, settings.imap.processed_folder, before)
        log.info("retention.mail_deleted", messages=deleted)

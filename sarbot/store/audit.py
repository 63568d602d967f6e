"""The audit trail: append-only and hash-chained, so it cannot be quietly rewritten.

Each event carries the SHA-256 of its own content and of the event before it.
Changing, deleting or inserting a row breaks the chain at that row, and
``verify`` names the first broken link.  The database refuses UPDATE and
DELETE on the table as well (triggers, see migration 0004); the chain is what
catches someone who removes them first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sarbot.store.models import AuditAnchor, AuditEvent, AuditHead, Request

GENESIS = "0" * 64
HEAD_ID = 1


def event_hash(event: AuditEvent, prev_hash: str) -> str:
    """The hash of one event's content, chained to the one before."""
    content = [
        event.id,
        event.request_id,
        event.at.isoformat(),
        event.event,
        event.from_state,
        event.to_state,
        event.reason,
        event.actor,
        prev_hash,
    ]
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def append(session: Session, request: Request | None, **columns: Any) -> AuditEvent:
    """Add an event at the end of the chain, in the caller's transaction.

    The head row is locked first, so writers take turns; the event's id is the
    head's plus one, so the row is written once, complete, and never updated.
    """
    session.flush()  # a request created in this transaction gets its id
    head = session.get(AuditHead, HEAD_ID, with_for_update=True)
    prev_hash = head.hash if head is not None else GENESIS
    event = AuditEvent(
        id=(head.last_id if head is not None else 0) + 1,
        request_id=request.id if request is not None else None,
        prev_hash=prev_hash,
        hash="",
        **columns,
    )
    event.hash = event_hash(event, prev_hash)
    session.add(event)
    if head is None:
        session.add(AuditHead(id=HEAD_ID, last_id=event.id, hash=event.hash))
    else:
        head.last_id, head.hash = event.id, event.hash
    return event


@dataclass(frozen=True)
class Verification:
    events: int
    broken_at: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def purge_before(session: Session, last_id: int, *, at: datetime) -> int:
    """Delete the oldest events, up to ``last_id``, anchoring the chain where they end.

    The anchor keeps the last purged hash, so the rest still verifies; an
    ``audit.purged`` event naming the anchor is appended, so an anchor nobody
    recorded is noticed.  Returns how many events were deleted.
    """
    last = session.get(AuditEvent, last_id)
    if last is None:
        return 0
    session.add(AuditAnchor(last_id=last.id, hash=last.hash, at=at))
    session.flush()
    deleted = session.query(AuditEvent).filter(AuditEvent.id <= last_id).delete()
    append(
        session,
        None,
        at=at,
        event="audit.purged",
        reason=f"events up to {last.id} purged; anchored at {last.hash}",
        actor="daemon",
    )
    return int(deleted or 0)


def verify(session: Session) -> Verification:
    """Walk the chain from its start (or its anchor); report the first event that does not fit."""
    anchor = session.scalar(select(AuditAnchor).order_by(AuditAnchor.id.desc()).limit(1))
    rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000)
    start = (anchor.last_id, anchor.hash) if anchor is not None else (0, GENESIS)
    result = _walk(rows, *start)
    if not result.intact:
        return result
    if anchor is not None and not session.scalar(
        select(AuditEvent.id)
        .where(AuditEvent.event == "audit.purged")
        .where(AuditEvent.reason.endswith(f"anchored at {anchor.hash}"))
    ):
        return Verification(result.events, anchor.last_id, "the chain's anchor was never recorded")
    head = session.get(AuditHead, HEAD_ID)
    last = session.scalar(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))
    if last is not None and (head is None or (head.last_id, head.hash) != (last.id, last.hash)):
        return Verification(
            result.events, last.id, "the chain's head does not point at the last event"
        )
    if last is None and head is not None:
        return Verification(0, head.last_id, "events are missing: the trail is empty")
    return result


def _walk(rows: Iterable[AuditEvent], anchored_id: int, anchored_hash: str) -> Verification:
    prev_hash, count, expected_id = anchored_hash, 0, anchored_id + 1
    for event in rows:
        if event.id != expected_id:
            return Verification(count, event.id, f"event {expected_id} is missing before it")
        expected_id += 1
        if event.prev_hash != prev_hash:
            return Verification(count, event.id, "it does not follow the event before it")
        if event.hash != event_hash(event, prev_hash):
            return Verification(count, event.id, "its content was changed after it was written")
        prev_hash, count = event.hash, count + 1
    return Verification(count)

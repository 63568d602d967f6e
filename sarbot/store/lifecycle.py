"""The one place a request changes state, and every change is audited."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from sarbot.store.audit import append
from sarbot.store.deadlines import Calendar, due_date, start_date
from sarbot.store.models import Request
from sarbot.store.states import ALLOWED, RequestState


class InvalidTransition(RuntimeError):
    """A state change that the lifecycle does not allow: a bug, never input."""


def transition(
    session: Session,
    request: Request,
    to: RequestState,
    *,
    at: datetime,
    reason: str,
    actor: str = "daemon",
) -> None:
    """Move a request to another state and write the audit row in the same transaction."""
    current = request.state
    if to not in ALLOWED[current]:
        raise InvalidTransition(f"{request.reference}: {current} -> {to} is not allowed")
    request.state = to
    audit(
        session, request, f"state.{to.value}", at=at, reason=reason, actor=actor, from_state=current
    )


def audit(
    session: Session,
    request: Request | None,
    event: str,
    *,
    at: datetime,
    reason: str = "",
    actor: str = "daemon",
    from_state: RequestState | None = None,
) -> None:
    """Record an event about a request (or about no request) in the audit trail."""
    append(
        session,
        request,
        at=at,
        event=event,
        from_state=from_state.value if from_state else None,
        to_state=request.state.value if (request is not None and from_state) else None,
        reason=reason,
        actor=actor,
    )


def start_the_clock(request: Request, calendar: Calendar) -> None:
    """Set the date the answer is due, once the requester's identity is established."""
    if request.due_on is None:
        start = start_date(request.received_at, request.confirmed_at, calendar)
        request.due_on = due_date(start, calendar)

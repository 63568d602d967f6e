"""Telling the operators when a person is needed.

A configured list of addresses is mailed when a request needs review, when a
connector keeps failing for it, when its deadline is near and when it is
overdue: at most one mail per kind of event per request.  A daily digest
lists what is open.  Mail that may be a request in other words is announced
at once; mail from before the start that looks like one, once, in a list.
A login by token that fails (a revoked grant, a missing permission) is told
at once and then at most daily while it lasts.
Operator mail names references, states and dates, and
masked addresses; it never carries exported data.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot.addresses import mask_address
from sarbot.config import Settings
from sarbot.mail.letters import Letters
from sarbot.mail.logins import LoginTrouble
from sarbot.steps.package import EXPORT_WRITE_FAILED
from sarbot.store.deadlines import Calendar, days_left
from sarbot.store.models import OutgoingMail, Request
from sarbot.store.states import TERMINAL, MailKind, MailState, RequestState

HEADLINES = {
    MailKind.OPERATOR_REVIEW: "A request waits for a person",
    MailKind.OPERATOR_CONNECTOR: "Collecting or packaging keeps failing for a request",
    MailKind.OPERATOR_DEADLINE: "A request's deadline is near",
    MailKind.OPERATOR_OVERDUE: "A request is overdue",
    MailKind.OPERATOR_POSSIBLE: "A mail may be an access request: accept or dismiss it",
}


LOGIN_NOTICE_EVERY = timedelta(days=1)
"""How often the operators are told, at most, that a login by token keeps failing."""


class Notifier:
    def __init__(self, settings: Settings, letters: Letters, calendar: Calendar) -> None:
        self.settings = settings
        self.letters = letters
        self.calendar = calendar
        self.operators = settings.notifications.operators

    def run(
        self,
        session: Session,
        *,
        now: datetime,
        log: FilteringBoundLogger,
        logins: list[LoginTrouble] | None = None,
    ) -> int:
        """Queue the notices that are due; returns how many mails were queued.

        ``logins`` are sarbot's own logins failing now (``sarbot.mail.logins``).
        """
        if not self.operators:
            return 0
        queued = self._logins(session, logins or [], now=now)
        if queued:
            log.info("operator.notified", kind=MailKind.OPERATOR_LOGIN.value)
        today = self.calendar.local_date(now)
        open_requests = list(
            session.scalars(select(Request).where(Request.state.not_in(list(TERMINAL))))
        )
        queued += self._history(session, open_requests, now=now, log=log)
        for request in open_requests:
            for kind, detail in self._events(request, today):
                if not self._already(session, request, kind):
                    queued += self._notice(session, request, kind, detail, now=now)
                    log.info("operator.notified", reference=request.reference, kind=kind.value)
        if now.hour >= self.settings.notifications.digest_hour and not self._digest_sent(
            session, now
        ):
            queued += self._digest(session, open_requests, today, now=now)
            log.info("operator.digest", open=len(open_requests))
        return queued

    def _events(self, request: Request, today: date) -> list[tuple[MailKind, str]]:
        events: list[tuple[MailKind, str]] = []
        if request.state is RequestState.HISTORY:
            return events  # listed once, all together (``_history``), and in the digest
        if request.state is RequestState.POSSIBLE:
            events.append((MailKind.OPERATOR_POSSIBLE, _possible_detail(request)))
        if request.state is RequestState.NEEDS_REVIEW:
            events.append(
                (MailKind.OPERATOR_REVIEW, request.review_reason or request.last_error or "")
            )
        failures = self.settings.notifications.connector_failures
        if request.state is RequestState.COLLECTING and (
            request.attempts >= failures or _cannot_write(request)
        ):
            events.append((MailKind.OPERATOR_CONNECTOR, request.last_error or ""))
        if request.deadline is not None:
            left = days_left(request.deadline, today)
            if left < 0:
                events.append((MailKind.OPERATOR_OVERDUE, f"It was due {-left} day(s) ago."))
            elif left <= self.settings.notifications.deadline_warning_days:
                events.append((MailKind.OPERATOR_DEADLINE, f"It is due in {left} day(s)."))
        return events

    @staticmethod
    def _already(session: Session, request: Request, kind: MailKind) -> bool:
        return (
            session.scalar(
                select(OutgoingMail.id)
                .where(OutgoingMail.request_id == request.id)
                .where(OutgoingMail.kind == kind)
                .limit(1)
            )
            is not None
        )

    def _notice(
        self, session: Session, request: Request, kind: MailKind, detail: str, *, now: datetime
    ) -> int:
        return self._to_operators(
            session,
            request,
            kind,
            "operator_notice.txt",
            f"{HEADLINES[kind]}: {request.reference}",
            now=now,
            thread=False,
            headline=HEADLINES[kind],
            reference=request.reference,
            state=request.state.value,
            requester=mask_address(request.email),
            received_at=request.received_at,
            due=request.deadline,
            detail=detail,
        )

    def _to_operators(
        self,
        session: Session,
        request: Request | None,
        kind: MailKind,
        template: str,
        subject: str,
        *,
        now: datetime,
        thread: bool = True,
        stem: str | None = None,
        **context: object,
    ) -> int:
        """One letter to each operator; returns how many were queued.  ``stem`` starts the
        letters' Message-IDs (``Letters.post``)."""
        for address in self.operators:
            self.letters.post(
                session,
                request,
                kind,
                lambda message_id: self.letters.operator_notice(
                    address,  # noqa: B023 (called at once, inside post)
                    template,
                    subject,
                    message_id=message_id,
                    now=now,
                    **context,
                ),
                now=now,
                stem=stem,
                recipient=address,
                thread=thread,
            )
        return len(self.operators)

    def _logins(self, session: Session, troubles: list[LoginTrouble], *, now: datetime) -> int:
        """A login by token fails: tell the operators, at most once a day for each login.

        No new notice while one still waits to be sent (the SMTP login fails too): a long
        outage leaves one notice behind, not one a day.  A notice's Message-ID names the
        logins it is about (``<logins-imap-smtp.m...@domain>``).
        """
        if not troubles:
            return 0
        recent = list(
            session.scalars(
                select(OutgoingMail)
                .where(OutgoingMail.kind == MailKind.OPERATOR_LOGIN)
                .where(OutgoingMail.created_at > now - LOGIN_NOTICE_EVERY)
            )
        )
        if any(mail.state is MailState.PENDING for mail in recent):
            return 0
        told = {part for mail in recent for part in mail.message_id.split(".")[0].split("-")}
        if all(t.login in told for t in troubles):
            return 0
        names = [t.login for t in troubles]
        return self._to_operators(
            session,
            None,
            MailKind.OPERATOR_LOGIN,
            "operator_login.txt",
            f"sarbot cannot log in to {' and '.join(n.upper() for n in names)}",
            now=now,
            stem="logins-" + "-".join(names),
            troubles=troubles,
        )

    def _history(
        self,
        session: Session,
        open_requests: list[Request],
        *,
        now: datetime,
        log: FilteringBoundLogger,
    ) -> int:
        """Once: the list of mail from before the start that looks like a request."""
        found = [r for r in open_requests if r.state is RequestState.HISTORY]
        sent = select(OutgoingMail.id).where(OutgoingMail.kind == MailKind.OPERATOR_HISTORY)
        if not found or session.scalar(sent.limit(1)) is not None:
            return 0
        rows = [_possible_row(r) for r in found]
        self._to_operators(
            session,
            None,
            MailKind.OPERATOR_HISTORY,
            "operator_history.txt",
            f"{len(rows)} mail(s) from before the start look like access requests",
            now=now,
            history=rows,
        )
        log.info("operator.history", requests=len(rows))
        return len(self.operators)

    def _digest_sent(self, session: Session, now: datetime) -> bool:
        since = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (
            session.scalar(
                select(OutgoingMail.id)
                .where(OutgoingMail.kind == MailKind.OPERATOR_DIGEST)
                .where(OutgoingMail.created_at >= since)
                .limit(1)
            )
            is not None
        )

    def _digest(
        self, session: Session, open_requests: list[Request], today: date, *, now: datetime
    ) -> int:
        rows = [
            {
                "reference": r.reference,
                "state": r.state.value,
                "due": r.deadline,
                "overdue": r.deadline is not None and r.deadline < today,
            }
            for r in open_requests
            if not r.state.is_possible
        ]
        possible = [_possible_row(r) for r in open_requests if r.state is RequestState.POSSIBLE]
        history = sum(1 for r in open_requests if r.state is RequestState.HISTORY)
        review = [
            {"reference": r.reference, "reason": r.review_reason or r.last_error or ""}
            for r in open_requests
            if r.state is RequestState.NEEDS_REVIEW
        ]
        delivered = sum(
            1
            for r in session.scalars(
                select(Request).where(Request.delivered_at > now - timedelta(days=1))
            )
        )
        return self._to_operators(
            session,
            None,
            MailKind.OPERATOR_DIGEST,
            "operator_digest.txt",
            f"Daily summary: {len(rows)} open",
            now=now,
            today=now,
            open=rows,
            review=review,
            possible=possible,
            history=history,
            delivered=delivered,
        )


def _possible_row(request: Request) -> dict[str, object]:
    return {
        "reference": request.reference,
        "requester": mask_address(request.email),
        "received_at": request.received_at,
        "due": request.deadline,
        "words": request.recognised_by or "",
    }


def _possible_detail(request: Request) -> str:
    return (
        f"It was not answered. It says: {request.recognised_by}.\n"
        "If it is a request, the deadline above runs from its receipt:\n"
        f"  sarbot requests accept {request.reference}\n"
        f"  sarbot requests dismiss {request.reference} --reason TEXT"
    )


def _cannot_write(request: Request) -> bool:
    """The export folder failed: a person must make room at once, not after a few tries."""
    return (request.last_error or "").startswith(EXPORT_WRITE_FAILED)

"""Sending what the outbox holds, and closing requests whose answer has gone out.

A message is read from the outbox (or from its file in the export folder) and
handed to SMTP, the messages due at one time on one SMTP session; each is marked
sent in its own commit as soon as the server accepted it.  A temporary failure is retried later; a permanent refusal
moves the request to ``needs_review``.  A request is delivered when every part
of its export has been sent.  Export files are deleted once sent, or kept for
``[storage] keep_exports_days`` and then deleted by ``sweep``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.addresses import mask_address
from sarbot.config import Settings
from sarbot.errors import MailSendError, PermanentMailError, TransientMailError
from sarbot.faults import CrashPoints
from sarbot.mail.logins import LoginWatch
from sarbot.mail.mailer import Mailer, SmtpLoginError
from sarbot.store import outbox
from sarbot.store.db import forget_cleared
from sarbot.store.instances import Claim, Instances
from sarbot.store.lifecycle import transition
from sarbot.store.models import Clock, OutgoingMail
from sarbot.store.states import ALLOWED, MailKind, MailState, RequestState


class Milestones(Protocol):
    """Who wants to know when a request was first acknowledged and when it was answered."""

    def acknowledged(self, received_at: datetime, *, at: datetime) -> None: ...

    def delivered(
        self, received_at: datetime, confirmed_at: datetime | None, *, at: datetime
    ) -> None: ...


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        mailer: Mailer,
        milestones: Milestones,
        logins: LoginWatch,
        *,
        log: FilteringBoundLogger,
        clock: Clock,
        crash_points: CrashPoints,
        instances: Instances,
    ) -> None:
        self.settings = settings
        self.instances = instances
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self.mailer = mailer
        self.milestones = milestones
        self.logins = logins
        self.log = log
        self.clock = clock
        self.crash_points = crash_points

    async def send_due(self) -> bool:
        """Send every message that is due and not claimed by another instance."""
        with self.sessions.begin() as session:
            due = outbox.due(session, self.clock())
        cleared = sent = False
        async with self.mailer.batch():  # one SMTP session for them all, as far as it lasts
            for position, mail in enumerate(due):
                # All of one request's messages are sent by one instance at a time: the last
                # part of an export to be sent is the one that marks the request delivered.
                kind, key = (
                    (Claim.REQUEST, mail.request_id)
                    if mail.request_id is not None
                    else (Claim.MESSAGE, mail.id)
                )
                with self.instances.claim(kind, key) as mine:
                    if not mine:
                        continue
                    with self.sessions.begin() as session:  # read again: another may have sent it
                        current = outbox.still_due(session, mail.id, self.clock())
                        if current is None:
                            continue
                        _ = current.request  # load while the session is open
                    try:
                        cleared |= await self._send(current)
                    except SmtpLoginError as exc:  # the rest would fail the same way: all wait
                        self._put_off(due[position:], exc)
                        break
                    sent = True
        if cleared:
            forget_cleared(self.engine)  # a copy kept until sending may have carried a challenge
        return sent

    async def _send(self, mail: OutgoingMail) -> bool:
        """Send one message and record the outcome; True if its stored copy was cleared."""
        reference = mail.request.reference if mail.request is not None else None
        log = self.log.bind(reference=reference, kind=mail.kind.value)
        error: MailSendError | None = None
        raw = mail.raw if mail.raw is not None else _read(mail.file_path)
        if raw is None:
            error = PermanentMailError("the prepared message is missing from the export folder")
        else:
            if not self.instances.still_holds():
                self.log.warning("mail.claim_lost", kind=mail.kind.value)
                return False  # another instance sends it
            try:
                await self.mailer.send(
                    raw, sender=self.settings.controller.email, recipient=mail.recipient
                )
                self.crash_points.point("deliver.accepted")
            except SmtpLoginError:
                raise
            except MailSendError as exc:
                error = exc
            else:
                self.logins.worked("smtp", at=self.clock())
        with self.sessions.begin() as session:
            self._record(session, session.get_one(OutgoingMail, mail.id), error, log)
        if error is None:
            log.info("mail.sent", recipient=mask_address(mail.recipient))
            if mail.file_path and self.settings.storage.keep_exports_days == 0:
                Path(mail.file_path).unlink(missing_ok=True)
        return mail.raw is not None and not isinstance(error, TransientMailError)

    def _record(
        self,
        session: Session,
        mail: OutgoingMail,
        error: MailSendError | None,
        log: FilteringBoundLogger,
    ) -> None:
        now, request = self.clock(), mail.request
        if isinstance(error, TransientMailError):
            wait = timedelta(seconds=self.settings.smtp.retry_after)
            outbox.mark_retry(mail, now, wait, str(error))
            log.warning("mail.deferred", smtp_code=error.code, retry_in=wait.total_seconds())
            return
        if error is not None:
            outbox.mark_failed(mail, str(error))
            # An operator's mail failing says nothing about the request it concerns.
            if (
                request is not None
                and not mail.kind.to_operators
                and RequestState.NEEDS_REVIEW in ALLOWED[request.state]
            ):
                transition(
                    session,
                    request,
                    RequestState.NEEDS_REVIEW,
                    at=now,
                    reason=f"mail refused: {error}",
                )
            log.error("mail.rejected", smtp_code=error.code)
            return
        outbox.mark_sent(mail, now)
        if request is not None and outbox.is_first_acknowledgement(session, mail):
            self.milestones.acknowledged(request.received_at, at=now)
        if request is not None and mail.kind is MailKind.EXPORT and _all_sent(session, mail):
            request.delivered_at = now
            transition(session, request, RequestState.DELIVERED, at=now, reason="export sent")
            self.milestones.delivered(request.received_at, request.confirmed_at, at=now)

    def _put_off(self, mails: list[OutgoingMail], error: SmtpLoginError) -> None:
        """The SMTP login failed: record it once, and retry every message later."""
        now = self.clock()
        trouble = self.logins.failed("smtp", error.oauth, at=now)
        wait = timedelta(seconds=self.settings.smtp.retry_after)
        with self.sessions.begin() as session:
            for mail in mails:
                outbox.mark_retry(session.get_one(OutgoingMail, mail.id), now, wait, str(error))
        self.log.warning(
            "mail.deferred", messages=len(mails), cause=trouble.cause, retry_in=wait.total_seconds()
        )

    def sweep(self, *, settle: float = 0) -> int:
        """Delete export files nothing will send: sent and past retention, or left by a crash.

        A file younger than ``settle`` seconds is left alone: with more than one
        instance, it may be another one's export whose message is not committed yet.
        """
        folder = self.settings.storage.export_dir
        if not folder.is_dir():
            return 0
        settled = time.time() - settle
        keep_until = self.clock() - timedelta(days=self.settings.storage.keep_exports_days)
        with self.sessions.begin() as session:
            rows = session.execute(
                select(OutgoingMail.file_path, OutgoingMail.state, OutgoingMail.sent_at).where(
                    OutgoingMail.file_path.is_not(None)
                )
            ).all()
        wanted = {
            path
            for path, state, sent_at in rows
            if state is MailState.PENDING or (sent_at is not None and sent_at > keep_until)
        }
        removed = 0
        for path in folder.iterdir():
            if path.is_file() and str(path) not in wanted and _older(path, settled):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            self.log.info("export.swept", files=removed)
        return removed


def _all_sent(session: Session, sent: OutgoingMail) -> bool:
    siblings = session.scalars(
        select(OutgoingMail.state)
        .where(OutgoingMail.request_id == sent.request_id)
        .where(OutgoingMail.kind == MailKind.EXPORT)
        .where(OutgoingMail.id != sent.id)
    )
    return all(state is MailState.SENT for state in siblings)


def _older(path: Path, than: float) -> bool:
    try:
        return path.stat().st_mtime < than
    except FileNotFoundError:
        return False


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None

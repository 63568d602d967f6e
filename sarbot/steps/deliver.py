"""Sending what the outbox holds, and closing requests whose answer has gone out.

A message is read from the outbox (or from its file in the export folder) and
handed to SMTP, the messages due at one time on one SMTP session; each is marked
sent in its own commit as soon as the server accepted it.  ``alongside`` sends
while the other steps of a cycle go on, as soon as they queue a letter.  A
temporary failure is retried later; a permanent refusal moves the request to
``needs_review``.  A request is delivered when every part of its export has
been sent.  Export files are deleted once sent, or kept for
``[storage] keep_exports_days`` and then deleted by ``sweep``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, event, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.addresses import mask_address
from sarbot.config import Settings
from sarbot.errors import MailSendError, PermanentMailError, TransientMailError
from sarbot.faults import CrashPoints
from sarbot.mail.logins import LoginWatch
from sarbot.mail.mailer import Mailer, SmtpLoginError
from sarbot.store import exports, outbox
from sarbot.store.db import forget_cleared
from sarbot.store.instances import Claim, Instances
from sarbot.store.lifecycle import audit, transition
from sarbot.store.models import Clock, OutgoingMail
from sarbot.store.states import ALLOWED, MailKind, MailState, RequestState


class Milestones(Protocol):
    """Who wants to know when a request was first acknowledged and when it was answered."""

    def acknowledged(self, received_at: datetime, *, at: datetime) -> None: ...

    def delivered(
        self, received_at: datetime, confirmed_at: datetime | None, *, at: datetime
    ) -> None: ...


QUEUED = "sarbot.outbox_queued"
"""Set in a session's ``info`` when it wrote a message to the outbox."""


@dataclass
class Sending:
    """What the sending alongside the other steps did."""

    sent: bool = False
    """Whether it took any message from the outbox (sent, deferred or failed)."""
    finishing: bool = False
    stopping: bool = False


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
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send_due(self) -> bool:
        """Send every message that is due and not claimed by another instance, on one SMTP
        session; True if this instance sent (or deferred, or failed) any."""
        async with self.mailer.batch():  # one SMTP session for them all, as far as it lasts
            sent, cleared, _ = await self._send_batch()
        if cleared:
            forget_cleared(self.engine)  # a copy kept until sending may have carried a challenge
        return sent

    @asynccontextmanager
    async def alongside(self) -> AsyncIterator[Sending]:
        """Send what the block's steps queue while they go on, not after them.

        Every commit to the state database wakes the sending, which sends what is due then,
        one message at a time, each marked sent in its own commit as ``send_due`` does. When
        the block ends, what is due is sent and the sending stops; when it fails, the sending
        stops after the message in hand (a message is never abandoned between the server's
        acceptance and its commit). After a failed login by token it sends nothing more
        until the block ends (the next ``send_due`` tries once again).
        """
        sending = Sending()
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        for name, listener in self._listeners():
            event.listen(self.sessions, name, listener)
        task = asyncio.create_task(self._send_alongside(sending, self._wake))
        try:
            yield sending
        except BaseException:
            sending.stopping = True
            raise
        finally:
            sending.finishing = True
            self._wake.set()
            self._wake = None
            for name, listener in self._listeners():
                event.remove(self.sessions, name, listener)
            try:
                await asyncio.shield(task)
            except BaseException:
                if not sending.stopping:
                    raise  # the sending's own failure, as send_due would have raised it
                with suppress(BaseException):  # the block's exception goes on; this one is logged
                    task.result()

    async def _send_alongside(self, sending: Sending, wake: asyncio.Event) -> None:
        cleared = False
        try:
            async with self.mailer.batch():
                while not sending.stopping:
                    wake.clear()
                    finishing = sending.finishing
                    taken, batch_cleared, login_failed = await self._send_batch(sending)
                    sending.sent |= taken
                    cleared |= batch_cleared
                    if finishing or login_failed:
                        return
                    if not taken:  # nothing (of this instance's) was due: until the next
                        await wake.wait()  # commit that queues mail, or the end
        finally:
            if cleared:
                forget_cleared(self.engine)

    def _listeners(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("pending_to_persistent", self._queued),
            ("after_commit", self._committed),
            ("after_rollback", self._rolled_back),
        ]

    @staticmethod
    def _queued(session: Session, instance: object) -> None:
        if isinstance(instance, OutgoingMail):
            session.info[QUEUED] = True

    def _committed(self, session: Session) -> None:
        """A commit that queued mail wakes the sending alongside, if one runs."""
        wake, loop = self._wake, self._loop
        if session.info.pop(QUEUED, False) and wake is not None and loop is not None:
            loop.call_soon_threadsafe(wake.set)

    @staticmethod
    def _rolled_back(session: Session) -> None:
        session.info.pop(QUEUED, None)

    async def _send_batch(self, sending: Sending | None = None) -> tuple[bool, bool, bool]:
        """Send what is due now and not claimed by another instance; (any was taken by this
        one: sent, deferred or failed; a stored copy was cleared; the login failed)."""
        with self.sessions.begin() as session:
            due = outbox.due(session, self.clock())
        cleared = taken = False
        for position, mail in enumerate(due):
            if sending is not None and sending.stopping:
                break
            claim = _claim_of(mail)
            with self.instances.claim(*claim) as mine:
                if not mine:
                    continue
                with self.sessions.begin() as session:  # read again: another may have sent it
                    current = outbox.still_due(session, mail.id, self.clock())
                    if current is None:
                        continue
                    _ = current.request  # load while the session is open
                    # Committed before the first byte goes: an operator's decision that would
                    # withdraw it waits for the outcome.
                    outbox.mark_sending(current, self.clock())
                try:
                    outcome = await self._send(current, claim)
                except SmtpLoginError as exc:  # the rest would fail the same way: all wait
                    self._put_off(due[position:], exc)
                    return True, cleared, True
                if outcome is None:  # the claim was lost: not taken, whoever claims it sends it
                    continue
                cleared |= outcome
                taken = True
        return taken, cleared, False

    async def _send(self, mail: OutgoingMail, claim: tuple[Claim, int]) -> bool | None:
        """Send one message and record the outcome; True if its stored copy was cleared,
        None if it was not sent because this instance no longer holds its claim."""
        reference = mail.request.reference if mail.request is not None else None
        log = self.log.bind(reference=reference, kind=mail.kind.value)
        error: MailSendError | None = None
        stored = exports.stored_file(mail.file_path, self.settings.storage.export_dir)
        raw = mail.raw if mail.raw is not None else exports.read_file(stored)
        if raw is None:
            error = PermanentMailError("the prepared message is missing from the export folder")
        else:
            if not self.instances.still_holds(*claim):
                self.log.warning("mail.claim_lost", kind=mail.kind.value)
                self._unmark(mail)
                return None  # another instance sends it
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
            current = session.get_one(OutgoingMail, mail.id, with_for_update=True)
            if current.state is MailState.PENDING:
                self._record(session, current, error, log)
            elif error is None and outbox.withdrawn(current):
                self._sent_anyway(session, current, log)
        if error is None:
            log.info("mail.sent", recipient=mask_address(mail.recipient))
            if stored is not None and self.settings.storage.keep_exports_days == 0:
                stored.unlink(missing_ok=True)
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
            if RequestState.DELIVERED not in ALLOWED[request.state]:
                # Recorded as sent all the same: it went, and raising now would send it again.
                log.error("request.delivered_out_of_state", state=request.state.value)
                return
            request.delivered_at = now
            transition(session, request, RequestState.DELIVERED, at=now, reason="export sent")
            self.milestones.delivered(request.received_at, request.confirmed_at, at=now)

    def _unmark(self, mail: OutgoingMail) -> None:
        """Not sent after all: take this instance's mark back, unless another has marked it."""
        with suppress(DBAPIError), self.sessions.begin() as session:  # else it stays, as a crash's
            current = session.get_one(OutgoingMail, mail.id, with_for_update=True)
            if current.state is MailState.PENDING and current.sending_since == mail.sending_since:
                current.sending_since = None

    def _sent_anyway(self, session: Session, mail: OutgoingMail, log: FilteringBoundLogger) -> None:
        """The message went, but was withdrawn while it was being handed over (a decision
        that found no daemon at work on it): the record says what happened."""
        why = (mail.last_error or "").removeprefix(outbox.WITHDRAWN)
        outbox.mark_sent(mail, self.clock())
        mail.last_error = f"sent as it was being withdrawn ({why})"
        if mail.request is not None:
            audit(
                session,
                mail.request,
                "mail.sent_after_withdrawal",
                at=self.clock(),
                reason=f"the {mail.kind.value} message went as it was being withdrawn",
            )
        log.error("mail.sent_after_withdrawal")

    def _put_off(self, mails: list[OutgoingMail], error: SmtpLoginError) -> None:
        """The SMTP login failed: record it once, and retry later every message still due
        that no other instance is sending."""
        now = self.clock()
        trouble = self.logins.failed("smtp", error.oauth, at=now)
        wait = timedelta(seconds=self.settings.smtp.retry_after)
        put_off = 0
        for mail in mails:
            with self.instances.claim(*_claim_of(mail)) as mine:
                if not mine:
                    continue
                with self.sessions.begin() as session:
                    current = outbox.still_due(session, mail.id, now)
                    if current is not None:
                        outbox.mark_retry(current, now, wait, str(error))
                        put_off += 1
        self.log.warning(
            "mail.deferred", messages=put_off, cause=trouble.cause, retry_in=wait.total_seconds()
        )

    def sweep(self, *, settle: float = 0) -> int:
        """Delete export files nothing will send: sent and past retention, refused for a
        request now closed, or left by a crash (a refused one waits while its request is open).

        A file younger than ``settle`` seconds is left alone: with more than one
        instance, it may be another one's export whose message is not committed yet.
        """
        folder = self.settings.storage.export_dir
        if not folder.is_dir():
            return 0
        settled = time.time() - settle
        keep_until = self.clock() - timedelta(days=self.settings.storage.keep_exports_days)
        with self.sessions.begin() as session:
            wanted = outbox.files_wanted(session, sent_after=keep_until)
        removed = 0
        for path in folder.iterdir():
            settling = settle > 0 and not _older(path, settled)  # one instance: none settle
            if path.is_file() and path.name not in wanted and not settling:
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


def _claim_of(mail: OutgoingMail) -> tuple[Claim, int]:
    """All of one request's messages are sent by one instance at a time (the last part of an
    export to be sent is the one that marks the request delivered); others one by one."""
    if mail.request_id is not None:
        return Claim.REQUEST, mail.request_id
    return Claim.MESSAGE, mail.id

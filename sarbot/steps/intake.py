"""Taking new mail from the watched folder: each message once, and the handled ones moved.

Where intake stands in the folder (UIDVALIDITY and the last UID seen) is kept
in the database.  The first time it watches a folder, it records the folder's
last UID: mail up to it came before sarbot started (``[imap] start``), and is
only listed for operators if it looks like a request, never answered.  A
message that concerns sarbot is fetched whole (with ``BODY.PEEK``, so it stays
unread) unless it is too large, decided on by the step its kind belongs to,
and recorded by its Message-ID in the same transaction, so a message is acted
on once even if the mailbox shows it again.  Mails that made or confirmed a
request are moved to the processed folder afterwards; possible requests stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.addresses import mask_address
from sarbot.config import ImapSettings
from sarbot.faults import CrashPoints
from sarbot.mail.mailbox import HeaderInfo, MailboxThread
from sarbot.mail.message import IncomingMail, parse_message
from sarbot.store.models import Clock, MailboxPosition, Request, SeenMessage
from sarbot.store.states import Outcome

MOVED_OUTCOMES = frozenset({Outcome.REQUEST, Outcome.CONFIRMATION, Outcome.JOINED})
"""Outcomes whose mail moves to the processed folder."""


@dataclass(frozen=True)
class Verdict:
    """What a message came to: its outcome, the request it concerns, and why."""

    outcome: Outcome
    request: Request | None = None
    reason: str = ""


Decide = Callable[[Session, IncomingMail, datetime], Verdict]
"""The step that acts on one message, inside intake's transaction."""


class Intake:
    def __init__(
        self,
        settings: ImapSettings,
        sessions: sessionmaker[Session],
        mailbox: MailboxThread,
        *,
        clock: Clock,
        log: FilteringBoundLogger,
        crash_points: CrashPoints,
        start_at: datetime | None = None,
    ) -> None:
        """``start_at``: mail in the folder at the first start that arrived before it is
        answered as usual (``[imap] start`` a date); None: none of it is (``"now"``)."""
        self.settings = settings
        self.start_at = start_at
        self.history_until_uid = 0
        self.sessions = sessions
        self.mailbox = mailbox
        self.clock = clock
        self.log = log
        self.crash_points = crash_points

    @property
    def uidvalidity(self) -> int:
        return self.mailbox.mailbox.uidvalidity

    async def new_mail(self, limit: int | None = None) -> list[HeaderInfo]:
        """The headers of the messages after the last one seen (the first ``limit``)."""
        with self.sessions() as session:
            first_time = session.get(MailboxPosition, self.settings.folder) is None
        top = await self.mailbox.call(self.mailbox.mailbox.last_uid) if first_time else 0
        with self.sessions.begin() as session:
            position = self._position(session, first_top=top)
            after, self.history_until_uid = position.last_uid, position.history_until_uid
        return await self.mailbox.call(self.mailbox.mailbox.new_headers, after, limit)

    def before_start(self, info: HeaderInfo) -> bool:
        """Was this message in the folder before sarbot first watched it, and not to be
        answered?"""
        if info.uid > self.history_until_uid:
            return False
        return self.start_at is None or info.arrived is None or info.arrived < self.start_at

    async def peek(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The start of each message, to read what its text asks for."""
        if not uids:
            return {}
        return await self.mailbox.call(self.mailbox.mailbox.fetch_starts, uids)

    def too_large(self, info: HeaderInfo) -> bool:
        """Larger than ``[imap] max_message_bytes``: left for a person, never downloaded."""
        return info.size > self.settings.max_message_bytes

    async def fetch(self, info: HeaderInfo, head: IncomingMail) -> IncomingMail | None:
        """The whole message (None if it is gone); only the head of one that is too large."""
        if self.too_large(info):
            return head
        raw = await self.mailbox.call(self.mailbox.mailbox.fetch_message, info.uid)
        return parse_message(raw) if raw is not None else None

    def take(self, info: HeaderInfo, mail: IncomingMail | None, kind: str, decide: Decide) -> bool:
        """Decide on one message and record it; the position moves past it either way.

        True if it was acted on (not gone, not seen before).
        """
        log = self.log.bind(uid=info.uid)
        now = self.clock()
        with self.sessions.begin() as session:
            position = self._position(session)
            position.last_uid = max(position.last_uid, info.uid)
            if mail is None:  # gone from the mailbox since its headers were read
                return False
            if session.scalar(select(SeenMessage.id).where(SeenMessage.message_key == mail.key)):
                log.info("mail.duplicate", kind=kind)
                return False
            verdict = decide(session, mail, now)
            session.add(
                SeenMessage(
                    message_key=mail.key,
                    folder=self.settings.folder,
                    uidvalidity=self.uidvalidity,
                    uid=info.uid,
                    outcome=verdict.outcome,
                    request=verdict.request,
                    move_pending=verdict.outcome in MOVED_OUTCOMES,
                    seen_at=now,
                )
            )
            self.crash_points.point("intake.before_commit")
        _log_verdict(log, kind, verdict)
        return True

    def pass_over(self, headers: Sequence[HeaderInfo]) -> None:
        """Move the position past mail that does not concern sarbot, in one commit."""
        if headers:
            with self.sessions.begin() as session:
                position = self._position(session)
                position.last_uid = max(position.last_uid, headers[-1].uid)

    async def move_handled(self) -> None:
        """Move handled request mails to the processed folder (no transaction held meanwhile)."""
        with self.sessions() as session:
            pending = session.execute(
                select(SeenMessage.id, SeenMessage.uid, SeenMessage.uidvalidity)
                .where(SeenMessage.move_pending.is_(True))
                .where(SeenMessage.folder == self.settings.folder)
            ).all()
        if not pending:
            return
        uids = [uid for _, uid, validity in pending if validity == self.uidvalidity]
        target = self.settings.processed_folder
        await self.mailbox.call(self.mailbox.mailbox.move, uids, target)
        self.crash_points.point("intake.moved")
        with self.sessions.begin() as session:
            for row_id, _, _ in pending:
                session.get_one(SeenMessage, row_id).move_pending = False
        self.log.info("mail.moved", count=len(uids), folder=target)

    def _position(self, session: Session, first_top: int = 0) -> MailboxPosition:
        folder, uidvalidity = self.settings.folder, self.uidvalidity
        position = session.get(MailboxPosition, folder)
        if position is None:
            position = MailboxPosition(
                folder=folder, uidvalidity=uidvalidity, last_uid=0, history_until_uid=first_top
            )
            session.add(position)
            self.log.info("mailbox.first_start", folder=folder, before_start=first_top)
        elif position.uidvalidity != uidvalidity:
            self.log.warning(
                "mailbox.uidvalidity_changed",
                folder=folder,
                old=position.uidvalidity,
                new=uidvalidity,
            )
            position.uidvalidity, position.last_uid = uidvalidity, 0
            position.history_until_uid = 0  # UIDs of the old folder; Message-IDs still dedupe
        return position


def _log_verdict(log: FilteringBoundLogger, kind: str, verdict: Verdict) -> None:
    request = verdict.request
    fields = {"kind": kind, "outcome": verdict.outcome.value, "reason": verdict.reason}
    if request is not None:
        fields |= {"reference": request.reference, "requester": mask_address(request.email)}
    if verdict.outcome in MOVED_OUTCOMES:
        log.info("mail.accepted", **fields)
    elif verdict.outcome in (Outcome.POSSIBLE, Outcome.HISTORY):
        log.info("mail.possible_request", **fields)
    else:
        log.warning("mail.refused", **fields)

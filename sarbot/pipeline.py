"""The path every request takes, driven step by step: ``sarbot/steps/``, in order.

``Pipeline.cycle`` runs each step once over everything that is due and says
whether anything happened.  State is committed between steps, so a crash at
any point resumes from the last committed step.  The steps themselves, and
everything they are built from, come from ``sarbot.app``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot.config import Settings
from sarbot.graph import Realms
from sarbot.mail.logins import LoginWatch
from sarbot.mail.mailbox import HeaderInfo, MailboxThread
from sarbot.mail.message import IncomingMail
from sarbot.ops import retention
from sarbot.ops.metrics import Metrics
from sarbot.ops.notify import Notifier
from sarbot.registry import ConfiguredConnector
from sarbot.steps.acknowledge import Acknowledger
from sarbot.steps.classify import Classifier, Kind
from sarbot.steps.collect import Collector, Observer, begin_collection, record_collection
from sarbot.steps.deliver import Deliverer
from sarbot.steps.intake import Intake, Verdict
from sarbot.steps.package import Packager
from sarbot.steps.recognise import Recogniser, Taken
from sarbot.steps.verify import Verifier
from sarbot.store.instances import SETTLE_SECONDS, Claim, Instances
from sarbot.store.models import Clock, Request
from sarbot.store.states import Outcome, RequestState

INTAKE_BATCH = 500
"""How many messages intake reads at a time: a folder with years of mail is read in parts."""
MAINTENANCE_INTERVAL = timedelta(hours=1)
"""How often a running daemon looks at retention and the export folder (it also does at start)."""


@dataclass(frozen=True)
class Steps:
    """The steps of a request, in order, and the operators' notices."""

    intake: Intake
    classifier: Classifier
    recogniser: Recogniser
    acknowledger: Acknowledger
    verifier: Verifier
    connectors: Sequence[ConfiguredConnector]
    realms: Realms
    packager: Packager
    deliverer: Deliverer
    notifier: Notifier


class Pipeline:
    """Everything one sarbot instance needs to move requests along."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        steps: Steps,
        mailbox: MailboxThread,
        *,
        metrics: Metrics,
        logins: LoginWatch,
        log: FilteringBoundLogger,
        clock: Clock,
        instances: Instances,
    ) -> None:
        self.settings = settings
        self.instances = instances
        self.logins = logins
        self.sessions = sessions
        self.steps = steps
        self.mailbox = mailbox
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.observers: list[Observer] = [
            lambda done: metrics.connector_call(done.name, done.seconds, ok=done.ok)
        ]
        self._next_maintenance: datetime | None = None

    @property
    def connectors(self) -> Sequence[ConfiguredConnector]:
        return self.steps.connectors

    async def cycle(self, *, intake: bool = True, reader: bool = True) -> bool:
        """Run every step once; True if any request or message moved on.

        Only the instance that reads the mailbox (``reader``; the only one, unless
        several share a PostgreSQL database) does what must happen once: intake,
        expiry and reminders, operators' notices, retention.  Every instance
        collects, packages and delivers, each request claimed by one at a time.
        """
        progressed = False
        # Letters go out as soon as a step queues them, while the steps go on.
        async with self.steps.deliverer.alongside() as sending:
            if intake and reader:
                progressed = await self.intake()
                self.metrics.poll_succeeded(self.clock())
            if reader:
                progressed |= self.expire()
            progressed |= await self.collect_and_package()
            if reader:
                progressed |= self.notify()
        progressed |= sending.sent
        progressed |= await self.deliver()
        if reader:
            await self.maintain()
        return progressed

    # -- intake, classify, acknowledge, verify -----------------------------------------

    async def intake(self) -> bool:
        """Take every new message in the watched folder, then move the handled ones."""
        intake = self.steps.intake
        progressed = False
        while True:
            headers = await intake.new_mail(limit=INTAKE_BATCH)
            progressed |= await self._take(headers)
            intake.pass_over(headers)
            if len(headers) < INTAKE_BATCH:
                break
        await intake.move_handled()
        return progressed

    async def _take(self, headers: Sequence[HeaderInfo]) -> bool:
        intake, recogniser = self.steps.intake, self.steps.recogniser
        read = [(info, *self.steps.classifier.read(info.header, self.log)) for info in headers]
        # Mail that is not sarbot's by its headers is read in part, all at once, to find
        # a request in other words.
        unclear = [
            info.uid for info, head, found in read if head and recogniser.needs_text(head, found)
        ]
        starts = await intake.peek(unclear)
        progressed = False
        for info, head, found in read:
            if head is None:
                continue
            before_start = intake.before_start(info)
            kind = recogniser.take_as(head, found, starts.get(info.uid), before_start=before_start)
            if kind is None:
                continue
            mail = head if kind.found.kind is Kind.GUARDED else await intake.fetch(info, head)
            if intake.take(
                info,
                mail,
                kind.name,
                lambda session, mail, now: self._decide(session, mail, now, info, kind),  # noqa: B023
            ):
                progressed = True
                self.instances.announce()  # a letter to send, or a request to collect
        return progressed

    def _decide(
        self, session: Session, mail: IncomingMail, now: datetime, info: HeaderInfo, kind: Taken
    ) -> Verdict:
        """The step a message goes to: none, acknowledge (a request) or verify (a reply)."""
        found = kind.found
        if found.kind is Kind.GUARDED:
            return Verdict(Outcome.GUARDED, reason=found.reason)
        if self.steps.intake.too_large(info):
            return Verdict(Outcome.TOO_LARGE, reason=f"{info.size} bytes")
        if kind.words is not None:
            received = min(info.arrived or now, now)
            return self.steps.acknowledger.register_possible(
                session,
                mail,
                recognised_by=kind.words,
                history=kind.before_start,
                received_at=received,
                now=now,
            )
        if found.kind is Kind.REQUEST:
            log = self.log.bind(uid=info.uid)
            return self.steps.acknowledger.open(session, mail, now=now, log=log)
        return self.steps.verifier.check_reply(session, mail, found, now=now)

    def expire(self) -> bool:
        """Expire unconfirmed requests, and acknowledge those that waited for a cap."""
        now, steps = self.clock(), self.steps
        with self.sessions.begin() as session:
            expired = steps.verifier.expire_due(session, now=now)
            for request in expired:
                self.log.info("request.expired", reference=request.reference)
            acknowledged = steps.acknowledger.send_waiting(session, now=now, log=self.log)
            reminded = steps.acknowledger.send_reminders(session, now=now, log=self.log)
        return bool(expired) or acknowledged + reminded > 0

    # -- collect and package -------------------------------------------------------------

    async def collect_and_package(self) -> bool:
        """Collect for every request that is due and not claimed by another instance."""
        now = self.clock()
        with self.sessions.begin() as session:
            due = list(
                session.scalars(
                    select(Request.id).where(*_due_for_collection(now)).order_by(Request.id)
                )
            )
        progressed = False
        for request_id in due:
            with self.instances.claim(Claim.REQUEST, request_id) as mine:
                if not mine:
                    continue
                with self.sessions.begin() as session:  # read again: another may have finished it
                    # ... or an operator rejected it: locked, so a decision either comes first
                    # (and the row no longer matches) or waits for this transaction.
                    request = session.scalar(
                        select(Request)
                        .where(Request.id == request_id, *_due_for_collection(now))
                        .with_for_update()
                    )
                    if request is None:
                        continue
                    begin_collection(session, request, at=now)
                await self.collect_one(request)
                progressed = True
        return progressed

    async def collect_one(self, request: Request, observers: Sequence[Observer] = ()) -> bool:
        """Collect for one request and package its answer; False if it must wait and retry."""
        log = self.log.bind(reference=request.reference)
        steps = self.steps
        collector = Collector(
            steps.connectors,
            self.settings.collection,
            log,
            [*self.observers, *observers],
            steps.realms,
        )
        collection = await collector.collect(request.email)
        retry_after = timedelta(seconds=self.settings.collection.retry_after)
        with self.sessions.begin() as session:
            current = self._still_collecting(session, request.id, log)
            if current is None:
                return False
            now = self.clock()
            if not record_collection(
                session, current, collection, now=now, retry_after=retry_after, log=log
            ):
                return False
        with self.sessions.begin() as session:
            current = self._still_collecting(session, request.id, log)
            if current is None:
                return False
            messages = steps.packager.package(session, current, collection, now=now, log=log)
            if messages is None:
                return False
        log.info(
            "request.packaged",
            sources=len(collection.sources),
            records=collection.record_count,
            identifiers=len(collection.links),
            missing=collection.failed,
            messages=messages,
            encrypted=bool(request.pgp_key),
        )
        return True

    def _still_collecting(
        self, session: Session, request_id: int, log: FilteringBoundLogger
    ) -> Request | None:
        """The request, locked for this transaction, if this instance may still keep what it
        collected: its claim still held and the request still collecting; else None."""
        if not self.instances.still_holds(Claim.REQUEST, request_id):
            log.warning("collect.claim_lost")
            return None
        current = session.get_one(Request, request_id, with_for_update=True)
        if current.state is not RequestState.COLLECTING:
            log.warning("collect.superseded", state=current.state.value)
            return None
        return current

    # -- notify, deliver, maintain --------------------------------------------------------

    def notify(self) -> bool:
        """Queue the operators' notices that are due (sent by the deliver step)."""
        with self.sessions.begin() as session:
            queued = self.steps.notifier.run(
                session, now=self.clock(), log=self.log, logins=self.logins.troubles()
            )
            return queued > 0

    async def deliver(self) -> bool:
        return await self.steps.deliverer.send_due()

    def sweep(self) -> int:
        """Delete export files nothing will send (another instance's new ones are left alone)."""
        return self.steps.deliverer.sweep(settle=SETTLE_SECONDS if self.instances.shared else 0)

    async def maintain(self) -> None:
        """Hourly at most: clear the export folder; daily: apply the retention settings."""
        now = self.clock()
        if self._next_maintenance is not None and now < self._next_maintenance:
            return
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        self.sweep()
        await retention.run_daily(self.sessions, self.settings, self.mailbox, now=now, log=self.log)


def _due_for_collection(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """What makes a request due for collection at ``now``."""
    return (
        Request.state.in_([RequestState.CONFIRMED, RequestState.COLLECTING]),
        (Request.next_attempt_at.is_(None)) | (Request.next_attempt_at <= now),
    )

"""The path every request takes: intake, classify, verify, collect, package, deliver.

``Pipeline.cycle`` runs each step once over everything that is due and says
whether anything happened.  State is committed between steps, so a crash at
any point resumes from the last committed step.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.typing import FilteringBoundLogger

from sarbot import faults
from sarbot.config import Settings
from sarbot.export.encryption import EncryptionError
from sarbot.graph import Link, Realms, Scope, graph_digest, graph_document
from sarbot.mail.addresses import mask_address
from sarbot.mail.letters import Composer
from sarbot.mail.mailbox import HeaderInfo, Mailbox, MailboxThread
from sarbot.mail.mailer import Mailer
from sarbot.mail.message import IncomingMail, parse_headers, parse_message
from sarbot.mail.templates import Templates
from sarbot.ops import retention
from sarbot.ops.metrics import Metrics
from sarbot.ops.notify import EXPORT_WRITE_FAILED, Notifier
from sarbot.registry import ConfiguredConnector
from sarbot.steps.acknowledge import Acknowledger
from sarbot.steps.classify import Classification, Classifier, Kind
from sarbot.steps.collect import Collector, Observer
from sarbot.steps.deliver import Deliverer
from sarbot.steps.package import Preparer
from sarbot.steps.verify import Verdict, Verifier
from sarbot.store.lifecycle import audit, transition
from sarbot.store.models import Clock, MailboxPosition, Request, SeenMessage, utcnow
from sarbot.store.states import Outcome, RequestState

MAINTENANCE_INTERVAL = timedelta(hours=1)
"""How often a running daemon looks at retention and the export folder (it also does at start)."""
MOVED_OUTCOMES = frozenset({Outcome.REQUEST, Outcome.CONFIRMATION, Outcome.JOINED})


class Pipeline:
    """Everything one sarbot instance needs to move requests along."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        connectors: Sequence[ConfiguredConnector],
        mailer: Mailer,
        mailbox: MailboxThread,
        *,
        log: FilteringBoundLogger | None = None,
        clock: Clock = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics(clock=clock)
        self.settings = settings
        self.sessions = sessions
        self.connectors = connectors
        self.mailer = mailer
        self.mailbox = mailbox
        self.log: FilteringBoundLogger = log or structlog.get_logger("sarbot")
        self.clock = clock
        self._next_maintenance: datetime | None = None
        self.realms = Realms(settings.realms)
        self.observers: list[Observer] = [
            lambda done: self.metrics.connector_call(done.name, done.seconds, ok=done.ok)
        ]
        templates = Templates(settings.export.template_dir)
        self.composer = Composer(settings.controller, settings.requests.subject_phrase, templates)
        self.preparer = Preparer(settings, connectors, self.composer, templates)
        engine = sessions.kw["bind"]
        self.deliverer = Deliverer(
            settings, sessions, engine, mailer, self.log, clock, self.metrics
        )
        self.verifier = Verifier(settings, self.composer)
        self.acknowledger = Acknowledger(settings, self.composer)
        self.notifier = Notifier(settings, self.composer)
        self.classifier = Classifier(
            own_address=settings.controller.email,
            message_id_domain=settings.message_id_domain,
            phrase=settings.requests.subject_phrase,
            prefix=settings.requests.reference_prefix,
        )

    async def cycle(self, *, intake: bool = True) -> bool:
        """Run every step once; True if any request or message moved on."""
        progressed = False
        if intake:
            progressed = await self.intake()
            self.metrics.poll_succeeded(self.clock())
        progressed |= self.expire()
        progressed |= await self.collect_and_package()
        progressed |= self.notify()
        progressed |= await self.deliver()
        await self.maintain()
        return progressed

    # -- intake, classify, verify ------------------------------------------------

    async def intake(self) -> bool:
        """Take every new message in the watched folder, then move the handled ones."""
        box: Mailbox = self.mailbox.mailbox
        with self.sessions.begin() as session:
            after = self._position(session, box.uidvalidity).last_uid
        progressed = False
        headers = await self.mailbox.call(box.new_headers, after)
        for info in headers:
            mail, found = self._classify(info)
            if mail is not None and found.kind is not Kind.UNRELATED:
                progressed |= await self._take(info, mail, found, box.uidvalidity)
        if headers:  # unrelated mail moves the position too, in one commit
            with self.sessions.begin() as session:
                position = self._position(session, box.uidvalidity)
                position.last_uid = max(position.last_uid, headers[-1].uid)
        await self._move_handled(box.uidvalidity)
        return progressed

    def _position(self, session: Session, uidvalidity: int) -> MailboxPosition:
        folder = self.settings.imap.folder
        position = session.get(MailboxPosition, folder)
        if position is None:
            position = MailboxPosition(folder=folder, uidvalidity=uidvalidity, last_uid=0)
            session.add(position)
        elif position.uidvalidity != uidvalidity:
            self.log.warning(
                "mailbox.uidvalidity_changed",
                folder=folder,
                old=position.uidvalidity,
                new=uidvalidity,
            )
            position.uidvalidity, position.last_uid = uidvalidity, 0
        return position

    def _classify(self, info: HeaderInfo) -> tuple[IncomingMail | None, Classification]:
        """Classify on headers alone; hostile headers are refused, never raised."""
        try:
            head = parse_headers(info.header)
            return head, self.classifier.classify(head)
        except Exception as exc:  # the parser may fail in any way on hostile input
            self.log.warning("mail.unreadable", uid=info.uid, error_type=type(exc).__name__)
            return None, Classification(Kind.GUARDED, reason="unreadable")

    async def _take(
        self, info: HeaderInfo, head: IncomingMail, found: Classification, uidvalidity: int
    ) -> bool:
        """Act on one message that concerns sarbot; the position moves past it either way."""
        log = self.log.bind(uid=info.uid)
        mail: IncomingMail | None = head
        if found.kind is not Kind.GUARDED and info.size <= self.settings.imap.max_message_bytes:
            raw = await self.mailbox.call(self.mailbox.mailbox.fetch_message, info.uid)
            mail = parse_message(raw) if raw is not None else None
        now = self.clock()
        with self.sessions.begin() as session:
            position = self._position(session, uidvalidity)
            position.last_uid = max(position.last_uid, info.uid)
            if mail is None:  # gone from the mailbox since its headers were read
                return False
            if session.scalar(select(SeenMessage.id).where(SeenMessage.message_key == mail.key)):
                log.info("mail.duplicate", kind=found.kind.value)
                return False
            verdict = self._decide(session, mail, found, info, now=now, log=log)
            session.add(
                SeenMessage(
                    message_key=mail.key,
                    folder=self.settings.imap.folder,
                    uidvalidity=uidvalidity,
                    uid=info.uid,
                    outcome=verdict.outcome,
                    request=verdict.request,
                    move_pending=verdict.outcome in MOVED_OUTCOMES,
                    seen_at=now,
                )
            )
            faults.point("intake.before_commit")
        self._log_verdict(log, found, verdict)
        return True

    def _decide(
        self,
        session: Session,
        mail: IncomingMail,
        found: Classification,
        info: HeaderInfo,
        *,
        now: datetime,
        log: FilteringBoundLogger,
    ) -> Verdict:
        if found.kind is Kind.GUARDED:
            return Verdict(Outcome.GUARDED, reason=found.reason)
        if info.size > self.settings.imap.max_message_bytes:
            return Verdict(Outcome.TOO_LARGE, reason=f"{info.size} bytes")
        if found.kind is Kind.REQUEST:
            return self.acknowledger.open(session, mail, now=now, log=log)
        return self.verifier.check_reply(session, mail, found, now=now)

    def _log_verdict(
        self, log: FilteringBoundLogger, found: Classification, verdict: Verdict
    ) -> None:
        request = verdict.request
        fields = {
            "kind": found.kind.value,
            "outcome": verdict.outcome.value,
            "reason": verdict.reason,
        }
        if request is not None:
            fields |= {"reference": request.reference, "requester": mask_address(request.email)}
        if verdict.outcome in MOVED_OUTCOMES:
            log.info("mail.accepted", **fields)
        else:
            log.warning("mail.refused", **fields)

    async def _move_handled(self, uidvalidity: int) -> None:
        """Move handled request mails to the processed folder (no transaction held meanwhile)."""
        with self.sessions() as session:
            pending = session.execute(
                select(SeenMessage.id, SeenMessage.uid, SeenMessage.uidvalidity)
                .where(SeenMessage.move_pending.is_(True))
                .where(SeenMessage.folder == self.settings.imap.folder)
            ).all()
        if not pending:
            return
        uids = [uid for _, uid, validity in pending if validity == uidvalidity]
        target = self.settings.imap.processed_folder
        await self.mailbox.call(self.mailbox.mailbox.move, uids, target)
        faults.point("intake.moved")
        with self.sessions.begin() as session:
            for row_id, _, _ in pending:
                session.get_one(SeenMessage, row_id).move_pending = False
        self.log.info("mail.moved", count=len(uids), folder=target)

    # -- expiry ----------------------------------------------------------------------

    def expire(self) -> bool:
        """Expire unconfirmed requests, and acknowledge those that waited for a cap."""
        now = self.clock()
        with self.sessions.begin() as session:
            expired = self.verifier.expire_due(session, now=now)
            for request in expired:
                self.log.info("request.expired", reference=request.reference)
            acknowledged = self.acknowledger.send_waiting(session, now=now, log=self.log)
            reminded = self.acknowledger.send_reminders(session, now=now, log=self.log)
        return bool(expired) or acknowledged + reminded > 0

    def notify(self) -> bool:
        """Queue the operators' notices that are due (sent by the deliver step)."""
        with self.sessions.begin() as session:
            return self.notifier.run(session, now=self.clock(), log=self.log) > 0

    # -- collect and package ---------------------------------------------------------

    async def collect_and_package(self) -> bool:
        now = self.clock()
        with self.sessions.begin() as session:
            due = list(
                session.scalars(
                    select(Request)
                    .where(Request.state.in_([RequestState.CONFIRMED, RequestState.COLLECTING]))
                    .where((Request.next_attempt_at.is_(None)) | (Request.next_attempt_at <= now))
                    .order_by(Request.id)
                )
            )
            for request in due:
                begin_collection(session, request, at=now)
        for request in due:
            await self.collect_one(request)
        return bool(due)

    async def collect_one(self, request: Request, observers: Sequence[Observer] = ()) -> bool:
        """Collect for one request and prepare its answer; False if it must wait and retry."""
        log = self.log.bind(reference=request.reference)
        collector = Collector(
            self.connectors,
            self.settings.collection,
            log,
            [*self.observers, *observers],
            self.realms,
        )
        collection = await collector.collect(request.email)
        now = self.clock()
        with self.sessions.begin() as session:
            current = session.get_one(Request, request.id)
            current.attempts += 1
            record_graph(session, current, collection.links, at=now)
            if not collection.complete and current.partial_reason is None:
                wait = timedelta(seconds=self.settings.collection.retry_after)
                current.next_attempt_at = now + wait
                current.last_error = "connectors failed: " + ", ".join(collection.failed)
                audit(session, current, "collect.incomplete", at=now, reason=current.last_error)
                log.warning(
                    "request.collect_incomplete",
                    failed=collection.failed,
                    retry_in=wait.total_seconds(),
                )
                return False
            ctx = self.preparer.context(current, collection, now)
            try:
                with session.begin_nested():  # nothing of a half-prepared answer is kept
                    messages = self.preparer.prepare(session, current, ctx, now)
            except OSError as exc:
                # The export folder is full or unwritable: retry later, and tell the operators.
                wait = timedelta(seconds=self.settings.collection.retry_after)
                current.next_attempt_at = now + wait
                current.last_error = f"{EXPORT_WRITE_FAILED}: {exc.strerror or type(exc).__name__}"
                audit(session, current, "export.write_failed", at=now, reason=current.last_error)
                log.error(
                    "request.export_write_failed", error=exc.strerror, retry_in=wait.total_seconds()
                )
                return False
            except EncryptionError as exc:
                # The requester asked for encryption; a human decides, rather than send in clear.
                current.last_error = f"cannot encrypt to the requester's key: {exc}"
                transition(
                    session, current, RequestState.NEEDS_REVIEW, at=now, reason=current.last_error
                )
                log.error("request.encryption_failed")
                return False
            current.ready_at, current.next_attempt_at, current.last_error = now, None, None
            transition(session, current, RequestState.READY, at=now, reason="export packaged")
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

    # -- deliver -------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Hourly at most: clear the export folder; daily: apply the retention settings."""
        now = self.clock()
        if self._next_maintenance is not None and now < self._next_maintenance:
            return
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        self.deliverer.sweep()
        with self.sessions.begin() as session:
            if not retention.due(session, now):
                return
            purged = retention.purge(session, self.settings, now)
        self.log.info("retention.purged", requests=purged.requests, events=purged.audit_events)
        box = self.mailbox.mailbox
        if box.connected:
            before = (now - timedelta(days=self.settings.retention.processed_mail_days)).date()
            deleted = await self.mailbox.call(
                box.delete_older_than, self.settings.imap.processed_folder, before
            )
            self.log.info("retention.mail_deleted", messages=deleted)

    async def deliver(self) -> bool:
        return await self.deliverer.send_due()


def record_graph(
    session: Session, request: Request, links: Sequence[Link], *, at: datetime
) -> None:
    """Keep the identity graph with the request; the audit trail gets its digest and counts."""
    request.identity_graph = json.dumps(graph_document(links), ensure_ascii=False)
    scopes = Counter(link.scope for link in links)
    summary = (
        f"{len(links)} identifier(s): {scopes[Scope.EVERYWHERE]} followed, "
        f"{scopes[Scope.NOT_FOLLOWED]} not followed; graph {graph_digest(links)}"
    )
    audit(session, request, "collect.graph", at=at, reason=summary)


def begin_collection(
    session: Session, request: Request, *, at: datetime, actor: str = "daemon"
) -> None:
    """A confirmed request starts collecting (one already collecting goes on)."""
    if request.state is RequestState.CONFIRMED:
        started = "collection started"
        transition(session, request, RequestState.COLLECTING, at=at, reason=started, actor=actor)

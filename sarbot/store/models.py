"""The persisted state: requests, their audit trail, the mailbox position, the outbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sarbot.store.states import MailKind, MailState, Outcome, RequestState

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored as naive UTC and always read back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _enum(enum: type[RequestState | MailState | MailKind | Outcome], name: str) -> Enum:
    return Enum(
        enum,
        name=name,
        native_enum=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
    )


EARLIER_CHALLENGES = 4
"""How many earlier challenges of a request keep working beside the newest."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    state: Mapped[RequestState] = mapped_column(_enum(RequestState, "request_state"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    token_hash: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64))
    earlier_challenges: Mapped[str] = mapped_column(Text, default="")
    """Digests of the last few earlier challenges, ``token:code`` pairs, newest first."""
    confirmation_failures: Mapped[int] = mapped_column(Integer, default=0)
    request_message_id: Mapped[str | None] = mapped_column(String(998))
    thread: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    partial_reason: Mapped[str | None] = mapped_column(Text)
    pgp_key: Mapped[str | None] = mapped_column(Text)
    encryption_note: Mapped[str | None] = mapped_column(Text)
    authentication: Mapped[str | None] = mapped_column(Text)
    authenticated: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str | None] = mapped_column(Text)
    received_via: Mapped[str] = mapped_column(String(16), default="email")
    note: Mapped[str | None] = mapped_column(Text)
    due_on: Mapped[date | None] = mapped_column(Date, index=True)
    extended_due_on: Mapped[date | None] = mapped_column(Date)
    extension_reason: Mapped[str | None] = mapped_column(Text)
    recognised_by: Mapped[str | None] = mapped_column(Text)
    """For a possible request: the words that made it look like one."""
    identity_graph: Mapped[str | None] = mapped_column(Text)
    """The last collection's identity graph as JSON (``sarbot.graph``); personal data."""

    @property
    def deadline(self) -> date | None:
        """The date the answer is due: the extended date once extended."""
        return self.extended_due_on or self.due_on

    audit: Mapped[list[AuditEvent]] = relationship(
        back_populates="request", order_by="AuditEvent.id", cascade="all, delete-orphan"
    )

    def keep_challenge(self, *, revoke: bool) -> None:
        """Before a new challenge: keep the current one valid too, or (``revoke``) none."""
        if revoke:
            self.earlier_challenges = ""
        elif self.token_hash:
            kept = [f"{self.token_hash}:{self.code_hash}", *self.earlier_challenges.split()]
            self.earlier_challenges = " ".join(kept[:EARLIER_CHALLENGES])

    def challenges(self) -> list[tuple[str, str]]:
        """Every challenge that still confirms: (token digest, code digest), newest first."""
        earlier = [tuple(pair.split(":", 1)) for pair in (self.earlier_challenges or "").split()]
        return [(self.token_hash, self.code_hash), *((t, c) for t, c in earlier)]

    def thread_ids(self) -> list[str]:
        return self.thread.split()

    def add_to_thread(self, message_id: str | None) -> None:
        if message_id and message_id not in self.thread_ids():
            self.thread = " ".join([*self.thread_ids(), message_id])


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64), default="daemon")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    request: Mapped[Request | None] = relationship(back_populates="audit", viewonly=True)


class AuditAnchor(Base):
    """Where the audit chain starts after older events were purged: the last purged link."""

    __tablename__ = "audit_anchors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditHead(Base):
    """The newest link of the audit chain: one row, locked by every writer of the trail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class SchemaCompatibility(Base):
    """The oldest code a schema can still run: instances are upgraded one at a time.

    One row.  A migration that code older than it survives (a new table, a new
    nullable column) leaves ``oldest_code`` as it is; one that breaks older code
    (a column dropped or renamed) sets it to its own revision (docs/deployment.md).
    """

    __tablename__ = "schema_compatibility"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    oldest_code: Mapped[str] = mapped_column(String(32))


class MailboxPosition(Base):
    """How far intake has read a folder: restarted from scratch when UIDVALIDITY changes."""

    __tablename__ = "mailbox_positions"

    folder: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(Integer)
    last_uid: Mapped[int] = mapped_column(Integer, default=0)
    history_until_uid: Mapped[int] = mapped_column(Integer, default=0)
    """The folder's last UID when sarbot first watched it: mail up to it came before the start."""


class SeenMessage(Base):
    """An incoming message intake acted on, deduplicated by its Message-ID."""

    __tablename__ = "seen_messages"
    __table_args__ = (UniqueConstraint("message_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_key: Mapped[str] = mapped_column(String(998))
    folder: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(Integer)
    uid: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[Outcome] = mapped_column(_enum(Outcome, "message_outcome"))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    move_pending: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())

    request: Mapped[Request | None] = relationship()


class OutgoingMail(Base):
    """A message sarbot sends, written before it is handed to the SMTP server."""

    __tablename__ = "outgoing_mail"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    kind: Mapped[MailKind] = mapped_column(_enum(MailKind, "mail_kind"))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    state: Mapped[MailState] = mapped_column(_enum(MailState, "mail_state"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    file_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    sending_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Set, in a transaction of its own, just before the message is handed to SMTP; cleared
    when the outcome is recorded.  Still set on a pending message, the handing over was cut
    short by a crash (the message may have gone, and goes again: the crash rule)."""

    request: Mapped[Request | None] = relationship()


def utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]
"""Where the time comes from: ``utcnow``, or a test's clock."""

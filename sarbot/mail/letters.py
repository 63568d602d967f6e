"""The letters sarbot sends, and the one path every one of them takes.

``Letters.post`` is that path: a Message-ID is allocated, the letter is built
from its template, its bytes are recorded in the outbox (or written to the
export folder) before anything is sent, and the request's thread goes on from
it.  Every letter goes to the request's verified address only (operators'
mail to the operators), carries ``Auto-Submitted`` (RFC 3834) and sarbot's
loop header, and threads on the request's earlier messages.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy.orm import Session

from sarbot.config import ControllerSettings
from sarbot.faults import CrashPoints
from sarbot.mail.guards import LOOP_HEADER
from sarbot.mail.templates import Templates
from sarbot.store import outbox
from sarbot.store.exports import write_private_file
from sarbot.store.models import OutgoingMail, Request
from sarbot.store.states import MailKind

Compose = Callable[[str], EmailMessage | Iterable[bytes]]
"""Builds a letter once its Message-ID is known: the message, or (one too large to hold in
memory, an export's part) its bytes as sent, a block at a time, written to ``file`` as they
come."""


def as_bytes(message: EmailMessage) -> bytes:
    """The message as sent over SMTP (CRLF line endings)."""
    return message.as_bytes(policy=SMTP)


def new_message_id(reference: str, domain: str) -> str:
    """A Message-ID for a non-challenge message (never mistaken for a challenge)."""
    return f"<{reference}.m{secrets.token_hex(12)}@{domain}>"


class Letters:
    """Builds one controller's letters from templates, and posts them to the outbox."""

    def __init__(
        self,
        controller: ControllerSettings,
        phrase: str,
        templates: Templates,
        *,
        crash_points: CrashPoints,
    ) -> None:
        self.controller = controller
        self.phrase = phrase
        self.templates = templates
        self.crash_points = crash_points
        self.domain = controller.email.rpartition("@")[2]

    # -- posting -------------------------------------------------------------------------

    def post(
        self,
        session: Session,
        request: Request | None,
        kind: MailKind,
        compose: Compose,
        *,
        now: datetime,
        message_id: str | None = None,
        recorded_id: str | None = None,
        recipient: str | None = None,
        thread: bool = True,
        file: Path | None = None,
        stem: str | None = None,
    ) -> OutgoingMail:
        """Build a letter and record it to be sent.

        ``message_id`` is allocated unless given (an acknowledgement's carries its
        challenge, and only ``recorded_id``, its digest, is kept); an allocated one starts
        with ``stem``, else the request's reference, else ``digest``.  ``file`` writes the
        message to the export folder instead of the database.  ``thread`` makes the
        request's next letters reply to this one.
        """
        if message_id is None:
            stem = stem or (request.reference if request is not None else "digest")
            message_id = new_message_id(stem, self.domain)
        composed = compose(message_id)
        blocks = [as_bytes(composed)] if isinstance(composed, EmailMessage) else composed
        raw: bytes | None = None
        if file is not None:
            write_private_file(file, blocks, self.crash_points)
        else:
            raw = b"".join(blocks)
        mail = outbox.queue(
            session,
            request,
            kind,
            message_id=recorded_id or message_id,
            raw=raw,
            now=now,
            recipient=recipient,
            file_path=str(file) if file is not None else None,
        )
        if thread and request is not None:
            request.add_to_thread(message_id)
        return mail

    def send_letter(
        self,
        session: Session,
        request: Request,
        kind: MailKind,
        template: str,
        subject: str,
        *,
        now: datetime,
        **context: object,
    ) -> OutgoingMail:
        """A short letter to the requester about their request (extension, rejection)."""

        def compose(message_id: str) -> EmailMessage:
            message = self.base(request, subject=subject, message_id=message_id, now=now)
            message.set_content(
                self.templates.render(
                    template,
                    controller=self.controller,
                    reference=request.reference,
                    received_at=request.received_at,
                    **context,
                )
            )
            return message

        return self.post(session, request, kind, compose, now=now)

    # -- composing -----------------------------------------------------------------------

    def base(
        self, request: Request, *, subject: str, message_id: str, now: datetime
    ) -> EmailMessage:
        """A letter to the requester: addressed, dated and threaded, without a body yet."""
        message = EmailMessage()
        local, _, domain = self.controller.email.partition("@")
        message["From"] = Address(self.controller.name, local, domain)
        message["To"] = request.email
        message["Subject"] = f"[{request.reference}] {subject}"
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id
        thread = request.thread_ids()
        if thread:
            message["In-Reply-To"] = thread[-1]
            message["References"] = " ".join(thread[-10:])
        message["Auto-Submitted"] = "auto-replied"
        message[LOOP_HEADER] = self.controller.email
        return message

    def acknowledgement(
        self,
        request: Request,
        *,
        code: str,
        message_id: str,
        now: datetime,
        reminder: bool = False,
    ) -> EmailMessage:
        subject = "Please confirm your data request"
        if reminder:
            subject = "Reminder: " + subject.lower()
        message = self.base(request, subject=subject, message_id=message_id, now=now)
        message.set_content(
            self.templates.render(
                "acknowledgement.txt",
                controller=self.controller,
                reference=request.reference,
                email=request.email,
                code=code,
                expires_at=request.expires_at,
                encryption_note=request.encryption_note or "",
                reminder=reminder,
            )
        )
        return message

    def acknowledgement_verified(
        self, request: Request, *, message_id: str, now: datetime
    ) -> EmailMessage:
        """The acknowledgement when the sender was authenticated and no challenge is needed."""
        message = self.base(
            request, subject="We have received your data request", message_id=message_id, now=now
        )
        message.set_content(
            self.templates.render(
                "acknowledgement_verified.txt",
                controller=self.controller,
                reference=request.reference,
                email=request.email,
                authentication=request.authentication or "",
                encryption_note=request.encryption_note or "",
            )
        )
        return message

    def operator_notice(
        self,
        recipient: str,
        template: str,
        subject: str,
        *,
        message_id: str,
        now: datetime,
        **context: object,
    ) -> EmailMessage:
        """Mail to an operator: never any exported data, only references, states and dates."""
        message = EmailMessage()
        local, _, domain = self.controller.email.partition("@")
        message["From"] = Address(f"sarbot ({self.controller.name})", local, domain)
        message["To"] = recipient
        message["Subject"] = f"[sarbot] {subject}"
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message[LOOP_HEADER] = self.controller.email
        message.set_content(self.templates.render(template, controller=self.controller, **context))
        return message

    def expiry_notice(self, request: Request, *, message_id: str, now: datetime) -> EmailMessage:
        message = self.base(
            request, subject="Your data request has expired", message_id=message_id, now=now
        )
        message.set_content(
            self.templates.render(
                "expiry_notice.txt",
                controller=self.controller,
                reference=request.reference,
                received_at=request.received_at,
                expires_at=request.expires_at,
                phrase=self.phrase,
            )
        )
        return message

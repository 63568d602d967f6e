"""The messages sarbot sends, built from templates.

Every message goes to the request's verified address only, carries
``Auto-Submitted: auto-replied`` (RFC 3834) and sarbot's loop header, and
threads on the request's earlier messages.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from sarbot.config import ControllerSettings
from sarbot.export.archive import Part
from sarbot.export.files import ExportContext
from sarbot.mail.guards import LOOP_HEADER
from sarbot.mail.templates import Templates
from sarbot.store.models import Request


def as_bytes(message: EmailMessage) -> bytes:
    """The message as sent over SMTP (CRLF line endings)."""
    return message.as_bytes(policy=SMTP)


def new_message_id(reference: str, domain: str) -> str:
    """A Message-ID for a non-challenge message (never mistaken for a challenge)."""
    return f"<{reference}.m{secrets.token_hex(12)}@{domain}>"


class Composer:
    """Builds messages from one controller's identity."""

    def __init__(self, controller: ControllerSettings, phrase: str, templates: Templates) -> None:
        self.controller = controller
        self.phrase = phrase
        self.templates = templates

    def _base(
        self, request: Request, *, subject: str, message_id: str, now: datetime
    ) -> EmailMessage:
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
        message = self._base(request, subject=subject, message_id=message_id, now=now)
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
        message = self._base(
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

    def letter(
        self,
        request: Request,
        template: str,
        subject: str,
        *,
        message_id: str,
        now: datetime,
        **context: object,
    ) -> EmailMessage:
        """A short letter to the requester about their request (extension, rejection)."""
        message = self._base(request, subject=subject, message_id=message_id, now=now)
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

    def operator_notice(
        self,
        recipients: Sequence[str],
        template: str,
        subject: str,
        *,
        message_id: str,
        now: datetime,
        **context: object,
    ) -> EmailMessage:
        """Mail to the operators: never any exported data, only references, states and dates."""
        message = EmailMessage()
        local, _, domain = self.controller.email.partition("@")
        message["From"] = Address(f"sarbot ({self.controller.name})", local, domain)
        message["To"] = ", ".join(recipients)
        message["Subject"] = f"[sarbot] {subject}"
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message[LOOP_HEADER] = self.controller.email
        message.set_content(self.templates.render(template, controller=self.controller, **context))
        return message

    def expiry_notice(self, request: Request, *, message_id: str, now: datetime) -> EmailMessage:
        message = self._base(
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

    def export(
        self,
        request: Request,
        ctx: ExportContext,
        parts: Sequence[Part],
        *,
        message_ids: Sequence[str],
        now: datetime,
    ) -> list[EmailMessage]:
        """One message per part of the export; the first carries the letter."""
        messages = []
        variables = ctx.template_vars() | {"parts": parts}
        for part, message_id in zip(parts, message_ids, strict=True):
            subject = "A copy of your personal data"
            if part.count > 1:
                subject += f" (part {part.number} of {part.count})"
            message = self._base(request, subject=subject, message_id=message_id, now=now)
            if part.number == 1:
                message.set_content(self.templates.render("export.txt", **variables))
                message.add_alternative(
                    self.templates.render("export.html", **variables), subtype="html"
                )
            else:
                text = self.templates.render("export_part.txt", part=part, **variables)
                message.set_content(text)
            maintype, subtype = part.content_type.split("/")
            message.add_attachment(
                part.data, maintype=maintype, subtype=subtype, filename=part.filename
            )
            messages.append(message)
        return messages

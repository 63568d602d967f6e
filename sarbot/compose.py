"""The messages sarbot sends, built from templates.

Every message goes to the request's verified address only, carries
``Auto-Submitted: auto-replied`` (RFC 3834) and sarbot's loop header, and
threads on the request's earlier messages.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from sarbot.config import ControllerSettings
from sarbot.guards import LOOP_HEADER
from sarbot.models import Request
from sarbot.package import ExportContext, export_filename
from sarbot.render import render


def as_bytes(message: EmailMessage) -> bytes:
    """The message as sent over SMTP (CRLF line endings)."""
    return message.as_bytes(policy=SMTP)


def new_message_id(reference: str, domain: str) -> str:
    """A Message-ID for a non-challenge message (never mistaken for a challenge)."""
    return f"<{reference}.m{secrets.token_hex(12)}@{domain}>"


class Composer:
    """Builds messages from one controller's identity."""

    def __init__(self, controller: ControllerSettings, phrase: str) -> None:
        self.controller = controller
        self.phrase = phrase

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
        self, request: Request, *, code: str, message_id: str, now: datetime
    ) -> EmailMessage:
        message = self._base(
            request, subject="Please confirm your data request", message_id=message_id, now=now
        )
        message.set_content(
            render(
                "acknowledgement.txt",
                controller=self.controller,
                reference=request.reference,
                email=request.email,
                code=code,
                expires_at=request.expires_at,
            )
        )
        return message

    def expiry_notice(self, request: Request, *, message_id: str, now: datetime) -> EmailMessage:
        message = self._base(
            request, subject="Your data request has expired", message_id=message_id, now=now
        )
        message.set_content(
            render(
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
        *,
        zip_data: bytes,
        message_id: str,
        now: datetime,
    ) -> EmailMessage:
        filename = export_filename(request.reference)
        message = self._base(
            request, subject="A copy of your personal data", message_id=message_id, now=now
        )
        message.set_content(render("export.txt", filename=filename, **ctx.template_vars()))
        message.add_attachment(zip_data, maintype="application", subtype="zip", filename=filename)
        return message

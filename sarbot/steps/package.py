"""Turning a collection into the messages that answer a request.

The export's files are built, packed into one zip or numbered parts,
encrypted when the requester sent a usable OpenPGP key, and wrapped in
messages.  Each message is written to the export folder (0600, atomically)
and recorded in the outbox before anything is sent, so a crash can never
send half an export: a request is prepared again from scratch until every
message is on disk and in the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from sarbot.config import Settings
from sarbot.export.archive import Part, pack, write_private_file
from sarbot.export.encryption import encrypt
from sarbot.export.files import ExportContext, build_files
from sarbot.mail.letters import Composer, as_bytes, new_message_id
from sarbot.mail.templates import Templates
from sarbot.registry import ConfiguredConnector
from sarbot.steps.collect import Collection
from sarbot.store import outbox
from sarbot.store.models import Request
from sarbot.store.states import MailKind


class Preparer:
    def __init__(
        self,
        settings: Settings,
        connectors: Sequence[ConfiguredConnector],
        composer: Composer,
        templates: Templates,
    ) -> None:
        self.settings = settings
        self.connectors = connectors
        self.composer = composer
        self.templates = templates

    def context(self, request: Request, collection: Collection, now: datetime) -> ExportContext:
        failed = set(collection.failed)
        return ExportContext(
            reference=request.reference,
            email=request.email,
            controller=self.settings.controller,
            received_at=request.received_at,
            confirmed_at=request.confirmed_at,
            generated_at=now,
            sources=collection.sources,
            links=collection.links,
            missing=[c.description or c.name for c in self.connectors if c.name in failed],
            partial_reason=request.partial_reason if failed else None,
            encryption_note=request.encryption_note or "",
            verification=verification_summary(request),
        )

    def prepare(self, session: Session, request: Request, ctx: ExportContext, now: datetime) -> int:
        """Write the answer's messages and queue them; returns how many there are."""
        files = build_files(ctx, self.templates)
        parts = pack(
            files,
            reference=request.reference,
            generated_at=now,
            limit=self.settings.export.max_attachment_bytes,
        )
        if request.pgp_key:
            parts = [_encrypted(part, request.pgp_key) for part in parts]
        domain = self.settings.message_id_domain
        message_ids = [new_message_id(request.reference, domain) for _ in parts]
        messages = self.composer.export(request, ctx, parts, message_ids=message_ids, now=now)
        folder = self.settings.storage.export_dir
        for part, message_id, message in zip(parts, message_ids, messages, strict=True):
            path = folder / _file_name(request.reference, part)
            write_private_file(path, as_bytes(message))
            outbox.queue(
                session,
                request,
                MailKind.EXPORT,
                message_id=message_id,
                raw=None,
                now=now,
                file_path=str(path),
            )
        return len(parts)


def verification_summary(request: Request) -> str:
    """How the requester's control of the address was established, for the letter."""
    how = (
        "you replied to our acknowledgement"
        if request.token_hash
        else "your email was authenticated by its signature"
    )
    evidence = f"; email authentication: {request.authentication}" if request.authentication else ""
    return how + evidence


def _encrypted(part: Part, key_armored: str) -> Part:
    data = encrypt(part.data, key_armored, part.filename)
    return replace(part, filename=part.filename + ".pgp", data=data)


def _file_name(reference: str, part: Part) -> str:
    return f"{reference}.part{part.number}of{part.count}.eml"

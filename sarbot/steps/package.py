"""Turning a collection into the messages that answer a request.

The export's files are built, packed into one zip or numbered parts,
encrypted when the requester sent a usable OpenPGP key, and wrapped in
letters.  Each letter is written to the export folder (0600, atomically)
and recorded in the outbox before anything is sent, so a crash can never
send half an export: a request is packaged again from scratch until every
message is on disk and in the outbox.  A full export folder is retried
later; a key that cannot be encrypted to waits for a person.

Nothing of an export is held in memory whole: its files are streamed from the
collection's spool into nameless files in the temporary folder (``TMPDIR``), the
zips are written from those, and each letter is written with its attachment
base64-encoded from the zip's file as it goes.  The largest thing held is one
part while it is encrypted (at most ``[export] max_attachment_bytes``).
"""

from __future__ import annotations

import base64
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from sarbot.config import Settings
from sarbot.export.archive import Archive, NewFile, Part, stored_part
from sarbot.export.encryption import EncryptionError, encrypt
from sarbot.export.files import ExportContext, write_files
from sarbot.mail.letters import Letters
from sarbot.mail.templates import Templates
from sarbot.registry import ConfiguredConnector
from sarbot.steps.collect import Collection
from sarbot.store.exports import remove_left_over
from sarbot.store.lifecycle import audit, transition
from sarbot.store.models import OutgoingMail, Request
from sarbot.store.states import MailKind, RequestState

EXPORT_WRITE_FAILED = "cannot write the export"
"""How a request's last error starts when the export folder failed (full, unwritable)."""
ENCRYPTION_FAILED = "cannot encrypt to the requester's key"
"""How a request's last error starts when it waits for review because its export could not be
encrypted: an operator rejects it or sends it unencrypted (``sarbot.ops.decisions``)."""


class Packager:
    def __init__(
        self,
        settings: Settings,
        connectors: Sequence[ConfiguredConnector],
        letters: Letters,
        templates: Templates,
    ) -> None:
        self.settings = settings
        self.connectors = connectors
        self.letters = letters
        self.templates = templates

    def package(
        self,
        session: Session,
        request: Request,
        collection: Collection,
        *,
        now: datetime,
        log: FilteringBoundLogger,
    ) -> int | None:
        """Package the answer and make the request ready; how many messages it is in, or
        None if it must wait: retried later, or for a person to decide.

        The caller holds the request's claim, so no other instance packages it now: a
        letter of its answer in the export folder that the outbox does not record (half
        written, or written but not committed) was left by a packaging that was killed, and
        goes before anything is written.
        """
        ctx = self.context(request, collection, now)
        try:
            with session.begin_nested():  # nothing of a half-prepared answer is kept
                self._remove_left_over(session, request, log)
                messages = self._post(session, request, ctx, now)
        except OSError as exc:
            # The export folder is full or unwritable: retry later, and tell the operators.
            wait = timedelta(seconds=self.settings.collection.retry_after)
            request.next_attempt_at = now + wait
            request.last_error = f"{EXPORT_WRITE_FAILED}: {exc.strerror or type(exc).__name__}"
            audit(session, request, "export.write_failed", at=now, reason=request.last_error)
            log.error(
                "request.export_write_failed", error=exc.strerror, retry_in=wait.total_seconds()
            )
            return None
        except EncryptionError as exc:
            # The requester asked for encryption; a human decides, rather than send in clear.
            request.last_error = f"{ENCRYPTION_FAILED}: {exc}"
            request.review_reason = (
                f"{request.last_error}; send it unencrypted with 'sarbot requests deliver "
                f"{request.reference} --unencrypted --reason TEXT', or reject it"
            )
            transition(
                session, request, RequestState.NEEDS_REVIEW, at=now, reason=request.last_error
            )
            log.error("request.encryption_failed")
            return None
        request.ready_at, request.next_attempt_at, request.last_error = now, None, None
        transition(session, request, RequestState.READY, at=now, reason="export packaged")
        return messages

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

    def _remove_left_over(
        self, session: Session, request: Request, log: FilteringBoundLogger
    ) -> None:
        folder = self.settings.storage.export_dir
        if not folder.is_dir():
            return
        recorded = session.scalars(
            select(OutgoingMail.file_path).where(
                OutgoingMail.request_id == request.id, OutgoingMail.file_path.is_not(None)
            )
        )
        keep = {Path(path).name for path in recorded if path is not None}
        removed, stuck = remove_left_over(folder, _file_prefix(request.reference), keep=keep)
        if removed:
            log.info("export.left_over_removed", files=removed)
        for path in stuck:
            log.warning("export.left_over_kept", file=path.name)

    def _post(self, session: Session, request: Request, ctx: ExportContext, now: datetime) -> int:
        """Write the answer's messages to the export folder and queue them."""
        folder = self.settings.storage.export_dir
        with ExitStack() as work:

            def new_file() -> IO[bytes]:
                """In the temporary folder, beside the spool, and nameless, so nothing is
                left behind however packaging ends: only the letters go to the export folder."""
                return work.enter_context(tempfile.TemporaryFile())

            archive = Archive(new_file, limit=self.settings.export.max_attachment_bytes)
            write_files(ctx, self.templates, archive)
            parts = archive.pack(reference=request.reference, generated_at=now)
            archive.close()  # the zips hold it all now
            if request.pgp_key:
                parts = [_encrypted(part, request.pgp_key, new_file) for part in parts]
            variables = ctx.template_vars() | {"parts": parts}
            for part in parts:
                self.letters.post(
                    session,
                    request,
                    MailKind.EXPORT,
                    lambda message_id: self._letter(request, part, variables, message_id, now),  # noqa: B023
                    now=now,
                    thread=False,
                    file=folder / _file_name(request.reference, part),
                )
                part.file.close()  # written to its letter
            return len(parts)

    def _letter(
        self,
        request: Request,
        part: Part,
        variables: dict[str, object],
        message_id: str,
        now: datetime,
    ) -> Iterator[bytes]:
        """One part of the export; the first carries the letter."""
        subject = "A copy of your personal data"
        if part.count > 1:
            subject += f" (part {part.number} of {part.count})"
        message = self.letters.base(request, subject=subject, message_id=message_id, now=now)
        render = self.templates.render
        if part.number == 1:
            message.set_content(render("export.txt", **variables))
            message.add_alternative(render("export.html", **variables), subtype="html")
        else:
            message.set_content(render("export_part.txt", part=part, **variables))
        return with_attachment(message, part)


def with_attachment(message: EmailMessage, part: Part) -> Iterator[bytes]:
    """The message with the part attached, as sent over SMTP, a block at a time.

    The message is made with a stand-in attachment of one base64 line; its bytes are
    written around the part's own base64 lines, made from its file as they are written.
    The result is the message ``add_attachment`` with the whole part would make.
    """
    stand_in = secrets.token_bytes(57)  # one base64 line of 76 characters
    maintype, subtype = part.content_type.split("/")
    message.add_attachment(stand_in, maintype=maintype, subtype=subtype, filename=part.filename)
    head, found, tail = message.as_bytes(policy=SMTP).partition(base64.b64encode(stand_in))
    if not found:
        raise AssertionError("the stand-in attachment is not in the message")
    yield head
    separator = b""
    for block in part.chunks(57 * 16384):  # whole lines but the last
        encoded = base64.b64encode(block)
        yield separator + b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        separator = b"\r\n"
    yield tail


def verification_summary(request: Request) -> str:
    """How the requester's control of the address was established, for the letter."""
    how = (
        "you replied to our acknowledgement"
        if request.token_hash
        else "your email was authenticated by its signature"
    )
    evidence = f"; email authentication: {request.authentication}" if request.authentication else ""
    return how + evidence


def _encrypted(part: Part, key_armored: str, new_file: NewFile) -> Part:
    """The part encrypted to the key, in a file of its own."""
    data = encrypt(part.data, key_armored)
    out = new_file()
    out.write(data)
    del data
    part.file.close()  # its plain text is no longer needed
    return stored_part(part.number, part.count, part.filename + ".pgp", out)


def _file_name(reference: str, part: Part) -> str:
    return f"{_file_prefix(reference)}{part.number}of{part.count}.eml"


def _file_prefix(reference: str) -> str:
    """How the names of a request's export files start, and no other request's."""
    return f"{reference}.part"

"""A burst: N requests waiting in the support mailbox, then N confirmations.

1. N request mails wait in the support INBOX; one ``sarbot run --once`` (in process, as the
   command runs it) reads them and sends N acknowledgements. Baseline: FETCH the same N
   mails over IMAP and send N mails of the acknowledgements' sizes to the same people, on
   one SMTP connection (imapclient and aiosmtplib, as sarbot uses them).
2. Each requester's reply to their acknowledgement waits in the INBOX; one ``run --once``
   confirms, collects (a KeePass vault and an SQL store, see ``bench._site``), packages and
   sends N exports. Baseline: FETCH the N replies and send mails of the exports' sizes.

Full size: N = 1000; smoke: 5. Mail is put into the mailbox with IMAP APPEND (as delivered),
so that the run starts with all of it waiting.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select

from bench._site import Sent, Site, bare_fetch, bare_send, confirmation, ensure_stack, timed
from bench.common import Row, Scale
from sarbot.app import App
from sarbot.logging import configure_logging
from sarbot.store.models import OutgoingMail, Request
from sarbot.store.states import MailKind, MailState, RequestState

SIZES = {"full": 1000, "smoke": 5}
GOAL = "<= 1.3x"


def run(scale: Scale) -> list[Row]:
    count = SIZES[scale]
    server = ensure_stack()
    with tempfile.TemporaryDirectory(prefix="sarbot-burst-") as folder:
        site = Site(Path(folder), server, count)
        site.append([site.request_mail(person) for person in site.requesters])
        acks, ack_seconds = run_once(site)
        _expect(site, acks, MailKind.ACKNOWLEDGEMENT, count)
        with timed() as bare_acks:
            bare_fetch(site, "GDPR", count)
            bare_send(site, [(mail.recipient, len(mail.raw)) for mail in acks])

        site.append([confirmation(mail.raw, mail.recipient) for mail in acks])
        exports, export_seconds = run_once(site)
        _expect(site, exports, MailKind.EXPORT, count)
        with timed() as bare_exports:
            bare_fetch(site, "GDPR", count)
            bare_send(site, [(mail.recipient, len(mail.raw)) for mail in exports])
    ack_bytes = sum(len(m.raw) for m in acks) // max(1, len(acks))
    export_bytes = sum(len(m.raw) for m in exports) // max(1, len(exports))
    return [
        Row(
            f"{count} requests waiting -> {count} acknowledgements (run --once)",
            ack_seconds,
            bare_acks[0],
            goal=GOAL,
            note=f"baseline: FETCH {count} + send {len(acks)} mails of {ack_bytes} B "
            "on one connection",
        ),
        Row(
            f"{count} confirmations waiting -> {count} exports sent (run --once)",
            export_seconds,
            bare_exports[0],
            goal=GOAL,
            note=f"baseline: FETCH {count} + send {len(exports)} mails of {export_bytes} B "
            "on one connection",
        ),
    ]


def run_once(site: Site) -> tuple[list[Sent], float]:
    """One ``sarbot run --once`` on the site: what it sent, and how long it took."""
    sent: list[Sent] = []
    with _logging_to(site.root / "sarbot.log"), timed() as seconds:
        app = site.app()
        daemon = app.daemon()
        _record(daemon.pipeline.steps.deliverer.mailer, sent)
        clean = asyncio.run(daemon.run(once=True))
    app.engine.dispose()
    if not clean:
        raise RuntimeError(f"sarbot run --once did not end cleanly; see {site.root}/sarbot.log")
    return sent, seconds[0]


def _record(mailer: Any, sent: list[Sent]) -> None:
    """Keep a copy of every message the mailer hands to SMTP (for the baseline's sizes)."""
    send = mailer.send

    async def recording(raw: bytes, *, sender: str, recipient: str) -> None:
        await send(raw, sender=sender, recipient=recipient)
        sent.append(Sent(recipient, raw))

    mailer.send = recording


def _expect(site: Site, sent: list[Sent], kind: MailKind, count: int) -> None:
    """Every requester got their message (and was delivered, for exports)."""
    app: App = site.app()
    with app.sessions() as session:
        done = session.scalar(
            select(func.count(func.distinct(OutgoingMail.recipient)))
            .where(OutgoingMail.kind == kind)
            .where(OutgoingMail.state == MailState.SENT)
        )
        delivered = session.scalar(
            select(func.count()).select_from(Request).where(Request.state == RequestState.DELIVERED)
        )
    app.engine.dispose()
    if done != count or len({m.recipient for m in sent}) != count:
        raise RuntimeError(f"{kind.value}: {done} of {count} requesters were sent one")
    if kind is MailKind.EXPORT and delivered != count:
        raise RuntimeError(f"{delivered} of {count} requests were delivered")


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """sarbot's JSON log lines to a file (as the daemon writes them), then as before."""
    saved = structlog.get_config()
    with path.open("a") as stream:
        configure_logging("info", "json", stream=stream)
        try:
            yield
        finally:
            structlog.configure(**saved)

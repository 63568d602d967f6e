"""Playing a person at the other end of the mail: used by the tests and the demo.

``Correspondent`` sends mail over SMTP as one address and reads that
address's INBOX over IMAP, against a real mail server.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

from imapclient import IMAPClient

from sarbot.testing.stack import port


@dataclass(frozen=True)
class MailServer:
    """Where the correspondents' mail goes: SMTP and IMAP with STARTTLS."""

    host: str = "127.0.0.1"
    smtp_port: int = field(default_factory=lambda: port("smtp"))
    imap_port: int = field(default_factory=lambda: port("imap"))
    ca_file: str | None = None
    password: str = "test"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


class Correspondent:
    """One mailbox owner: sends as ``address``, reads ``address``'s mail."""

    def __init__(self, server: MailServer, address: str) -> None:
        self.server = server
        self.address = address

    def send(
        self,
        to: str,
        subject: str,
        body: str = "",
        *,
        headers: dict[str, str] | None = None,
        from_header: str | None = None,
        envelope_from: str | None = None,
    ) -> str:
        """Send a plain-text mail; returns its Message-ID."""
        message = EmailMessage()
        message["From"] = from_header or self.address
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self.address.rpartition("@")[2])
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(body or "\n")
        self.send_raw(message.as_bytes(policy=policy.SMTP), to, envelope_from=envelope_from)
        return str(message["Message-ID"])

    def send_raw(self, raw: bytes, to: str, *, envelope_from: str | None = None) -> None:
        """Hand a message to the SMTP server (``to`` may carry a display name)."""
        with smtplib.SMTP(self.server.host, self.server.smtp_port, timeout=30) as smtp:
            smtp.starttls(context=self.server.tls())
            sender = self.address if envelope_from is None else envelope_from
            smtp.sendmail(sender, [parseaddr(to)[1]], raw)

    def reply(self, original: EmailMessage, body: str = "Yes, this is me.") -> str:
        """Reply to a message the way a mail client does (In-Reply-To and References)."""
        references = f"{original.get('References', '')} {original['Message-ID']}".strip()
        subject = str(original["Subject"])
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
        headers = {"In-Reply-To": str(original["Message-ID"]), "References": references}
        return self.send(_reply_to_address(original), subject, body, headers=headers)

    def append(self, raw: bytes, folder: str = "INBOX", *, arrived: datetime | None = None) -> None:
        """Put a message straight into a folder (IMAP APPEND), as delivered, unread;
        ``arrived`` is the date the server records it arrived (INTERNALDATE).  A folder that
        does not exist yet is created."""
        with self._imap() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw, msg_time=arrived)

    def create_folder(self, folder: str) -> None:
        """Create a folder, unless it exists."""
        with self._imap() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)

    def _imap(self) -> IMAPClient:
        client = IMAPClient(self.server.host, port=self.server.imap_port, ssl=False, timeout=30)
        client.starttls(self.server.tls())
        client.login(self.address, self.server.password)
        return client

    def messages(self, folder: str = "INBOX") -> list[EmailMessage]:
        """Every message in a folder, oldest first (read with BODY.PEEK)."""
        with self._imap() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [_parse(data[uid][b"BODY[]"]) for uid in sorted(data)]

    def flags(self, folder: str = "INBOX") -> list[tuple[str, tuple[bytes, ...]]]:
        """The Message-ID and flags of every message in a folder."""
        with self._imap() as client:
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            data = (
                client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                if uids
                else {}
            )
        return [
            (
                str(_parse(item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])["Message-ID"]),
                tuple(item[b"FLAGS"]),
            )
            for _uid, item in sorted(data.items())
        ]

    def wait_for(
        self,
        match: Callable[[EmailMessage], bool],
        *,
        timeout: float = 20.0,
        folder: str = "INBOX",
    ) -> EmailMessage:
        """The first message that matches, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages(folder):
                if match(message):
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no matching message for {self.address} in {folder} after {timeout}s"
                )
            time.sleep(0.2)

    def clear(self) -> None:
        """Delete every message in every folder (a fresh start for a demo)."""
        with self._imap() as client:
            for _flags, _sep, name in client.list_folders():
                client.select_folder(name)
                uids = client.search(["ALL"])
                if uids:
                    client.delete_messages(uids)
                    client.expunge()


def subject_contains(text: str) -> Callable[[EmailMessage], bool]:
    return lambda message: text.lower() in str(message.get("Subject", "")).lower()


def _parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _reply_to_address(original: EmailMessage) -> str:
    return str(original.get("Reply-To") or original["From"])

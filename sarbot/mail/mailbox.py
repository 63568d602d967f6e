"""The support mailbox over IMAP.

Only ``BODY.PEEK`` is ever fetched, so no message is marked read; nothing is
moved but the request mails sarbot has handled.  imapclient is synchronous:
``Mailbox`` runs in one dedicated worker thread (see ``MailboxThread``).
"""

from __future__ import annotations

import asyncio
import imaplib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from sarbot.config import ImapSettings
from sarbot.errors import MailboxError
from sarbot.mail.imap import connect

HEADER_BYTES_CAP = 256 * 1024
BODY_PEEK_BYTES = 16 * 1024
FETCH_BATCH = 100
IDLE_CHECK_SECONDS = 1.0
WATCHDOG_GRACE_SECONDS = 5.0
T = TypeVar("T")

MAILBOX_ERRORS: tuple[type[BaseException], ...] = (
    IMAPClientError,
    imaplib.IMAP4.error,
    OSError,
    socket.timeout,
    ssl.SSLError,
    EOFError,
    MailboxError,
)


@dataclass(frozen=True)
class HeaderInfo:
    """A new message's UID, size, header block (at most HEADER_BYTES_CAP bytes) and arrival."""

    uid: int
    size: int
    header: bytes
    arrived: datetime | None = None
    """When the server received it (INTERNALDATE), in UTC; None if the server did not say."""


class Mailbox:
    """One IMAP session on the watched folder."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.client: IMAPClient | None = None
        self.uidvalidity = 0
        self.capabilities: frozenset[bytes] = frozenset()

    def connect(self) -> None:
        client = connect(self.settings)
        try:
            selected = client.select_folder(self.settings.folder)
        except BaseException:
            _quietly(client.shutdown)
            raise
        self.client = client
        self.uidvalidity = int(selected[b"UIDVALIDITY"])
        self.capabilities = frozenset(client.capabilities())
        _announced(client)  # the count SELECT gives: the first cycle searches the folder

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            _quietly(client.logout)
            _quietly(client.shutdown)

    def abort(self) -> None:
        """From another thread: shut the socket down, so that a call blocked on it fails now."""
        client = self.client
        if client is not None:
            # The plain socket's shutdown: the TLS layer stays as the blocked call knows it.
            _quietly(lambda: socket.socket.shutdown(client.socket(), socket.SHUT_RDWR))

    @property
    def connected(self) -> bool:
        return self.client is not None

    def _client(self) -> IMAPClient:
        if self.client is None:
            raise MailboxError("not connected")
        return self.client

    def new_headers(self, after_uid: int, limit: int | None = None) -> list[HeaderInfo]:
        """Size, headers and arrival of the messages with a UID above ``after_uid``, oldest
        first; the first ``limit`` of them if given."""
        client = self._client()
        client.noop()  # the server shows mail that came since the last command only after one
        _announced(client)  # the search below sees what those announcements were about
        uids = sorted(
            uid for uid in client.search(["UID", f"{after_uid + 1}:*"]) if uid > after_uid
        )[:limit]
        found: list[HeaderInfo] = []
        header_item = f"BODY.PEEK[HEADER]<0.{HEADER_BYTES_CAP}>"
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            data = client.fetch(batch, ["RFC822.SIZE", "INTERNALDATE", header_item])
            for uid in batch:
                item = data.get(uid)
                if item is None:  # expunged between SEARCH and FETCH
                    continue
                header = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER]")), b"")
                size = int(item.get(b"RFC822.SIZE", 0))
                arrived = _utc(item.get(b"INTERNALDATE"))
                found.append(HeaderInfo(uid, size, header or b"", arrived))
        return found

    def last_uid(self) -> int:
        """The highest UID in the folder now; 0 if it is empty."""
        client = self._client()
        client.noop()
        return max(client.search(["ALL"]), default=0)

    def fetch_starts(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The first ``BODY_PEEK_BYTES`` of each message, without setting \\Seen."""
        client = self._client()
        item = f"BODY.PEEK[]<0.{BODY_PEEK_BYTES}>"
        found: dict[int, bytes] = {}
        for start in range(0, len(uids), FETCH_BATCH):
            batch = list(uids[start : start + FETCH_BATCH])
            for uid, data in client.fetch(batch, [item]).items():
                body = next((v for k, v in data.items() if k.startswith(b"BODY[]")), None)
                if isinstance(body, bytes):
                    found[uid] = body
        return found

    def fetch_message(self, uid: int) -> bytes | None:
        """The whole message, without setting \\Seen; None if it is gone."""
        data = self._client().fetch([uid], ["BODY.PEEK[]"])
        item = data.get(uid)
        return None if item is None else item.get(b"BODY[]")

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move messages to ``folder``, creating it if missing."""
        client = self._client()
        if not uids:
            return
        if not client.folder_exists(folder):
            try:
                client.create_folder(folder)
            except IMAPClientError:
                if not client.folder_exists(folder):
                    raise
        if b"MOVE" in self.capabilities:
            client.move(list(uids), folder)
            return
        client.copy(list(uids), folder)
        client.add_flags(list(uids), [b"\\Deleted"], silent=True)
        if b"UIDPLUS" in self.capabilities:
            client.uid_expunge(list(uids))

    def delete_older_than(self, folder: str, before: date) -> int:
        """Delete the messages in ``folder`` received before a date (sarbot's own folder only)."""
        client = self._client()
        if not client.folder_exists(folder):
            return 0
        client.select_folder(folder)
        try:
            uids = client.search(["BEFORE", before])
            if uids:
                client.delete_messages(uids)
                if b"UIDPLUS" in self.capabilities:
                    client.uid_expunge(uids)
                else:
                    client.expunge()
            return len(uids)
        finally:
            client.select_folder(self.settings.folder)

    def noop(self) -> None:
        self._client().noop()

    def wait_for_mail(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout`` seconds for new mail (IDLE when offered); True if some came."""
        client = self._client()
        deadline = time.monotonic() + timeout
        if _announced(client):
            return True  # came after the last search: the server will not announce it again
        if not (self.settings.use_idle and b"IDLE" in self.capabilities):
            return self._poll(client, deadline, stop)
        client.idle()
        # idle_check hides the end of the connection: once the server has hung up it
        # returns nothing at once, every time.  The socket itself tells.
        hangup = select.poll()
        hangup.register(client.socket().fileno(), getattr(select, "POLLRDHUP", 0))
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                responses = client.idle_check(timeout=IDLE_CHECK_SECONDS)
                if any(_is_exists(r) for r in responses):
                    return True
                if hangup.poll(0):
                    break  # the server is gone: DONE below fails and says so
            return False
        finally:
            client.idle_done()

    def _poll(self, client: IMAPClient, deadline: float, stop: threading.Event) -> bool:
        """Without IDLE: a NOOP every ``check_interval`` (once, at the end, without it) until
        the server reports mail that came, or the time is up."""
        every = self.settings.check_interval
        while True:
            left = deadline - time.monotonic()
            if stop.wait(max(0.0, min(every or left, left))):
                return False
            _, responses = client.noop()
            if any(_is_exists(r) for r in responses):
                return True
            if time.monotonic() >= deadline:
                return False


def _announced(client: IMAPClient) -> bool:
    """Whether the server announced new mail (EXISTS) in answer to any command since the
    last time this was asked, and forget it.

    Dovecot tells a session of new mail once, at the end of whichever command comes next:
    mail delivered between the cycle's NOOP and its SEARCH is not in the search's result
    but announced after it, and an IDLE or NOOP later says nothing more of it.  imapclient
    returns the untagged responses of NOOP and IDLE only; imaplib keeps every command's,
    and its ``response()`` hands them over (imapclient has no public way to them).
    """
    session: imaplib.IMAP4 = client._imap
    _, counts = session.response("EXISTS")
    return counts != [None]


def _utc(value: object) -> datetime | None:
    """INTERNALDATE as imapclient gives it (naive local time, or aware) in UTC."""
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC)  # a naive value is read as local time, as imapclient made it


def _is_exists(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] == b"EXISTS"


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:  # closing a broken session may fail in any way; it is closed either way
        return


class MailboxStalled(TimeoutError):
    """A mailbox call outlived its watchdog; its connection was shut down."""


class MailboxThread:
    """Runs every call on one Mailbox in one worker thread, awaitable from asyncio."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap")

    async def call(self, fn: Callable[..., T], *args: Any, watchdog: float | None = None) -> T:
        """Run ``fn(*args)`` in the worker thread.

        With ``watchdog``, a call still running after that many seconds is
        stopped: the connection is shut down under it (``MailboxStalled``).  Read
        timeouts catch a silent server in every call; the watchdog also catches
        what they cannot, such as a read left without its timeout.
        """
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, fn, *args)
        if watchdog is None:
            return await running
        done, _ = await asyncio.wait({running}, timeout=watchdog)
        if done:
            return running.result()
        self.mailbox.abort()
        await asyncio.wait({running}, timeout=WATCHDOG_GRACE_SECONDS)
        if running.done():
            running.exception()  # it failed once its socket was gone: that was the point
        else:  # blocked on something else: leave it behind, go on in a new thread
            self._executor.shutdown(wait=False)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap")
            self.mailbox.client = None
        raise MailboxStalled(f"{getattr(fn, '__name__', 'call')} outlived {watchdog:g} s")

    def shutdown(self) -> None:
        self._executor.submit(self.mailbox.close)
        self._executor.shutdown(wait=True)

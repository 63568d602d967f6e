"""Latency: the daemon running (``sarbot run``, IMAP IDLE), K requesters one after another.

For each requester: from the moment the server accepted the request (SMTP 250) until the
acknowledgement is in the requester's INBOX (polled every 10 ms: Dovecot's IDLE would add its
own 0.5 s to the measurement); then the reply to it, and the time until the export is there.
p50 and p99 of each. Full size: K = 30; smoke: 2.

The baseline is the mail stack's own round trip, measured the same way, with no sarbot: a
mail to the support mailbox, seen there through IDLE (as sarbot waits), FETCHed, and answered
with a mail of the acknowledgement's (export's) size on an open SMTP connection. Its floor is
Dovecot's: IDLE announces new mail 0.5 s after it arrived.

Then the same again with sarbot told to check the mailbox instead (``use_idle = false``,
``check_interval = 0.1``: a NOOP every 0.1 s, a cycle once one reports new mail or the poll
is over; docs/performance.md), beside the bare round trip that polls the support mailbox as
often.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
from imapclient import IMAPClient

from bench._site import Site, confirmation, ensure_stack, filler, smtp
from bench.common import Row, Scale, percentile
from sarbot.testing import MailServer

SIZES = {"full": 30, "smoke": 2}
QUIET_SECONDS = {"full": 30.0, "smoke": 1.0}
ROOT = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.01
ACK_SUBJECT = "Please confirm your data request"
EXPORT_SUBJECT = "A copy of your personal data"
EXPORT_GOALS = ("sarbot <= 0.5 s", "sarbot <= 2 s")
FAST_POLL = 0.1
"""How often the second run checks the mailbox for new mail, instead of IDLE (seconds)."""


class Watch:
    """One mailbox's INBOX: when did the next message arrive?

    ``idle``: through IMAP IDLE, as sarbot waits for mail (Dovecot announces new mail
    0.5 s after it arrived: ``NOTIFY_DELAY_MSECS`` in its mailbox-watch.c). Otherwise by
    polling every ``POLL_SECONDS`` (NOOP and SEARCH), which sees a message within that.
    """

    def __init__(
        self, site: Site, user: str, *, idle: bool = False, every: float = POLL_SECONDS
    ) -> None:
        self.client: IMAPClient = site.imap(user)
        self.client.select_folder("INBOX")
        self.uids: set[int] = set(self.client.search(["ALL"]))
        self.idle = idle
        self.every = every

    def arm(self) -> None:
        """Start waiting (before the mail that will cause the next one is sent)."""
        if self.idle:
            self.client.idle()

    def wait(self, match: Callable[[EmailMessage], bool]) -> tuple[float, EmailMessage]:
        """The moment (perf_counter) a matching new message was seen, and the message."""
        deadline = time.perf_counter() + WAIT_SECONDS
        while time.perf_counter() < deadline:
            if self.idle:
                responses = self.client.idle_check(timeout=0.5)
                if not any(_is_exists(r) for r in responses):
                    continue
                seen = time.perf_counter()
                self.client.idle_done()
            else:
                self.client.noop()
                seen = time.perf_counter()
            found = self._new(match)
            if found is not None:
                return seen, found
            if self.idle:
                self.client.idle()
            else:
                time.sleep(self.every)
        if self.idle:
            self.client.idle_done()
        raise TimeoutError(f"nothing arrived within {WAIT_SECONDS:g} s")

    def _new(self, match: Callable[[EmailMessage], bool]) -> EmailMessage | None:
        uids = sorted(set(self.client.search(["ALL"])) - self.uids)
        self.uids.update(uids)
        fetched = self.client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        for uid in uids:
            message = message_from_bytes(fetched[uid][b"BODY[]"], policy=policy.default)
            assert isinstance(message, EmailMessage)
            if match(message):
                return message
        return None

    def close(self) -> None:
        with suppress(Exception):  # logging out closes the connection, or it is gone anyway
            self.client.logout()


def _is_exists(response: object) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] == b"EXISTS"


def subject(text: str) -> Callable[[EmailMessage], bool]:
    return lambda message: text.lower() in str(message.get("Subject", "")).lower()


async def submit(smtp: aiosmtplib.SMTP, sender: str, recipient: str, raw: bytes) -> float:
    """Hand a message to SMTP; the moment the server accepted it."""
    await smtp.sendmail(sender, [recipient], raw)
    return time.perf_counter()


async def connected(site: Site) -> aiosmtplib.SMTP:
    client = smtp(site.server)
    await client.connect()
    return client


class Daemon:
    """``sarbot run`` on the site, as a process, its JSON log in the site's folder."""

    def __init__(self, site: Site) -> None:
        self.log = site.root / "sarbot.log"
        # This checkout's sarbot, whichever the interpreter has installed.
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sarbot", "--config", str(site.config), "run"],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=site.root,
        )
        deadline = time.monotonic() + 60
        while not self._logged("mailbox.connected"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sarbot run did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1.0)  # its first cycle done, in IDLE

    def _logged(self, event: str) -> bool:
        for line in self.log.read_text().splitlines():
            try:
                if json.loads(line).get("event") == event:
                    return True
            except ValueError:
                continue
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _through_sarbot(site: Site) -> tuple[list[float], list[float], int, int]:
    """Each requester in turn: request -> acknowledgement, reply -> export (seconds)."""
    to_ack: list[float] = []
    to_export: list[float] = []
    ack_size = export_size = 0
    smtp = await connected(site)
    try:
        for person in site.requesters:
            watch = Watch(site, person)
            try:
                watch.arm()
                sent = await submit(smtp, person, site.support, site.request_mail(person))
                seen, ack = await asyncio.to_thread(watch.wait, subject(ACK_SUBJECT))
                to_ack.append(seen - sent)
                ack_raw = ack.as_bytes(policy=policy.SMTP)
                ack_size = len(ack_raw)
                watch.arm()
                reply = confirmation(ack_raw, person)
                sent = await submit(smtp, person, site.support, reply)
                seen, export = await asyncio.to_thread(watch.wait, subject(EXPORT_SUBJECT))
                to_export.append(seen - sent)
                export_size = len(export.as_bytes(policy=policy.SMTP))
            finally:
                watch.close()
    finally:
        smtp.close()
    return to_ack, to_export, ack_size, export_size


async def _bare(site: Site, count: int, size: int, *, poll: float | None = None) -> list[float]:
    """The stack's own round trip: to the support mailbox (IDLE, or polled every ``poll``
    seconds; FETCH), and back."""
    times: list[float] = []
    smtp = await connected(site)
    support = Watch(site, site.support, idle=poll is None, every=poll or POLL_SECONDS)
    try:
        for person in site.requesters[:count]:
            watch = Watch(site, person)
            try:
                watch.arm()
                support.arm()
                mail = site.request_mail(person)
                sent = await submit(smtp, person, site.support, mail)
                await asyncio.to_thread(support.wait, lambda _m: True)
                answer = filler(site.support, person, size)
                answer = answer.replace(b"Subject: baseline", b"Subject: " + make_msgid().encode())
                await smtp.sendmail(site.support, [person], answer)
                seen, _ = await asyncio.to_thread(watch.wait, lambda _m: True)
                times.append(seen - sent)
            finally:
                watch.close()
    finally:
        support.close()
        smtp.close()
    return times


def run(scale: Scale) -> list[Row]:
    count = SIZES[scale]
    server = ensure_stack()
    quiet = QUIET_SECONDS[scale]
    rows = _rows(server, count, quiet, poll=None)
    return rows + _rows(server, count, quiet, poll=FAST_POLL)


def _rows(server: MailServer, count: int, quiet: float, *, poll: float | None) -> list[Row]:
    """Both latencies with sarbot in IDLE (``poll`` None) or checking the mailbox every ``poll``
    seconds, and the processor time sarbot spends waiting for mail."""
    imap: dict[str, object] = {} if poll is None else {"use_idle": False, "check_interval": poll}
    with tempfile.TemporaryDirectory(prefix="sarbot-latency-") as folder:
        site = Site(Path(folder), server, count, imap=imap)
        daemon = Daemon(site)
        try:
            before = _cpu_seconds(daemon.process.pid)
            time.sleep(quiet)
            waiting = (_cpu_seconds(daemon.process.pid) - before) / quiet * 60
            to_ack, to_export, ack_size, export_size = asyncio.run(_through_sarbot(site))
        finally:
            daemon.stop()
        bare_ack = asyncio.run(_bare(site, count, ack_size, poll=poll))
        bare_export = asyncio.run(_bare(site, count, export_size, poll=poll))
    how = "IDLE" if poll is None else f"polled every {poll:g} s"
    rows = []
    for work, values, bare, goals in (
        ("request -> acknowledgement in the inbox", to_ack, bare_ack, ("sarbot <= 0.3 s", "")),
        ("confirmation -> export in the inbox", to_export, bare_export, EXPORT_GOALS),
    ):
        for share, goal in zip((0.5, 0.99), goals, strict=True):
            rows.append(
                Row(
                    f"{work}, p{round(share * 100)} of {count}, support mailbox {how}",
                    percentile(values, share),
                    percentile(bare, share),
                    goal=goal,
                    note=f"baseline: the bare stack's round trip ({how}, FETCH, a mail of the "
                    "same size back)",
                )
            )
    rows.append(
        Row(
            f"processor time sarbot spends waiting for mail, support mailbox {how}",
            waiting,
            unit="s a minute",
            note=f"user and system time of the sarbot process over {quiet:g} s without mail",
        )
    )
    return rows


def _cpu_seconds(pid: int) -> float:
    """A process's user and system time so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

"""The long-running process: cycles of the pipeline, waiting on the mailbox between them.

``run(once=True)`` works until nothing is actionable right now, then returns.
Otherwise it runs until SIGTERM or SIGINT: intake stops, the work in flight
finishes, and it returns.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import traceback

from sqlalchemy.exc import OperationalError
from structlog.typing import FilteringBoundLogger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from sarbot.config import ImapSettings
from sarbot.mail.mailbox import MAILBOX_ERRORS, MailboxThread
from sarbot.mail.oauth import OAuthError
from sarbot.ops.health import StatusServer
from sarbot.pipeline import Pipeline
from sarbot.store.instances import FOLLOW_INTERVAL

CONNECT_ATTEMPTS = 3
GIVE_UP_MAILBOX_AFTER = 3
"""Failed cycles in a row after which an instance reading the mailbox lets another try it."""
MAX_BACKOFF = 60.0
MAX_LOGIN_BACKOFF = 300.0
"""The longest pause between tries while the mailbox's login by token fails."""
WATCHDOG_SLACK = 5.0


class Daemon:
    def __init__(
        self,
        pipeline: Pipeline,
        mailbox: MailboxThread,
        log: FilteringBoundLogger,
        *,
        status: StatusServer | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.status = status
        self.mailbox = mailbox
        self.log = log
        self.stop = threading.Event()
        self._failures = 0

    def request_stop(self) -> None:
        if not self.stop.is_set():
            self.log.info("daemon.stopping")
        self.stop.set()

    async def run(self, *, once: bool = False) -> bool:
        """Run the pipeline; True if it ended cleanly."""
        instances = self.pipeline.instances
        instances.start()  # a second instance on SQLite stops here (ConfigError)
        try:
            return await self._run(once)
        finally:
            instances.stop()

    async def _run(self, once: bool) -> bool:
        if self.status is not None:
            self.status.start()  # an address in use fails here (ConfigError), before anything else
            self.log.info("status.listening", host=self.status.host, port=self.status.port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self.log.info("daemon.started", once=once, instance=self.pipeline.instances.name)
        self.pipeline.sweep()
        clean = True
        try:
            while not self.stop.is_set():
                progressed, healthy = await self._cycle()
                if once:
                    if not healthy:
                        clean = False
                        break
                    if not progressed:
                        break
                    continue
                if not healthy:
                    await self._backoff()
                elif not progressed:
                    await self._wait()
            if self.stop.is_set():
                await self._cycle(intake=False)  # finish what is already in hand
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await asyncio.to_thread(self.mailbox.shutdown)
            for configured in self.pipeline.connectors:
                configured.connector.close()
            if self.status is not None:
                await asyncio.to_thread(self.status.stop)
            self.log.info("daemon.stopped")
        return clean

    async def _cycle(self, *, intake: bool = True) -> tuple[bool, bool]:
        """One pipeline cycle; returns (progressed, healthy).  Never raises on I/O trouble."""
        try:
            reader = self.pipeline.instances.reads_mailbox()
            self.metrics.mailbox_reader(reader, self.pipeline.clock())
            if intake and reader:
                await self._connect()
            elif self.mailbox.mailbox.connected:  # another instance reads the mailbox now
                await self.mailbox.call(self.mailbox.mailbox.close)
            progressed = await self.pipeline.cycle(intake=intake, reader=reader)
        except MAILBOX_ERRORS as exc:
            self._failures += 1
            self.metrics.mailbox_error(self.pipeline.clock())
            self.log.warning(
                "mailbox.error", error_type=type(exc).__name__, failures=self._failures
            )
            await self.mailbox.call(self.mailbox.mailbox.close)
            if self._failures >= GIVE_UP_MAILBOX_AFTER:  # another instance may reach it
                self.pipeline.instances.give_up_mailbox(f"mailbox failed {self._failures} times")
            if isinstance(exc, OAuthError):
                self.pipeline.logins.failed("imap", exc, at=self.pipeline.clock())
                await self._without_mailbox()
            return False, False
        except OperationalError as exc:
            self._failures += 1
            self.log.warning(
                "db.unavailable", error_type=type(exc.orig).__name__, failures=self._failures
            )
            return False, False
        except Exception as exc:  # a bug must not stop the daemon; its message may hold data
            self._failures += 1
            self.log.error("daemon.error", error_type=type(exc).__name__, at=_origin(exc))
            return False, False
        self._failures = 0
        return progressed, True

    async def _connect(self) -> None:
        box = self.mailbox.mailbox
        if box.connected:
            return
        retrying = AsyncRetrying(
            stop=stop_after_attempt(CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=10),
            # a login by token that failed has already asked the provider, and asked again
            # if the server refused the token: the cycle's backoff paces the next try
            retry=retry_if_exception_type(MAILBOX_ERRORS) & retry_if_not_exception_type(OAuthError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.mailbox.call(box.connect)
        self.pipeline.logins.worked("imap", at=self.pipeline.clock())
        self.metrics.mailbox_connected(self.pipeline.clock())
        self.log.info(
            "mailbox.connected",
            folder=self.pipeline.settings.imap.folder,
            idle=b"IDLE" in box.capabilities,
            uidvalidity=box.uidvalidity,
        )

    async def _without_mailbox(self) -> None:
        """The mailbox login fails: still tell the operators, and send what is due."""
        try:
            self.pipeline.notify()
            await self.pipeline.deliver()
        except Exception as exc:  # the daemon backs off and tries again either way
            self.log.warning("daemon.error", error_type=type(exc).__name__, at=_origin(exc))

    async def _backoff(self) -> None:
        delay = min(MAX_BACKOFF, 2.0 ** min(self._failures, 6))
        if any(t.login == "imap" for t in self.pipeline.logins.troubles()):
            # a revoked grant or a missing permission waits for a person: ask the provider
            # less often (a grant stored meanwhile is taken up at the next try)
            delay = min(MAX_LOGIN_BACKOFF, 30.0 * 2.0 ** min(self._failures - 1, 4))
        self.log.info("daemon.backoff", seconds=delay)
        await asyncio.to_thread(self.stop.wait, delay)

    async def _wait(self) -> None:
        """Wait for mail in the mailbox; or, if another instance reads it, until it announces
        work, for a while at most."""
        if self.mailbox.mailbox.connected:
            await self._wait_for_mail()
        else:
            await asyncio.to_thread(
                self.pipeline.instances.wait_for_work, FOLLOW_INTERVAL, self.stop
            )

    async def _wait_for_mail(self) -> None:
        box, imap = self.mailbox.mailbox, self.pipeline.settings.imap
        try:
            await self.mailbox.call(
                box.wait_for_mail, imap.poll_interval, self.stop, watchdog=idle_watchdog(imap)
            )
        except MAILBOX_ERRORS as exc:
            self.metrics.mailbox_error(self.pipeline.clock())
            self.log.warning("mailbox.error", error_type=type(exc).__name__, during="wait")
            await self.mailbox.call(box.close)


def idle_watchdog(imap: ImapSettings) -> float:
    """How long one wait for mail may take: the poll interval, then DONE's answer, and slack.

    The IDLE itself is ended and issued again every poll interval (at most 25
    minutes, under the 29 that RFC 2177 allows), so a wait that outlives this
    is stuck: the connection is shut down and sarbot reconnects.
    """
    return imap.poll_interval + 2 * imap.timeout + WATCHDOG_SLACK


def _origin(exc: BaseException) -> str:
    """The innermost frame of sarbot's own code an exception passed, without its message."""
    found = "?"
    for frame, line in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in {"sarbot", "connectors"}:
            found = f"{module}:{line}"
    return found

"""Sending mail over SMTP, with retries for what may succeed later.

Inside ``async with mailer.batch():`` the messages share one SMTP session: it is opened and
logged in at the first message, used for up to ``MESSAGES_PER_SESSION`` of them, and
closed with QUIT at the end of the block. A session that fails in any way is dropped, and
the message's next attempt (and the next message) opens a new one. Outside a batch each
message has a session of its own.

With ``auth = "oauth2"`` the session logs in with XOAUTH2 or OAUTHBEARER and an access token
from ``sarbot.mail.oauth``; a token the server refuses is replaced once, and a login that
still fails is an SmtpLoginError: the message waits, it is not refused.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from sarbot.config import SmtpSettings
from sarbot.errors import PermanentMailError, TransientMailError
from sarbot.mail.oauth import (
    OAuthError,
    TokenSource,
    oauthbearer_string,
    refused_by_server,
    token_source,
)

MESSAGES_PER_SESSION = 100
"""Messages sent on one SMTP session before it is closed and another opened: some servers
limit a session's messages, and a long-lived session is where such limits bite."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context, trusting ``ca_file`` when given."""
    return ssl.create_default_context(cafile=ca_file)


class SmtpLoginError(TransientMailError):
    """The SMTP login by token failed: nothing is wrong with the message, which waits.

    ``oauth`` is the OAuthError, whose ``cause`` names the kind of failure.
    """

    def __init__(self, error: OAuthError) -> None:
        super().__init__(str(error))
        self.oauth = error


class Mailer:
    """Hands messages to the configured SMTP server."""

    def __init__(self, settings: SmtpSettings, *, retry_wait: float = 1.0) -> None:
        self.settings = settings
        self.retry_wait = retry_wait
        self._tls = tls_context(str(settings.ca_file) if settings.ca_file else None)
        self._tokens: TokenSource | None = None
        if settings.auth == "oauth2" and settings.oauth2 is not None and settings.username:
            self._tokens = token_source(settings.oauth2, settings.username)
        self._batching = False
        self._shared: aiosmtplib.SMTP | None = None
        self._shared_sent = 0
        self.sessions = 0
        """How many SMTP sessions were opened (logged in): for the tests and the benchmarks."""

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Send the messages of this block on one SMTP session (not re-entrant; one caller
        at a time, as the deliver step sends)."""
        if self._batching:
            yield
            return
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            await self._close_shared(quit_first=True)

    async def send(self, raw: bytes, *, sender: str, recipient: str) -> None:
        """Send one message; raise TransientMailError or PermanentMailError on failure.

        A failed login by token (SmtpLoginError) is not retried here: every message would
        fail the same way, so the caller puts them all off.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait_exponential(multiplier=self.retry_wait, max=30),
            retry=retry_if_exception_type(TransientMailError)
            & retry_if_not_exception_type(SmtpLoginError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._session((raw, sender, recipient))

    async def check_login(self) -> None:
        """Connect and log in as sending does, then quit: for ``sarbot config check``."""
        await self._session(None)

    async def _session(self, mail: tuple[bytes, str, str] | None) -> None:
        """Send ``mail`` (raw, sender, recipient) on the batch's session, or on one of its
        own; with no mail, connect and log in only."""
        shared = self._batching and mail is not None
        try:
            client = await self._shared_client() if shared else await self._open()
            try:
                if mail is not None:
                    raw, sender, recipient = mail
                    await client.sendmail(sender, [recipient], raw)
            except BaseException:
                client.close()  # in an unknown state: never used again
                if shared:
                    self._shared = None
                raise
            if not shared:
                with suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
                client.close()
            else:
                self._shared_sent += 1
                if self._shared_sent >= MESSAGES_PER_SESSION:
                    await self._close_shared(quit_first=True)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [err.code for err in exc.recipients]
            raise _by_code(min(codes, default=554), "recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _by_code(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientMailError(f"{type(exc).__name__}: {exc}") from None
        except OAuthError as exc:
            raise SmtpLoginError(exc) from None

    async def _shared_client(self) -> aiosmtplib.SMTP:
        if self._shared is None or not self._shared.is_connected:
            self._shared, self._shared_sent = await self._open(), 0
        return self._shared

    async def _close_shared(self, *, quit_first: bool) -> None:
        client, self._shared = self._shared, None
        if client is None:
            return
        if quit_first and client.is_connected:
            with suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
        client.close()

    async def _open(self) -> aiosmtplib.SMTP:
        """A new session, connected and logged in; closed again if the login fails."""
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=self._tls if s.security != "none" else None,
            timeout=s.timeout,
        )
        await client.connect()
        try:
            if self._tokens is not None:
                await self._authenticate(client, self._tokens)
            elif s.username and s.password is not None:
                await client.login(s.username, s.password.get_secret_value())
        except BaseException:
            client.close()
            raise
        self.sessions += 1
        return client

    async def _authenticate(self, client: aiosmtplib.SMTP, tokens: TokenSource) -> None:
        """AUTH with the source's token; if the server refuses it, once more with a new one."""
        username = self.settings.username or ""
        for attempt in (1, 2):
            token = await asyncio.to_thread(tokens.token)
            try:
                if tokens.mechanism == "oauthbearer":
                    await _auth_oauthbearer(client, username, token)
                else:
                    await client.auth_xoauth2(username, token)
            except aiosmtplib.SMTPAuthenticationError as exc:
                if exc.code < 500:  # 454 and the like: the server's trouble, tried again later
                    raise
                tokens.invalidate()
                if attempt == 2:
                    raise refused_by_server(username) from None
            else:
                return


async def _auth_oauthbearer(client: aiosmtplib.SMTP, username: str, token: str) -> None:
    """SASL OAUTHBEARER (RFC 7628), which aiosmtplib does not offer itself."""
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    encoded = base64.b64encode(oauthbearer_string(username, token).encode()).decode()
    response = await client.execute_command(b"AUTH", b"OAUTHBEARER", encoded.encode())
    if response.code == 334:  # an error challenge: an empty line gets the final answer
        response = await client.execute_command(b"")
    if response.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


def _by_code(code: int, message: str) -> TransientMailError | PermanentMailError:
    text = f"{code} {message}".strip()
    if 500 <= code < 600:
        return PermanentMailError(text, code)
    return TransientMailError(text, code)

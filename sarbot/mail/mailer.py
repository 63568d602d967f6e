"""Sending mail over SMTP, with retries for what may succeed later.

With ``auth = "oauth2"`` the session logs in with XOAUTH2 or OAUTHBEARER and an access token
from ``sarbot.mail.oauth``; a token the server refuses is replaced once, and a login that
still fails is an SmtpLoginError: the message waits, it is not refused.
"""

from __future__ import annotations

import asyncio
import base64
import ssl

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
        """One SMTP session: connect, log in, and send ``mail`` (raw, sender, recipient)."""
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=self._tls if s.security != "none" else None,
            timeout=s.timeout,
        )
        try:
            async with client:
                if self._tokens is not None:
                    await self._authenticate(client, self._tokens)
                elif s.username and s.password is not None:
                    await client.login(s.username, s.password.get_secret_value())
                if mail is not None:
                    raw, sender, recipient = mail
                    await client.sendmail(sender, [recipient], raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [err.code for err in exc.recipients]
            raise _by_code(min(codes, default=554), "recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _by_code(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientMailError(f"{type(exc).__name__}: {exc}") from None
        except OAuthError as exc:
            raise SmtpLoginError(exc) from None

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

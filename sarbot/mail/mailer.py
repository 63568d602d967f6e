"""Sending mail over SMTP, with retries for what may succeed later."""

from __future__ import annotations

import ssl

import aiosmtplib
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from sarbot.config import SmtpSettings
from sarbot.errors import PermanentMailError, TransientMailError


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context, trusting ``ca_file`` when given."""
    return ssl.create_default_context(cafile=ca_file)


class Mailer:
    """Hands messages to the configured SMTP server."""

    def __init__(self, settings: SmtpSettings, *, retry_wait: float = 1.0) -> None:
        self.settings = settings
        self.retry_wait = retry_wait
        self._tls = tls_context(str(settings.ca_file) if settings.ca_file else None)

    async def send(self, raw: bytes, *, sender: str, recipient: str) -> None:
        """Send one message; raise TransientMailError or PermanentMailError on failure."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait_exponential(multiplier=self.retry_wait, max=30),
            retry=retry_if_exception_type(TransientMailError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._send_once(raw, sender=sender, recipient=recipient)

    async def _send_once(self, raw: bytes, *, sender: str, recipient: str) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                raw,
                sender=sender,
                recipients=[recipient],
                hostname=s.host,
                port=s.port,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                tls_context=self._tls if s.security != "none" else None,
                username=s.username,
                password=s.password.get_secret_value() if s.password else None,
                timeout=s.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [err.code for err in exc.recipients]
            raise _by_code(min(codes, default=554), "recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _by_code(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientMailError(f"{type(exc).__name__}: {exc}") from None


def _by_code(code: int, message: str) -> TransientMailError | PermanentMailError:
    text = f"{code} {message}".strip()
    if 500 <= code < 600:
        return PermanentMailError(text, code)
    return TransientMailError(text, code)

"""The errors sarbot raises on purpose, each with one meaning."""


class SarbotError(Exception):
    """Base class for every error sarbot raises on purpose."""


class ConfigError(SarbotError):
    """The configuration file is missing, unreadable or invalid."""


class ConnectorError(SarbotError):
    """A connector could not be built or could not answer a lookup."""


class MailSendError(SarbotError):
    """Sending a message failed; ``code`` is the SMTP reply code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientMailError(MailSendError):
    """Sending failed in a way that may succeed later (4xx, connection lost)."""


class PermanentMailError(MailSendError):
    """The mail server refused the message for good (5xx)."""


class MailboxError(SarbotError):
    """The IMAP mailbox could not be reached or did not behave."""

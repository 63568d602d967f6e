"""Logging in to an IMAP account: the one way sarbot does it, for its mailbox and connectors.

TLS is required unless the settings allow plaintext (``ImapLogin`` refuses
``security = "none"`` otherwise); a STARTTLS upgrade happens before the
password is sent; a connection that fails to log in is closed again.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from imapclient import IMAPClient

from sarbot.config import ImapLogin


def connect(login: ImapLogin) -> IMAPClient:
    """A logged-in IMAP session; the caller logs out and shuts it down."""
    context = ssl.create_default_context(cafile=str(login.ca_file) if login.ca_file else None)
    client = IMAPClient(
        login.host,
        port=login.port,
        ssl=login.security == "tls",
        ssl_context=context,
        timeout=login.timeout,
    )
    try:
        if login.security == "starttls":
            client.starttls(context)
        password = login.password.get_secret_value() if login.password else ""
        client.login(login.username, password)
    except BaseException:
        with suppress(Exception):
            client.shutdown()
        raise
    return client


@contextmanager
def imap_session(login: ImapLogin) -> Iterator[IMAPClient]:
    """A logged-in IMAP session for the length of a ``with`` block."""
    client = connect(login)
    try:
        yield client
    finally:
        with suppress(Exception):
            client.logout()
        with suppress(Exception):
            client.shutdown()

"""Logging in to an IMAP account: the one way sarbot does it, for its mailbox and connectors.

TLS is required unless the settings allow plaintext (``ImapLogin`` refuses
``security = "none"`` otherwise); a STARTTLS upgrade happens before the
password is sent; a connection that fails to log in is closed again.  With
``auth = "oauth2"`` the login is XOAUTH2 or OAUTHBEARER with an access token
(``sarbot.mail.oauth``); a token the server refuses is replaced once.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from sarbot.config import ImapLogin
from sarbot.mail.oauth import TokenSource, refused_by_server, token_source


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
        if login.auth == "oauth2" and login.oauth2 is not None:
            oauth_login(client, login.username, token_source(login.oauth2, login.username))
        else:
            password = login.password.get_secret_value() if login.password else ""
            client.login(login.username, password)
    except BaseException:
        with suppress(Exception):
            client.shutdown()
        raise
    return client


def oauth_login(client: IMAPClient, username: str, tokens: TokenSource) -> None:
    """Log in with the source's token; if the server refuses it, once more with a new one."""
    for attempt in (1, 2):
        token = tokens.token()
        try:
            if tokens.mechanism == "oauthbearer":
                client.oauthbearer_login(username, token)
            else:
                client.oauth2_login(username, token)
        except LoginError as exc:
            if _connection_lost(exc):  # not a refusal: the session's trouble, tried again later
                raise
            tokens.invalidate()
            if attempt == 2:
                raise refused_by_server(username) from None
        else:
            return


def _connection_lost(error: LoginError) -> bool:
    """imapclient reports a connection lost during AUTHENTICATE as a LoginError too; imaplib's
    words for it are "socket error" and "EOF"."""
    text = str(error)
    return "socket error" in text or "EOF" in text


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

"""``sarbot auth``: OAuth 2.0 logins to the mailbox (IMAP) and the mail server (SMTP)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import click

from sarbot.cli.common import app_from
from sarbot.config import Settings
from sarbot.errors import MailSendError
from sarbot.mail.imap import imap_session
from sarbot.mail.mailer import Mailer, SmtpLoginError
from sarbot.mail.oauth import OAuthError, token_source
from sarbot.mail.oauth.consent import login
from sarbot.oauth_settings import OAuth2Settings

LOGINS = ("imap", "smtp")


def oauth_settings(settings: Settings, which: str) -> OAuth2Settings | None:
    """The ``oauth2`` table of ``[imap]`` or ``[smtp]``, if that login is by token."""
    section = settings.imap if which == "imap" else settings.smtp
    return section.oauth2 if section.auth == "oauth2" else None


@dataclass(frozen=True)
class LoginCheck:
    login: str
    problem: str | None
    """What is wrong, in an admin's words; None if the login works."""


def check_logins(settings: Settings) -> list[LoginCheck]:
    """Get a token and log in, for each login by token; what is wrong with each."""
    checks = []
    for which in LOGINS:
        oauth2 = oauth_settings(settings, which)
        if oauth2 is None:
            continue
        checks.append(LoginCheck(which, _try_login(settings, which, oauth2)))
    return checks


def _try_login(settings: Settings, which: str, oauth2: OAuth2Settings) -> str | None:
    username = settings.imap.username if which == "imap" else settings.smtp.username or ""
    token_source(oauth2, username).invalidate()  # a fresh token: no kept one hides trouble
    try:
        if which == "imap":
            with imap_session(settings.imap):
                pass
        else:
            asyncio.run(Mailer(settings.smtp).check_login())
    except OAuthError as exc:
        return str(exc)
    except SmtpLoginError as exc:
        return str(exc.oauth)
    except MailSendError as exc:
        return f"the SMTP server refused the session: {exc}"
    except Exception as exc:  # a server's refusal or an unreachable host: said, not raised
        return f"logging in to {which.upper()} failed: {type(exc).__name__}: {exc}"
    return None


@click.group("auth")
def auth_group() -> None:
    """OAuth 2.0 logins to the mailbox and the mail server."""


@auth_group.command("login")
@click.argument("which", type=click.Choice(LOGINS), default="imap")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Google only: the 127.0.0.1 port the browser returns to (0: any free port).",
)
@click.pass_context
def auth_login(ctx: click.Context, which: str, port: int) -> None:
    """Sign in once as the mailbox and store the refresh token where the config points.

    WHICH is the login whose [imap.oauth2] or [smtp.oauth2] table to use. Microsoft and
    generic providers use the device flow (open a URL anywhere, enter a code); Google uses
    a browser sent back to 127.0.0.1. The token file is written with mode 0600; the token
    is never shown. A running sarbot takes the new grant up at its next login.
    """
    app = app_from(ctx)
    oauth2 = oauth_settings(app.settings, which)
    if oauth2 is None:
        raise click.ClickException(f'[{which}] does not log in with auth = "oauth2"')
    try:
        where = login(oauth2, say=lambda text: click.echo(text, err=True), port=port)
    except OAuthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"signed in: the refresh token is stored in the {where} (mode 0600)")
    problem = _try_login(app.settings, which, oauth2)
    if problem is not None:
        raise click.ClickException(f"but logging in with it failed: {problem}")
    click.echo(f"{which.upper()} login by token works")

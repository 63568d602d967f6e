"""OAuth 2.0 logins to IMAP and SMTP: the settings, the token sources, and whole requests.

Tokens come from the mail stack's identity provider (sarbot/testing/idp) through msal,
google-auth and authlib, as in production; Dovecot checks them. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sarbot.app import App
from sarbot.config import ImapLogin, Settings, SmtpSettings, validate
from sarbot.errors import ConfigError
from sarbot.mail.imap import imap_session
from sarbot.mail.oauth import OAuthError, TokenSource, build_token_source, token_source
from sarbot.store.states import RequestState
from sarbot.testing import Correspondent, MailServer, stack, subject_contains
from sarbot.testing.idp import IdpClient
from tests.conftest import CA_FILE, STACK_DIR, Bot, base_config, unique
from tests.oauthkit import (
    MAIL_SCOPE,
    OUTLOOK_DEFAULT,
    cert_pem,
    certificate,
    generic_table,
    new_client,
    oauth_settings,
    oauthbearer,
    private_pem,
    public_pem,
    refused,
    rsa_key,
    write_secret,
    xoauth2,
)

# ---------------------------------------------------------------- settings


def imap_login(tmp_path: Path, **values: Any) -> ImapLogin:
    data = {"host": "imap.example.net", "username": "support@redtrain.test", **values}
    return validate(data, ImapLogin, source="test", base_dir=tmp_path)


def config_error(tmp_path: Path, **values: Any) -> str:
    with pytest.raises(ConfigError) as failure:
        imap_login(tmp_path, **values)
    return str(failure.value)


@pytest.fixture
def secret(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secret").write_text("s3cret\n")
    return {"file": "secret"}


MICROSOFT = {"provider": "microsoft", "client_id": "app", "tenant": "contoso.example"}


class TestSettings:
    def test_password_login_is_the_default_and_needs_a_password(
        self, tmp_path: Path, secret: dict[str, str]
    ) -> None:
        login = imap_login(tmp_path, password=secret)
        assert login.auth == "password" and login.oauth2 is None
        assert "password is required" in config_error(tmp_path)
        assert 'needs auth = "oauth2"' in config_error(
            tmp_path, password=secret, oauth2={**MICROSOFT, "client_secret": secret}
        )

    def test_oauth2_needs_its_table_and_no_password(
        self, tmp_path: Path, secret: dict[str, str]
    ) -> None:
        assert "needs an oauth2 table" in config_error(tmp_path, auth="oauth2")
        oauth2 = {**MICROSOFT, "client_secret": secret}
        assert "password is not used" in config_error(
            tmp_path, auth="oauth2", password=secret, oauth2=oauth2
        )
        login = imap_login(tmp_path, auth="oauth2", oauth2=oauth2)
        assert login.oauth2 is not None
        assert login.oauth2.effective_scopes == ("https://outlook.office365.com/.default",)
        assert login.oauth2.mechanism == "xoauth2"
        assert (
            login.oauth2.microsoft_authority == "https://login.microsoftonline.com/contoso.example"
        )
        assert "s3cret" not in repr(login)

    def test_each_provider_names_what_it_lacks(
        self, tmp_path: Path, secret: dict[str, str]
    ) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"provider": "microsoft", "client_id": "app", "client_secret": secret}, "tenant"),
            (MICROSOFT, "needs client_secret, or certificate"),
            ({**MICROSOFT, "certificate": secret}, "certificate and certificate_key go together"),
            ({**MICROSOFT, "client_secret": secret, "authority": "https://login.example"},
             "not both"),
            ({**MICROSOFT, "client_secret": secret, "token_url": "https://x"},
             "token_url is not used"),
            ({"provider": "microsoft", "client_id": "app", "authority": "http://insecure",
              "client_secret": secret}, "authority"),
            ({"provider": "google", "client_id": "app", "client_secret": secret},
             "refresh_token"),
            ({"provider": "google", "service_account_file": "sa.json"}, "needs subject"),
            ({"provider": "google", "service_account_file": "sa.json", "subject": "a@b.test",
              "refresh_token": secret}, "refresh_token is not used"),
            ({"provider": "generic", "client_id": "app", "client_secret": secret}, "token_url"),
            ({"provider": "generic", "client_id": "app", "token_url": "https://x/token"},
             "refresh_token"),
            ({"provider": "generic", "client_id": "app", "token_url": "https://x/token",
              "client_secret": "inline"}, "secrets are not written inline"),
            ({"provider": "other"}, "provider"),
        ]  # fmt: skip
        for oauth2, expected in cases:
            message = config_error(tmp_path, auth="oauth2", oauth2=oauth2)
            assert expected in message, (oauth2, message)
        google = {"provider": "google", "service_account_file": "sa.json", "subject": "a@b.test"}
        login = imap_login(tmp_path, auth="oauth2", oauth2=google)
        assert login.oauth2 is not None
        assert login.oauth2.service_account_file == tmp_path / "sa.json"
        assert login.oauth2.effective_scopes == ("https://mail.google.com/",)

    def test_smtp_with_oauth2_needs_a_username(
        self, tmp_path: Path, secret: dict[str, str]
    ) -> None:
        oauth2 = {**MICROSOFT, "client_secret": secret, "mechanism": "oauthbearer"}
        base = {"host": "smtp.example.net", "auth": "oauth2", "oauth2": oauth2}
        with pytest.raises(ConfigError, match="needs username"):
            validate(base, SmtpSettings, source="test", base_dir=tmp_path)
        smtp = validate(
            {**base, "username": "support@redtrain.test"},
            SmtpSettings,
            source="test",
            base_dir=tmp_path,
        )
        assert smtp.oauth2 is not None and smtp.oauth2.mechanism == "oauthbearer"
        plain = validate({"host": "smtp.example.net"}, SmtpSettings, source="t", base_dir=tmp_path)
        assert plain.auth == "password" and plain.password is None


# ---------------------------------------------------------------- token sources


def source(tmp_path: Path, **values: Any) -> TokenSource:
    return build_token_source(oauth_settings(tmp_path, **values))


class TestTokenSources:
    def test_microsoft_client_secret_through_a_custom_authority(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        client_id = new_client(idp, [mailbox], secret="s3cret", scopes=[OUTLOOK_DEFAULT])
        tokens = source(
            tmp_path,
            provider="microsoft",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            authority=f"{idp.base_url}/tenant",
        )
        first = tokens.token()
        assert tokens.token() == first  # cached
        xoauth2(mailstack, mailbox, first)
        tokens.invalidate()
        second = tokens.token()
        assert second != first
        oauthbearer(mailstack, mailbox, second)

    def test_microsoft_certificate(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        key = rsa_key()
        cert = certificate(key)
        client_id = new_client(idp, [mailbox], keys=[cert_pem(cert)], scopes=[OUTLOOK_DEFAULT])
        tokens = source(
            tmp_path,
            provider="microsoft",
            client_id=client_id,
            certificate=write_secret(tmp_path, cert_pem(cert)),
            certificate_key=write_secret(tmp_path, private_pem(key)),
            authority=f"{idp.base_url}/tenant",
        )
        xoauth2(mailstack, mailbox, tokens.token())

    def test_google_user_refresh_token(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        client_id = new_client(idp, [mailbox], secret="g-secret", scopes=[MAIL_SCOPE])
        refresh = idp.mint_refresh_token(client_id, mailbox)
        tokens = source(
            tmp_path,
            provider="google",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "g-secret"),
            refresh_token=write_secret(tmp_path, refresh),
            token_url=idp.token_url,
        )
        token = tokens.token()
        xoauth2(mailstack, mailbox, token)
        idp.revoke(refresh_token=refresh)
        refused(xoauth2, mailstack, mailbox, token)
        tokens.invalidate()
        with pytest.raises(OAuthError, match="revoked or expired: run sarbot auth login") as e:
            tokens.token()
        assert refresh not in str(e.value) and token not in str(e.value)

    def test_google_service_account_with_subject(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        key = rsa_key()
        email = f"sarbot-{uuid.uuid4().hex[:8]}@project.iam.gserviceaccount.test"
        idp.register(email, keys=[public_pem(key)], users=["*@redtrain.test"], scopes=[MAIL_SCOPE])
        info = {
            "type": "service_account",
            "project_id": "sarbot-test",
            "private_key_id": "key-1",
            "private_key": private_pem(key),
            "client_email": email,
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
        (tmp_path / "sa.json").write_text(json.dumps(info))
        tokens = source(
            tmp_path,
            provider="google",
            service_account_file="sa.json",
            subject=mailbox,
            token_url=idp.token_url,
        )
        xoauth2(mailstack, mailbox, tokens.token())

    def test_generic_client_credentials_and_refresh_token(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret", rotate_refresh_tokens=True)
        credentials = source(
            tmp_path,
            provider="generic",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            token_url=idp.token_url,
        )
        xoauth2(mailstack, mailbox, credentials.token())
        refresh = idp.mint_refresh_token(client_id, mailbox)
        user = source(
            tmp_path,
            provider="generic",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            refresh_token=write_secret(tmp_path, refresh),
            token_url=f"http://127.0.0.1:{stack.port('idp')}/token",
            mechanism="oauthbearer",
        )
        oauthbearer(mailstack, mailbox, user.token())
        user.invalidate()  # the rotated refresh token is kept in memory and used
        xoauth2(mailstack, mailbox, user.token())

    def test_errors_name_the_cause(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret")
        wrong_secret = source(
            tmp_path,
            provider="generic",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "bad-7f3a9c"),
            token_url=idp.token_url,
        )
        with pytest.raises(OAuthError, match="invalid_client") as failure:
            wrong_secret.token()
        assert "bad-7f3a9c" not in str(failure.value)
        unreachable = source(
            tmp_path,
            provider="generic",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            token_url="https://127.0.0.1:9/token",
        )
        with pytest.raises(OAuthError, match="unreachable"):
            unreachable.token()
        unknown = source(
            tmp_path,
            provider="microsoft",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            authority="https://127.0.0.1:9/nowhere",
        )
        with pytest.raises(OAuthError, match=r"unreachable|unknown tenant"):
            unknown.token()


# ---------------------------------------------------------------- logins and whole requests


def test_connect_logs_in_with_a_token_and_replaces_a_refused_one(
    tmp_path: Path, mailstack: MailServer, idp: IdpClient
) -> None:
    """sarbot.mail.imap.connect: one token source per settings, a refused token replaced once."""
    mailbox = unique("support", "redtrain.test")
    client_id = new_client(idp, [mailbox], secret="s3cret")
    oauth2 = generic_table(tmp_path, idp, client_id, mechanism="oauthbearer")
    login = imap_login(
        tmp_path,
        host=mailstack.host,
        port=mailstack.imap_port,
        security="starttls",
        ca_file=str(CA_FILE),
        username=mailbox,
        auth="oauth2",
        oauth2=oauth2,
    )
    assert login.oauth2 is not None
    tokens = token_source(login.oauth2, mailbox)
    assert token_source(login.oauth2, mailbox) is tokens
    with imap_session(login) as client:
        client.select_folder("INBOX")
    first = tokens.token()
    assert idp.expire(client_id=client_id) == 1
    with imap_session(login) as client:  # refused, replaced, logged in
        client.select_folder("INBOX")
    assert tokens.token() != first


ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")


@pytest.fixture
def oauth_bot(tmp_path: Path, mailstack: MailServer, idp: IdpClient) -> Iterator[tuple[Bot, str]]:
    """A bot whose mailbox logs in with Microsoft client credentials (XOAUTH2) and whose mail
    goes out with a generic provider's refresh token (OAUTHBEARER); and the client's id."""
    support = unique("support", "redtrain.test")
    client_id = new_client(idp, [support], secret="s3cret", scopes=[OUTLOOK_DEFAULT])
    refresh = idp.mint_refresh_token(client_id, support)
    data = base_config(tmp_path, support)
    del data["imap"]["password"]
    data["imap"].update(
        auth="oauth2",
        oauth2={
            "provider": "microsoft",
            "client_id": client_id,
            "client_secret": write_secret(tmp_path, "s3cret"),
            "authority": f"{idp.base_url}/tenant",
            "ca_file": str(CA_FILE),
        },
    )
    data["smtp"].update(
        username=support,
        auth="oauth2",
        oauth2={
            "provider": "generic",
            "client_id": client_id,
            "client_secret": write_secret(tmp_path, "s3cret"),
            "refresh_token": write_secret(tmp_path, refresh),
            "token_url": idp.token_url,
            "ca_file": str(CA_FILE),
            "mechanism": "oauthbearer",
        },
    )
    settings = validate(data, Settings, source="test config", base_dir=tmp_path)
    app = App(tmp_path / "config.toml", settings)
    yield Bot(app), client_id
    app.engine.dispose()


def live_tokens(bot: Bot) -> list[str]:
    """The tokens the bot's IMAP and SMTP logins hold now."""
    imap, smtp = bot.app.settings.imap, bot.app.settings.smtp
    assert imap.oauth2 is not None and smtp.oauth2 is not None and smtp.username
    return [
        token_source(imap.oauth2, imap.username).token(),
        token_source(smtp.oauth2, smtp.username).token(),
    ]


def test_a_whole_request_over_oauth2_logins_survives_an_expired_token(
    tmp_path: Path,
    oauth_bot: tuple[Bot, str],
    idp: IdpClient,
    mailstack: MailServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Request, acknowledgement, confirmation and export, with every IMAP and SMTP login by
    token; the tokens expire early between the two runs and are replaced; no token is ever
    logged or stored."""
    bot, client_id = oauth_bot
    alice, support = Correspondent(mailstack, unique("alice", "example.test")), bot.support
    request_id = alice.send(bot.address, "GDPR DATA REQUEST", "Please send me my data.")
    support.wait_for(lambda m: m["Message-ID"] == request_id)
    tokens: list[str] = []
    with capture_logs() as events:
        bot.run_once()
        ack = alice.wait_for(ACK)
        assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        tokens += live_tokens(bot)

        assert idp.expire(client_id=client_id) >= 2  # the IMAP and the SMTP token
        alice.reply(ack)
        support.wait_for(subject_contains("Re: [SAR-"))
        bot.run_once()
        export = alice.wait_for(EXPORT)
        tokens += live_tokens(bot)
    assert export["In-Reply-To"] is not None
    assert bot.request().state is RequestState.DELIVERED
    assert len(set(tokens)) == 4, "each expired token was replaced"
    postfix = (STACK_DIR / "log" / "postfix.log").read_text()
    assert f"sasl_method=OAUTHBEARER, sasl_username={bot.address}" in postfix

    captured = capfd.readouterr()
    logged = json.dumps(events, default=str) + captured.out + captured.err
    stored = (tmp_path / "state.db").read_bytes()
    for token in tokens:
        assert token not in logged
        assert token.encode() not in stored


def test_a_refused_client_is_logged_in_words_an_admin_can_act_on(
    tmp_path: Path, mailstack: MailServer, idp: IdpClient
) -> None:
    support = unique("support", "redtrain.test")
    client_id = new_client(idp, [support], secret="s3cret")
    data = base_config(tmp_path, support)
    del data["imap"]["password"]
    wrong = {"file": str(tmp_path / "wrong")}
    (tmp_path / "wrong").write_text("bad-5e1d\n")
    data["imap"].update(
        auth="oauth2",
        oauth2={
            "provider": "generic",
            "client_id": client_id,
            "client_secret": wrong,
            "token_url": idp.token_url,
            "ca_file": str(CA_FILE),
        },
    )
    app = App(tmp_path / "config.toml", validate(data, Settings, source="t", base_dir=tmp_path))
    bot = Bot(app)
    try:
        with capture_logs() as events:
            assert not asyncio.run(app.daemon(clock=bot.now).run(once=True))
    finally:
        app.engine.dispose()
    [error] = [e for e in events if e["event"] == "mailbox.error"]
    assert error["error_type"] == "OAuthError"
    [failed] = [e for e in events if e["event"] == "mailbox.login_failed"]
    assert (failed["login"], failed["cause"]) == ("imap", "client")
    assert "invalid_client" in failed["reason"] and "bad-5e1d" not in failed["reason"]

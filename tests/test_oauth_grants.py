"""A user's OAuth 2.0 grant, kept and renewed: ``sarbot auth login``, rotated and newly stored
refresh tokens, and logins that fail in words an admin can act on, tell the operators, and
lose nothing.  Tokens come from the mail stack's identity provider; Dovecot checks them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from click.testing import CliRunner
from sqlalchemy import select
from structlog.testing import capture_logs

from sarbot.app import App
from sarbot.cli.main import cli
from sarbot.config import Settings, validate
from sarbot.mail.logins import LoginTrouble, LoginWatch
from sarbot.mail.oauth import OAuthError, build_token_source, describe
from sarbot.mail.oauth.consent import login
from sarbot.ops.health import HealthCheck
from sarbot.ops.metrics import Metrics
from sarbot.store.models import OutgoingMail
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing.config import write_config
from sarbot.testing.idp import IdpClient, IdpError
from tests.conftest import CA_FILE, Bot, base_config, unique
from tests.oauthkit import (
    MAIL_SCOPE,
    generic_table,
    new_client,
    oauth_settings,
    write_secret,
    xoauth2,
)
from tests.servers import free_port

ACK = subject_contains("Please confirm")
LOGIN_NOTICE = subject_contains("cannot log in")


def generic(tmp_path: Path, idp: IdpClient, client_id: str, token_file: Path, **more: Any) -> Any:
    """A generic provider's settings with a user's grant kept in ``token_file``."""
    return oauth_settings(
        tmp_path,
        provider="generic",
        client_id=client_id,
        client_secret=write_secret(tmp_path, "s3cret"),
        token_url=idp.token_url,
        refresh_token={"file": str(token_file)},
        **more,
    )


# ---------------------------------------------------------------- settings and words


class TestSettings:
    def test_a_refresh_token_is_a_reference_that_may_not_exist_yet(self, tmp_path: Path) -> None:
        base = {"provider": "generic", "client_id": "app", "token_url": "https://x/token"}
        settings = oauth_settings(tmp_path, **base, refresh_token={"file": "not-yet"})
        assert settings.refresh_token is not None
        assert settings.refresh_token.file == tmp_path / "not-yet"
        for wrong, words in [
            ("rt-inline", "secrets are not written inline"),
            ({"file": "a", "env": "B"}, "exactly one key"),
            ({}, "exactly one key"),
        ]:
            with pytest.raises(Exception, match=words):
                oauth_settings(tmp_path, **base, refresh_token=wrong)

    def test_a_microsoft_app_without_a_credential_is_a_public_client_with_a_users_grant(
        self, tmp_path: Path
    ) -> None:
        ms = {"provider": "microsoft", "client_id": "app", "tenant": "contoso.example"}
        public = oauth_settings(tmp_path, **ms, refresh_token={"file": "token"})
        assert public.public_client
        assert public.effective_scopes == (
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
        )
        with pytest.raises(Exception, match="or refresh_token"):
            oauth_settings(tmp_path, **ms)
        secret = write_secret(tmp_path, "s")
        with pytest.raises(Exception, match="not both"):
            oauth_settings(
                tmp_path, **ms, client_secret=secret, certificate=secret, certificate_key=secret
            )
        with pytest.raises(Exception, match="device_authorization_url is not used"):
            oauth_settings(
                tmp_path, **ms, client_secret=secret, device_authorization_url="https://d"
            )

    def test_provider_answers_become_causes_an_admin_can_act_on(self) -> None:
        cases = [
            (("invalid_grant", ""), "grant", "run sarbot auth login"),
            (("invalid_client", ""), "client", "check client_id"),
            (("unauthorized_client", ""), "permission", "permissions"),
            (("invalid_request", "AADSTS90002: Tenant 'x' not found."), "tenant", "check tenant"),
            (("unauthorized_client", "AADSTS700016: Application with identifier 'a' was not "
              "found in the directory 'b'."), "tenant", "check client_id and tenant"),
            (("temporarily_unavailable", ""), "provider", "temporarily_unavailable"),
        ]  # fmt: skip
        for (error, description), cause, words in cases:
            found = describe(error, description)
            assert (found.cause, words in str(found)) == (cause, True), (error, str(found))


# ---------------------------------------------------------------- the grant where the config points


class TestStoredGrant:
    def test_no_grant_stored_yet_says_run_auth_login(self, tmp_path: Path, idp: IdpClient) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret")
        tokens = build_token_source(generic(tmp_path, idp, client_id, tmp_path / "token"))
        with pytest.raises(OAuthError, match="no refresh token is stored in the file") as e:
            tokens.token()
        assert e.value.cause == "grant" and "sarbot auth login" in str(e.value)

    def test_a_rotated_refresh_token_is_written_back_with_mode_0600(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret", rotate_refresh_tokens=True)
        first = idp.mint_refresh_token(client_id, mailbox)
        token_file = tmp_path / "token"
        token_file.write_text(first + "\n")
        token_file.chmod(0o644)
        settings = generic(tmp_path, idp, client_id, token_file)
        xoauth2(mailstack, mailbox, build_token_source(settings).token())
        second = token_file.read_text().strip()
        assert second.startswith("rt-") and second != first
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # after a restart the stored, rotated token is the one that works (the first is spent)
        xoauth2(mailstack, mailbox, build_token_source(settings).token())

    def test_a_grant_in_an_environment_variable_rotates_in_memory(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient, monkeypatch: Any
    ) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret", rotate_refresh_tokens=True)
        variable = f"SARBOT_TEST_GRANT_{os.getpid()}"
        first = idp.mint_refresh_token(client_id, mailbox)
        monkeypatch.setenv(variable, first)
        settings = oauth_settings(
            tmp_path,
            provider="generic",
            client_id=client_id,
            client_secret=write_secret(tmp_path, "s3cret"),
            token_url=idp.token_url,
            refresh_token={"env": variable},
        )
        tokens = build_token_source(settings)
        xoauth2(mailstack, mailbox, tokens.token())
        with pytest.raises(IdpError, match="invalid_grant"):  # rotated: the variable's is spent
            idp.refresh(client_id, first, client_secret="s3cret")
        tokens.invalidate()  # so the next token comes from the rotated one, kept in memory
        xoauth2(mailstack, mailbox, tokens.token())
        assert os.environ[variable] == first

    def test_a_new_grant_stored_while_running_is_taken_up(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        mailbox = unique("support", "example.test")
        client_id = new_client(idp, [mailbox], secret="s3cret")
        revoked = idp.mint_refresh_token(client_id, mailbox)
        token_file = tmp_path / "token"
        token_file.write_text(revoked + "\n")
        tokens = build_token_source(generic(tmp_path, idp, client_id, token_file))
        tokens.token()
        idp.revoke(refresh_token=revoked)
        tokens.invalidate()
        with pytest.raises(OAuthError, match="revoked or expired") as e:
            tokens.token()
        assert e.value.cause == "grant"
        token_file.write_text(idp.mint_refresh_token(client_id, mailbox) + "\n")
        xoauth2(mailstack, mailbox, tokens.token())


# ---------------------------------------------------------------- the daemon when a login fails


def oauth2_table(
    tmp_path: Path, idp: IdpClient, client_id: str, token_file: Path
) -> dict[str, Any]:
    return generic_table(
        tmp_path,
        idp,
        client_id,
        device_authorization_url=f"{idp.base_url}/device_authorization",
        refresh_token={"file": str(token_file)},
    )


def make_app(tmp_path: Path, data: dict[str, Any]) -> App:
    settings = validate(data, Settings, source="test config", base_dir=tmp_path)
    return App(tmp_path / "config.toml", settings)


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.engine.dispose()


def run_once(bot: Bot) -> bool:
    """One ``run --once``; True if it ended cleanly."""
    return asyncio.run(bot.app.daemon(clock=bot.now).run(once=True))


def login_notices(bot: Bot) -> list[OutgoingMail]:
    return [m for m in bot.outgoing() if m.kind is MailKind.OPERATOR_LOGIN]


def test_a_revoked_imap_grant_tells_the_operators_and_work_resumes_when_a_new_one_is_stored(
    tmp_path: Path,
    mailstack: MailServer,
    idp: IdpClient,
    apps: list[App],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The mailbox's grant is revoked: each run logs the cause, the operators hear once, the
    request waits in the mailbox; a grant stored by the consent flow is used at the next run
    and the request is answered, its clock started at its receipt."""
    support = unique("support", "redtrain.test")
    ops = Correspondent(mailstack, unique("ops", "redtrain.test"))
    client_id = new_client(idp, [support], secret="s3cret", auto_approve=support)
    revoked = idp.mint_refresh_token(client_id, support)
    token_file = tmp_path / "imap-grant"
    token_file.write_text(revoked + "\n")
    assert idp.revoke(refresh_token=revoked) >= 1
    data = base_config(tmp_path, support)
    del data["imap"]["password"]
    data["imap"].update(auth="oauth2", oauth2=oauth2_table(tmp_path, idp, client_id, token_file))
    data["notifications"] = {"operators": [ops.address]}
    app = make_app(tmp_path, data)
    apps.append(app)
    bot = Bot(app)
    alice = Correspondent(mailstack, unique("alice", "example.test"))
    with capture_logs() as events:
        request_id = alice.send(bot.address, "GDPR DATA REQUEST", "Please send me my data.")
        assert not run_once(bot), "a failing login is not a clean run"
        notice = ops.wait_for(LOGIN_NOTICE)
        assert not run_once(bot)
    failed = [e for e in events if e["event"] == "mailbox.login_failed"]
    assert [(e["login"], e["cause"]) for e in failed][-1] == ("imap", "grant")
    assert len(login_notices(bot)) == 1, "told once, not at every attempt"
    assert bot.requests() == []
    body = notice.get_content() if not notice.is_multipart() else notice.as_string()
    assert "IMAP login failing" in body and "revoked or expired" in body
    assert "sarbot auth login imap" in body and "Nothing is lost" in body

    said: list[str] = []
    where = login(app.settings.imap.oauth2, say=said.append)  # type: ignore[arg-type]
    assert where.file == token_file and said  # the device flow's instructions
    granted = token_file.read_text().strip()
    failing_events = events
    with capture_logs() as events:
        assert run_once(bot)
    alice.wait_for(ACK)
    request = bot.request()
    assert request.state is RequestState.AWAITING_CONFIRMATION
    assert request.request_message_id == request_id
    [restored] = [e for e in events if e["event"] == "mailbox.login_restored"]
    assert restored["login"] == "imap"

    captured = capfd.readouterr()
    logged = json.dumps(failing_events + events, default=str) + captured.out + captured.err
    assert "revoked or expired" in logged  # the reasons are there, the tokens are not
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))  # with the WAL
    for token in (revoked, granted):
        assert token not in logged and token not in notice.as_string()
        assert token.encode() not in stored


def test_a_failing_smtp_login_puts_every_letter_off_and_loses_none(
    tmp_path: Path, mailstack: MailServer, idp: IdpClient, apps: list[App]
) -> None:
    """With the SMTP grant revoked the acknowledgement, and the operators' notice about it,
    wait in the outbox, each tried once; the request does not go to review; when a new grant
    is stored both go out, and no second notice was queued meanwhile."""
    support = unique("support", "redtrain.test")
    ops = Correspondent(mailstack, unique("ops", "redtrain.test"))
    client_id = new_client(idp, [support], secret="s3cret")
    revoked = idp.mint_refresh_token(client_id, support)
    token_file = tmp_path / "smtp-grant"
    token_file.write_text(revoked + "\n")
    idp.revoke(refresh_token=revoked)
    data = base_config(tmp_path, support)
    data["smtp"].update(
        username=support,
        auth="oauth2",
        oauth2=oauth2_table(tmp_path, idp, client_id, token_file),
    )
    data["notifications"] = {"operators": [ops.address]}
    bot = Bot(make_app(tmp_path, data))
    apps.append(bot.app)
    alice = Correspondent(mailstack, unique("alice", "example.test"))
    alice.send(bot.address, "GDPR DATA REQUEST", "Please send me my data.")
    bot.support.wait_for(subject_contains("GDPR DATA REQUEST"))
    with capture_logs() as events:
        bot.run_once()
        bot.run_once()
    [ack] = [m for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT]
    [notice] = login_notices(bot)
    for letter in (ack, notice):
        assert (letter.state, letter.attempts) == (MailState.PENDING, 1)
        assert letter.last_error is not None and "revoked or expired" in letter.last_error
    assert bot.request().state is RequestState.AWAITING_CONFIRMATION
    failed = [e for e in events if e["event"] == "mailbox.login_failed"]
    assert {(e["login"], e["cause"]) for e in failed} == {("smtp", "grant")}
    assert all(e["cause"] == "grant" for e in events if e["event"] == "mail.deferred")

    token_file.write_text(idp.mint_refresh_token(client_id, support) + "\n")
    bot.travel_to(bot.now() + timedelta(seconds=bot.app.settings.smtp.retry_after + 1))
    with capture_logs() as events:
        bot.run_once()
    alice.wait_for(ACK)
    ops.wait_for(LOGIN_NOTICE)
    assert [m.state for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT] == [
        MailState.SENT
    ]
    assert [m.state for m in login_notices(bot)] == [MailState.SENT]
    assert any(e["event"] == "mailbox.login_restored" and e["login"] == "smtp" for e in events)


def trouble(login: str, at: datetime) -> LoginTrouble:
    return LoginTrouble(login, "grant", "the grant was revoked or expired", at, 1)


def test_login_notices_are_daily_per_login_and_never_pile_up(
    tmp_path: Path, apps: list[App]
) -> None:
    """The notifier on a real state database: one notice per operator; none while one waits
    to be sent; none for a login already told about within a day; a newly failing login is
    told at once; a day later the same login is told again."""
    data = base_config(tmp_path, unique("support", "redtrain.test"))
    data["notifications"] = {"operators": ["ops1@redtrain.test", "ops2@redtrain.test"]}
    app = make_app(tmp_path, data)
    apps.append(app)
    Bot(app)  # migrates the database
    now = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    log = structlog.get_logger("sarbot")

    def run(at: datetime, *logins: str) -> int:
        with app.sessions.begin() as session:
            troubles = [trouble(name, at) for name in logins]
            return app.notifier.run(session, now=at, log=log, logins=troubles)

    def sent_all() -> None:
        with app.sessions.begin() as session:
            for mail in session.scalars(select(OutgoingMail)):
                mail.state = MailState.SENT

    with capture_logs():
        assert run(now, "imap") >= 2  # one for each operator (a digest may join them)
        assert run(now + timedelta(minutes=1), "imap") == 0  # still waiting to be sent
        sent_all()
        assert run(now + timedelta(hours=1), "imap") == 0  # told today
        assert run(now + timedelta(hours=2), "imap", "smtp") >= 2  # smtp is news
        sent_all()
        assert run(now + timedelta(hours=3), "smtp") == 0
        assert run(now + timedelta(days=1, hours=3), "imap") >= 2
    with app.sessions() as session:
        ids = [
            m.message_id
            for m in session.scalars(
                select(OutgoingMail).where(OutgoingMail.kind == MailKind.OPERATOR_LOGIN)
            )
        ]
    assert [i.split(".")[0] for i in ids] == [
        "<logins-imap",
        "<logins-imap",
        "<logins-imap-smtp",
        "<logins-imap-smtp",
        "<logins-imap",
        "<logins-imap",
    ]


def test_a_failing_login_shows_in_health_and_metrics() -> None:
    now = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    with capture_logs():
        watch = LoginWatch(structlog.get_logger("sarbot"))
        metrics = Metrics(clock=lambda: now, logins=watch.troubles)
        health = HealthCheck(metrics, lambda: None, stale_after=300)
        assert health().healthy
        watch.failed("smtp", OAuthError("the grant was revoked", "grant"), at=now)
        report = health()
        assert not report.healthy
        assert report.body["logins_failing"] == {"smtp": "grant"}
        assert "SMTP login failing (grant)" in report.body["problems"]
        samples = {
            s.labels["login"]: s.value
            for metric in metrics.registry.collect()
            if metric.name == "sarbot_login_failing"
            for s in metric.samples
        }
        assert samples == {"imap": 0.0, "smtp": 1.0}
        watch.worked("smtp", at=now)
        assert health().healthy


# ---------------------------------------------------------------- sarbot auth login, config check


def oauth_config(
    tmp_path: Path, mailstack: MailServer, support: str, table: dict[str, Any]
) -> Path:
    lines = ["[imap.oauth2]"]
    for key, value in table.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return write_config(
        tmp_path / "config.toml",
        support,
        server=mailstack,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        login_file=None,
        imap={"auth": "oauth2"},
        extra="\n".join(lines) + "\n",
    )


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], obj={})
    return result.exit_code, result.output


class TestAuthLogin:
    def test_device_flow_stores_the_grant_0600_and_config_check_logs_in(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        support = unique("support", "redtrain.test")
        client_id = new_client(idp, [support], auto_approve=support)  # a public client
        token_file = tmp_path / "grant"
        config = oauth_config(
            tmp_path,
            mailstack,
            support,
            {
                "provider": "generic",
                "client_id": client_id,
                "token_url": idp.token_url,
                "device_authorization_url": idp.token_url.replace(
                    "/token", "/device_authorization"
                ),
                "refresh_token": {"file": str(token_file)},
                "ca_file": str(CA_FILE),
            },
        )
        code, output = invoke(config, "config", "check")
        assert code == 1
        assert "IMAP login by OAuth 2.0 token FAILED: no refresh token is stored" in output
        code, output = invoke(config, "auth", "login", "imap")
        assert code == 0, output
        assert "open" in output and "enter the code" in output
        assert f"stored in the file {token_file} (mode 0600)" in output
        assert "IMAP login by token works" in output
        grant = token_file.read_text().strip()
        assert grant.startswith("rt-") and grant not in output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        code, output = invoke(config, "config", "check")
        assert code == 0 and "IMAP login by OAuth 2.0 token: ok" in output, output

        idp.revoke(refresh_token=grant)
        code, output = invoke(config, "config", "check")
        assert code == 1
        assert "the grant was revoked or expired: run sarbot auth login" in output

    def test_microsoft_public_client_signs_in_with_msal_device_flow(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        support = unique("support", "redtrain.test")
        scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All"]
        client_id = new_client(idp, [support], scopes=scopes, auto_approve=support)
        token_file = tmp_path / "grant"
        settings = oauth_settings(
            tmp_path,
            provider="microsoft",
            client_id=client_id,
            authority=f"{idp.base_url}/organizations",
            refresh_token={"file": str(token_file)},
            scopes=scopes,
        )
        said: list[str] = []
        login(settings, say=said.append)
        assert any("enter the code" in line for line in said)
        xoauth2(mailstack, support, build_token_source(settings).token())

    def test_google_installed_app_flow_returns_to_a_loopback_listener(
        self, tmp_path: Path, mailstack: MailServer, idp: IdpClient
    ) -> None:
        """The real command, as an admin runs it: it prints an address, the browser goes there
        and is sent back to 127.0.0.1 with a code, and the grant is stored."""
        support = unique("support", "redtrain.test")
        client_id = new_client(
            idp, [support], secret="g-secret", scopes=[MAIL_SCOPE], auto_approve=support
        )
        token_file = tmp_path / "grant"
        secret_file = tmp_path / "client-secret"
        secret_file.write_text("g-secret\n")
        config = oauth_config(
            tmp_path,
            mailstack,
            support,
            {
                "provider": "google",
                "client_id": client_id,
                "client_secret": {"file": str(secret_file)},
                "refresh_token": {"file": str(token_file)},
                "token_url": idp.token_url,
                "authorization_url": f"{idp.base_url}/authorize",
                "ca_file": str(CA_FILE),
            },
        )
        port = free_port()  # as over an SSH tunnel: ssh -L PORT:127.0.0.1:PORT
        command = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sarbot",
                "--config",
                str(config),
                "auth",
                "login",
                "imap",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: list[str] = []
        timer = threading.Timer(60, command.kill)  # a hung command fails the test, not the run
        timer.daemon = True
        timer.start()
        try:
            assert command.stdout is not None
            url = None
            for line in command.stdout:
                lines.append(line)
                found = re.search(r"https?://\S+/authorize\?\S+", line)
                if found:
                    url = found.group(0)
                    break
            assert url is not None, "".join(lines)
            assert f"redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2F" in url
            browser = requests.Session()
            browser.trust_env = False
            answer = browser.get(url, verify=str(CA_FILE), timeout=30)
            assert answer.status_code == 200 and "Signed in" in answer.text
            lines.extend(command.stdout)
            assert command.wait(timeout=60) == 0, "".join(lines)
        finally:
            timer.cancel()
            command.kill()
        output = "".join(lines)
        assert "IMAP login by token works" in output
        grant = token_file.read_text().strip()
        assert grant and grant not in output and "g-secret" not in output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    def test_logins_that_need_no_consent_or_cannot_store_it_are_refused_in_words(
        self, tmp_path: Path, monkeypatch: Any
    ) -> None:
        secret = write_secret(tmp_path, "s")
        ms = {"provider": "microsoft", "client_id": "app", "tenant": "contoso.example"}
        monkeypatch.setenv("SARBOT_TEST_GRANT", "rt-x")
        cases = [
            (oauth_settings(tmp_path, **ms, client_secret=secret), "need no login"),
            (oauth_settings(tmp_path, **ms, client_secret=secret, refresh_token={"file": "t"}),
             "public client"),
            (oauth_settings(tmp_path, provider="generic", client_id="a", token_url="https://x/t",
                         refresh_token={"file": "t"}), "needs device_authorization_url"),
            (oauth_settings(tmp_path, **ms, refresh_token={"env": "SARBOT_TEST_GRANT"}),
             "cannot write"),
        ]  # fmt: skip
        for settings, words in cases:
            with pytest.raises(OAuthError, match=words):
                login(settings, say=print)

"""OAuth 2.0 logins to IMAP and SMTP: the settings, the token sources, and whole requests.

Tokens come from the mail stack's identity provider (sarbot/testing/idp) through msal,
google-auth and authlib, as in production; Dovecot checks them. Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sarbot.config import ImapLogin, SmtpSettings, validate
from sarbot.errors import ConfigError

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

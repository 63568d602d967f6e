"""OAuth 2.0 logins to the test mail stack: tokens from its identity provider, checked by Dovecot.

Dovecot's oauth2 passdb asks the provider (sarbot/testing/idp, started by scripts/mailstack)
about every XOAUTH2 and OAUTHBEARER login, over IMAP and, through Dovecot SASL, SMTP AUTH. The
tokens come from the provider's token endpoint, directly and through msal and google-auth as
sarbot will use them. Nothing here is skipped: a server that does not start fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import google.oauth2.credentials
import google.oauth2.service_account
import msal
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from imapclient.exceptions import LoginError

from sarbot.testing import Correspondent, MailServer, stack, subject_contains
from sarbot.testing.idp import IdpClient, IdpError
from sarbot.testing.idp.server import Server
from sarbot.testing.idp.state import Authority
from tests.conftest import CA_FILE, STACK_DIR, unique
from tests.oauthkit import (
    MAIL_SCOPE,
    OUTLOOK_DEFAULT,
    OUTLOOK_IMAP,
    cert_pem,
    certificate,
    imap,
    new_client,
    oauthbearer,
    private_pem,
    public_pem,
    refused,
    rsa_key,
    xoauth2,
)

pytestmark = pytest.mark.mailstack

# google-auth's constructors are untyped.
UserCredentials: Any = google.oauth2.credentials.Credentials
ServiceAccountCredentials: Any = google.oauth2.service_account.Credentials


# ---------------------------------------------------------------- helpers


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session that trusts the stack's CA. ``trust_env`` off: REQUESTS_CA_BUNDLE in
    the environment would otherwise override ``verify`` (and a proxy variable take loopback)."""
    session = requests.Session()
    session.verify = str(CA_FILE)
    session.trust_env = False
    with session:
        yield session


def xoauth2_string(user: str, token: str) -> str:
    return f"user={user}\1auth=Bearer {token}\1\1"


def oauthbearer_string(user: str, token: str) -> str:
    return f"n,a={user},\1auth=Bearer {token}\1\1"


@contextmanager
def smtp(server: MailServer) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(server.host, server.smtp_port, timeout=30) as session:
        session.starttls(context=server.tls())
        session.ehlo()
        yield session


def smtp_auth(server: MailServer, mechanism: str, response: str) -> tuple[int, bytes]:
    """AUTH with an initial response after STARTTLS: the server's final reply."""
    with smtp(server) as session:
        encoded = base64.b64encode(response.encode()).decode()
        code, text = session.docmd("AUTH", f"{mechanism} {encoded}")
        if code == 334:  # XOAUTH2 and OAUTHBEARER send an error challenge first
            code, text = session.docmd("")
        return code, text


# ---------------------------------------------------------------- IMAP


class TestImap:
    def test_xoauth2_and_oauthbearer_with_a_token_from_the_token_endpoint(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        """A client-credentials token logs its mailbox in with either mechanism."""
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret", scopes=[MAIL_SCOPE])
        answer = idp.client_credentials(client_id, "s3cret")
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 3600
        assert answer["scope"] == MAIL_SCOPE and "refresh_token" not in answer
        xoauth2(mailstack, alice, answer["access_token"])
        oauthbearer(mailstack, alice, answer["access_token"])

    def test_a_token_for_one_user_cannot_log_in_as_another(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        alice, bob = unique("alice", "example.test"), unique("bob", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret")
        token = idp.client_credentials(client_id, "s3cret")["access_token"]
        refused(xoauth2, mailstack, bob, token)
        refused(oauthbearer, mailstack, bob, token)
        with pytest.raises(IdpError) as failure:
            idp.client_credentials(client_id, "s3cret", username=bob)
        assert (failure.value.status, failure.value.error) == (400, "unauthorized_client")
        xoauth2(mailstack, alice, token)

    def test_a_client_for_several_mailboxes_names_one(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        domain_user, other = unique("support", "redtrain.test"), unique("eve", "evil.test")
        client_id = new_client(idp, ["*@redtrain.test"], secret="s3cret")
        with pytest.raises(IdpError) as failure:
            idp.client_credentials(client_id, "s3cret")
        assert failure.value.error == "invalid_request"
        token = idp.client_credentials(client_id, "s3cret", username=domain_user)["access_token"]
        xoauth2(mailstack, domain_user, token)
        with pytest.raises(IdpError):
            idp.client_credentials(client_id, "s3cret", username=other)

    def test_an_expired_token_is_refused(self, mailstack: MailServer, idp: IdpClient) -> None:
        """Expired early by the admin API, or by its own short lifetime."""
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret")
        token = idp.client_credentials(client_id, "s3cret")["access_token"]
        xoauth2(mailstack, alice, token)
        assert idp.expire(client_id=client_id) == 1
        assert idp.introspect(token) == {"active": False}
        refused(xoauth2, mailstack, alice, token)
        refused(oauthbearer, mailstack, alice, token)

        idp.set_lifetime(1, client_id=client_id)
        short = idp.client_credentials(client_id, "s3cret")
        assert short["expires_in"] == 1
        xoauth2(mailstack, alice, short["access_token"])
        time.sleep(1.5)
        refused(xoauth2, mailstack, alice, short["access_token"])
        idp.set_lifetime(None, client_id=client_id)
        assert idp.client_credentials(client_id, "s3cret")["expires_in"] == 3600

    def test_a_revoked_grant_ends_its_tokens_and_refresh_gives_invalid_grant(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret", scopes=[MAIL_SCOPE])
        grant = idp.post_json("/admin/refresh-tokens", {"client_id": client_id, "user": alice})
        refresh = grant["refresh_token"]
        token = idp.refresh(client_id, refresh, client_secret="s3cret")["access_token"]
        xoauth2(mailstack, alice, token)

        assert idp.revoke(grant_id=grant["grant_id"]) == 2  # the refresh and the access token
        refused(xoauth2, mailstack, alice, token)
        with pytest.raises(IdpError) as failure:
            idp.refresh(client_id, refresh, client_secret="s3cret")
        assert (failure.value.status, failure.value.error) == (400, "invalid_grant")

    def test_a_revoked_refresh_token_takes_its_access_tokens_along(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret")
        first, second = (idp.mint_refresh_token(client_id, alice) for _ in range(2))
        doomed = idp.refresh(client_id, first, client_secret="s3cret")["access_token"]
        kept = idp.refresh(client_id, second, client_secret="s3cret")["access_token"]
        assert idp.revoke(refresh_token=first) == 2
        refused(xoauth2, mailstack, alice, doomed)
        xoauth2(mailstack, alice, kept)
        with pytest.raises(IdpError, match="invalid_grant"):
            idp.refresh(client_id, first, client_secret="s3cret")

    def test_tokens_and_passwords_do_not_mix(self, mailstack: MailServer, idp: IdpClient) -> None:
        """A token is no password (LOGIN), a password no token (XOAUTH2), nor is a refresh
        token an access token."""
        alice, bob = unique("alice", "example.test"), unique("bob", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret")
        token = idp.client_credentials(client_id, "s3cret")["access_token"]
        for user in (alice, bob):
            with imap(mailstack) as client, pytest.raises(LoginError):
                client.login(user, token)
        refused(xoauth2, mailstack, alice, mailstack.password)
        refused(oauthbearer, mailstack, alice, mailstack.password)
        refused(xoauth2, mailstack, alice, idp.mint_refresh_token(client_id, alice))
        refused(xoauth2, mailstack, alice, "at-never-issued")

    def test_password_logins_work_as_before(self, mailstack: MailServer) -> None:
        alice = unique("alice", "example.test")
        with imap(mailstack) as client:
            client.login(alice, mailstack.password)
        with imap(mailstack) as client:
            client.plain_login(alice, mailstack.password)
        with imap(mailstack) as client, pytest.raises(LoginError):
            client.login(alice, "wrong")


# ---------------------------------------------------------------- SMTP


class TestSmtp:
    def test_auth_is_offered_after_starttls_only(self, mailstack: MailServer) -> None:
        with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=30) as session:
            session.ehlo()
            assert not session.has_extn("auth")
            session.starttls(context=mailstack.tls())
            session.ehlo()
            assert session.esmtp_features["auth"].split() == [
                "PLAIN",
                "LOGIN",
                "XOAUTH2",
                "OAUTHBEARER",
            ]

    def test_xoauth2_with_aiosmtplib_delivers_the_mail(
        self, mailstack: MailServer, idp: IdpClient
    ) -> None:
        sender = unique("support", "redtrain.test")
        recipient = Correspondent(mailstack, unique("alice", "example.test"))
        client_id = new_client(idp, [sender], secret="s3cret")
        issued: list[str] = []

        async def token() -> str:
            issued.append(idp.client_credentials(client_id, "s3cret")["access_token"])
            return issued[-1]

        message = EmailMessage()
        message["From"], message["To"] = sender, recipient.address
        message["Subject"] = subject = f"Sent with XOAUTH2 {uuid.uuid4().hex[:8]}"
        message.set_content("Hello.\n")
        asyncio.run(
            aiosmtplib.send(
                message,
                hostname=mailstack.host,
                port=mailstack.smtp_port,
                start_tls=True,
                tls_context=mailstack.tls(),
                username=sender,
                oauth_token_generator=token,
                timeout=30,
            )
        )
        assert len(issued) == 1
        assert recipient.wait_for(subject_contains(subject))["From"] == sender
        log = (STACK_DIR / "log" / "postfix.log").read_text()
        assert f"sasl_method=XOAUTH2, sasl_username={sender}" in log

    def test_oauthbearer_and_what_smtp_refuses(self, mailstack: MailServer, idp: IdpClient) -> None:
        alice, bob = unique("alice", "example.test"), unique("bob", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret")
        token = idp.client_credentials(client_id, "s3cret")["access_token"]
        assert smtp_auth(mailstack, "OAUTHBEARER", oauthbearer_string(alice, token))[0] == 235
        assert smtp_auth(mailstack, "XOAUTH2", xoauth2_string(alice, token))[0] == 235
        assert smtp_auth(mailstack, "XOAUTH2", xoauth2_string(bob, token))[0] == 535
        assert smtp_auth(mailstack, "PLAIN", f"\0{alice}\0{token}")[0] == 535
        assert smtp_auth(mailstack, "PLAIN", f"\0{alice}\0{mailstack.password}")[0] == 235
        idp.expire(user=alice)
        assert smtp_auth(mailstack, "XOAUTH2", xoauth2_string(alice, token))[0] == 535


# ---------------------------------------------------------------- msal and google-auth


def msal_app(http: requests.Session, client_id: str, credential: Any, **authority: Any) -> Any:
    return msal.ConfidentialClientApplication(
        client_id, client_credential=credential, http_client=http, **authority
    )


AUTHORITIES: dict[str, dict[str, Any]] = {
    "oidc_authority": {"oidc_authority": f"{stack.idp_url(tls=True)}/tenant"},
    "authority": {
        "authority": f"{stack.idp_url(tls=True)}/tenant",
        "validate_authority": False,
        "instance_discovery": False,
    },
}


class TestMsal:
    @pytest.mark.parametrize("kind", sorted(AUTHORITIES))
    def test_client_credentials_with_a_secret(
        self, mailstack: MailServer, idp: IdpClient, http: requests.Session, kind: str
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        client_id = new_client(idp, [mailbox], secret="s3cret", scopes=[OUTLOOK_DEFAULT])
        app = msal_app(http, client_id, "s3cret", **AUTHORITIES[kind])
        result = app.acquire_token_for_client(scopes=[OUTLOOK_DEFAULT])
        assert "access_token" in result, result
        xoauth2(mailstack, mailbox, result["access_token"])

    def test_client_credentials_with_a_certificate(
        self, mailstack: MailServer, idp: IdpClient, http: requests.Session
    ) -> None:
        """msal signs a client assertion: PS256 with the certificate (SHA-256 thumbprint), RS256
        with a SHA-1 thumbprint. A key that is not the certificate's is refused."""
        mailbox = unique("support", "redtrain.test")
        key = rsa_key()
        cert = certificate(key)
        client_id = new_client(idp, [mailbox], keys=[cert_pem(cert)], scopes=[OUTLOOK_DEFAULT])
        credentials = {
            "PS256": {"private_key": private_pem(key), "public_certificate": cert_pem(cert)},
            "RS256": {
                "private_key": private_pem(key),
                "thumbprint": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 (msal's SHA-1 thumbprint)
            },
        }
        for credential in credentials.values():
            app = msal_app(http, client_id, credential, **AUTHORITIES["authority"])
            result = app.acquire_token_for_client(scopes=[OUTLOOK_DEFAULT])
            assert "access_token" in result, result
            xoauth2(mailstack, mailbox, result["access_token"])
        impostor = {"private_key": private_pem(rsa_key()), "public_certificate": cert_pem(cert)}
        app = msal_app(http, client_id, impostor, **AUTHORITIES["authority"])
        result = app.acquire_token_for_client(scopes=[OUTLOOK_DEFAULT])
        assert result.get("error") == "invalid_client", result

    def test_device_flow_then_silent_refresh(
        self, mailstack: MailServer, idp: IdpClient, http: requests.Session
    ) -> None:
        """What ``sarbot auth login`` will do: the device flow, a person approves (here the
        admin API), then msal refreshes from its cache."""
        mailbox = unique("support", "redtrain.test")
        client_id = new_client(idp, [mailbox], scopes=[OUTLOOK_IMAP])
        app = msal.PublicClientApplication(client_id, http_client=http, **AUTHORITIES["authority"])
        flow = app.initiate_device_flow(scopes=[OUTLOOK_IMAP])
        assert flow["user_code"] in flow["message"], flow
        assert [d["user_code"] for d in idp.pending_devices()].count(flow["user_code"]) == 1
        approve = threading.Timer(1.5, idp.approve_device, (flow["user_code"], mailbox))
        approve.start()
        result = app.acquire_token_by_device_flow(flow)
        approve.join()
        assert "access_token" in result and "refresh_token" in result, result
        assert result["id_token_claims"]["preferred_username"] == mailbox
        xoauth2(mailstack, mailbox, result["access_token"])

        [account] = app.get_accounts()
        assert account["username"] == mailbox
        again = app.acquire_token_silent([OUTLOOK_IMAP], account=account, force_refresh=True)
        assert again is not None and "access_token" in again, again
        assert again["access_token"] != result["access_token"]
        oauthbearer(mailstack, mailbox, again["access_token"])


class TestGoogleAuth:
    def test_user_credentials_refresh_through_token_uri(
        self, mailstack: MailServer, idp: IdpClient, http: requests.Session
    ) -> None:
        mailbox = unique("support", "redtrain.test")
        client_id = new_client(idp, [mailbox], secret="g-secret", scopes=[MAIL_SCOPE])
        refresh = idp.mint_refresh_token(client_id, mailbox)
        creds = UserCredentials(
            token=None,
            refresh_token=refresh,
            token_uri=idp.token_url,
            client_id=client_id,
            client_secret="g-secret",
            scopes=[MAIL_SCOPE],
        )
        creds.refresh(GoogleRequest(http))
        assert creds.valid and creds.token
        xoauth2(mailstack, mailbox, creds.token)

        idp.revoke(refresh_token=refresh)
        refused(xoauth2, mailstack, mailbox, creds.token)
        with pytest.raises(RefreshError, match="invalid_grant"):
            creds.refresh(GoogleRequest(http))

    def test_service_account_with_subject_through_token_uri(
        self, mailstack: MailServer, idp: IdpClient, http: requests.Session
    ) -> None:
        """Domain-wide delegation: the service account's JWT names the mailbox in sub."""
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
            "token_uri": idp.token_url,
        }
        account = ServiceAccountCredentials.from_service_account_info(info, scopes=[MAIL_SCOPE])
        delegated = account.with_subject(mailbox)
        delegated.refresh(GoogleRequest(http))
        xoauth2(mailstack, mailbox, delegated.token)
        oauthbearer(mailstack, mailbox, delegated.token)

        outsider = account.with_subject(unique("eve", "evil.test"))
        with pytest.raises(RefreshError, match="unauthorized_client"):
            outsider.refresh(GoogleRequest(http))
        forged = dict(info, private_key=private_pem(rsa_key()))
        impostor = ServiceAccountCredentials.from_service_account_info(
            forged, scopes=[MAIL_SCOPE]
        ).with_subject(mailbox)
        with pytest.raises(RefreshError, match="invalid_grant"):
            impostor.refresh(GoogleRequest(http))


# ---------------------------------------------------------------- the provider itself


class TestProvider:
    def test_token_endpoint_errors(self, idp: IdpClient, http: requests.Session) -> None:
        """RFC 6749 errors with their statuses; HTTP Basic works and is challenged."""
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret", scopes=["a", "b"])
        url = idp.token_url
        good = http.post(url, data={"grant_type": "client_credentials"}, auth=(client_id, "s3cret"))
        assert good.status_code == 200 and good.json()["scope"] == "a b"
        bad = http.post(url, data={"grant_type": "client_credentials"}, auth=(client_id, "nope"))
        assert (bad.status_code, bad.json()["error"]) == (401, "invalid_client")
        assert bad.headers["WWW-Authenticate"].startswith("Basic")
        cases = [
            ({"grant_type": "password", "password": "x"}, 400, "unsupported_grant_type"),
            ({"grant_type": "client_credentials", "scope": "a c"}, 400, "invalid_scope"),
            ({"grant_type": "refresh_token", "refresh_token": "rt-unknown"}, 400, "invalid_grant"),
            ({}, 400, "invalid_request"),
        ]  # fmt: skip
        for form, status, error in cases:
            with pytest.raises(IdpError) as failure:
                idp.token(client_id=client_id, client_secret="s3cret", **form)
            assert (failure.value.status, failure.value.error) == (status, error), form
        assert idp.client_credentials(client_id, "s3cret", scope="b")["scope"] == "b"

    def test_device_flow_pending_denied_and_auto_approved(self, idp: IdpClient) -> None:
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice])
        started = idp.post_form("/device_authorization", {"client_id": client_id})
        poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
        poll.update(client_id=client_id, device_code=started["device_code"])
        with pytest.raises(IdpError, match="authorization_pending"):
            idp.token(**poll)
        idp.deny_device(started["user_code"])
        with pytest.raises(IdpError, match="access_denied"):
            idp.token(**poll)

        automatic = new_client(idp, [alice], auto_approve=alice)
        started = idp.post_form("/device_authorization", {"client_id": automatic})
        poll.update(client_id=automatic, device_code=started["device_code"])
        answer = idp.token(**poll)
        assert idp.introspect(answer["access_token"])["username"] == alice
        with pytest.raises(IdpError, match="invalid_grant"):
            idp.token(**poll)  # a device code is good once

    def test_rotating_refresh_tokens_and_rfc7009_revocation(self, idp: IdpClient) -> None:
        alice = unique("alice", "example.test")
        client_id = new_client(idp, [alice], secret="s3cret", rotate_refresh_tokens=True)
        first = idp.mint_refresh_token(client_id, alice)
        answer = idp.refresh(client_id, first, client_secret="s3cret")
        second = answer["refresh_token"]
        assert second != first
        with pytest.raises(IdpError, match="invalid_grant"):
            idp.refresh(client_id, first, client_secret="s3cret")
        form = {"token": second, "client_id": client_id, "client_secret": "s3cret"}
        assert idp.post_form("/revoke", form) == {}
        assert idp.introspect(answer["access_token"])["active"] is True  # got with the first
        with pytest.raises(IdpError, match="invalid_grant"):
            idp.refresh(client_id, second, client_secret="s3cret")

    def test_the_log_names_tokens_without_their_values(self, idp: IdpClient) -> None:
        alice = unique("alice", "example.test")
        before = idp.get("/admin/log?since=0")["next"]
        client_id = new_client(idp, [alice], secret="s3cret")
        refresh = idp.mint_refresh_token(client_id, alice)
        token = idp.refresh(client_id, refresh, client_secret="s3cret")["access_token"]
        idp.introspect(token)
        events = [e for e in idp.log(before) if e.get("client_id") == client_id]
        names = [e["event"] for e in events]
        assert names == [
            "client_registered",
            "refresh_token_minted",
            "token_issued",
            "introspected",
        ]
        issued = events[2]
        assert issued["grant_type"] == "refresh_token" and issued["user"] == alice
        assert issued["token_id"] == events[3]["token_id"] and events[3]["active"] is True
        text = json.dumps(idp.log(before))
        assert token not in text and refresh not in text and "s3cret" not in text

    def test_clients_are_kept_in_the_state_folder(self, idp: IdpClient) -> None:
        client_id = new_client(idp, ["*@redtrain.test"], secret="kept")
        saved = json.loads((STACK_DIR / "idp" / "clients.json").read_text())
        [entry] = [c for c in saved["clients"] if c["client_id"] == client_id]
        assert entry["users"] == ["*@redtrain.test"] and entry["client_secret"] == "kept"
        [shown] = [c for c in idp.get("/admin/clients")["clients"] if c["client_id"] == client_id]
        assert shown["client_secret"] == "*****"

    def test_discovery_under_a_tenant_path(self, idp: IdpClient) -> None:
        meta = idp.get("/tenant/v2.0/.well-known/openid-configuration")
        assert meta["issuer"] == f"{idp.base_url}/tenant/v2.0"
        assert meta["token_endpoint"] == f"{idp.base_url}/tenant/v2.0/token"
        assert meta["device_authorization_endpoint"].endswith("/tenant/v2.0/device_authorization")

    def test_listens_on_loopback_only(self, tmp_path: Any) -> None:
        with pytest.raises(ValueError, match="loopback"):
            Server("0.0.0.0", 0, Authority(tmp_path), None)  # noqa: S104 (what is refused)


def test_one_port_speaks_http_and_https(idp: IdpClient) -> None:
    """Dovecot asks over plain HTTP, msal only takes https URLs: the same port serves both."""
    assert IdpClient(stack.idp_url(tls=False)).get("/health") == {"status": "ok"}
    assert idp.base_url.startswith("https://") and idp.get("/health") == {"status": "ok"}
    with pytest.raises(IdpError) as failure:
        IdpClient(stack.idp_url(tls=False)).get("/admin/nothing")
    assert failure.value.status == 404

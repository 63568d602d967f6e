"""What the OAuth 2.0 tests share: registering clients, logging in by token, keys and
certificates, secrets in files.  The ``idp`` fixture is in conftest."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from sarbot.config import validate
from sarbot.oauth_settings import OAuth2Settings
from sarbot.testing import MailServer
from sarbot.testing.idp import IdpClient
from tests.conftest import CA_FILE

MAIL_SCOPE = "https://mail.google.com/"
OUTLOOK_DEFAULT = "https://outlook.office365.com/.default"
OUTLOOK_IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"


def new_client(idp: IdpClient, users: list[str], **settings: Any) -> str:
    """Register a client with a unique id; returns the id."""
    client_id = f"test-{uuid.uuid4().hex[:10]}"
    idp.register(client_id, users=users, **settings)
    return client_id


def imap(server: MailServer) -> IMAPClient:
    client = IMAPClient(server.host, server.imap_port, ssl=False, timeout=30)
    client.starttls(server.tls())
    return client


def xoauth2(server: MailServer, user: str, token: str) -> None:
    """Log in over IMAP with XOAUTH2 (raises LoginError if refused)."""
    with imap(server) as client:
        client.oauth2_login(user, token)
        client.select_folder("INBOX")


def oauthbearer(server: MailServer, user: str, token: str) -> None:
    with imap(server) as client:
        client.oauthbearer_login(user, token)
        client.select_folder("INBOX")


def refused(login: Callable[[MailServer, str, str], None], *args: Any) -> str:
    """The server's answer to a login that must fail."""
    with pytest.raises(LoginError) as failure:
        login(*args)
    assert "AUTHENTICATIONFAILED" in str(failure.value), failure.value
    return str(failure.value)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sarbot test client")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_secret(tmp_path: Path, value: str) -> dict[str, str]:
    """A secret in a file of its own; the config's reference to it."""
    path = tmp_path / f"secret-{uuid.uuid4().hex[:8]}"
    path.write_text(value + "\n")
    return {"file": str(path)}


def generic_table(
    tmp_path: Path,
    idp: IdpClient,
    client_id: str,
    secret: str = "s3cret",  # noqa: S107 (the test provider's)
    **more: Any,
) -> dict[str, Any]:
    """An ``oauth2`` table for the stack's provider as a generic one (client credentials
    unless ``more`` holds a refresh_token), trusting the stack's CA."""
    return {
        "provider": "generic",
        "client_id": client_id,
        "client_secret": write_secret(tmp_path, secret),
        "token_url": idp.token_url,
        "ca_file": str(CA_FILE),
        **more,
    }


def oauth_settings(tmp_path: Path, **values: Any) -> OAuth2Settings:
    """An ``oauth2`` table validated as sarbot reads it, trusting the stack's CA."""
    data = {"ca_file": str(CA_FILE), **values}
    return validate(data, OAuth2Settings, source="test", base_dir=tmp_path)

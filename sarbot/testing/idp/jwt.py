"""Just enough JOSE for the identity provider: read a compact JWS, check its RSA signature.

Assertions (RFC 7523) reach the provider as client authentication (msal's certificate
credential, ``client_assertion``) and as an authorization grant (google-auth's service
accounts, ``assertion``). Both are RS256 or PS256 JWTs signed by a key whose public half the
client registered, as a certificate or a public key in PEM. The provider signs ID tokens
with a key of its own (:class:`Signer`). ``cryptography`` is imported where a key is used.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

ALGORITHMS = ("RS256", "PS256")
"""The signature algorithms accepted: what google-auth (RS256) and msal (PS256 with a SHA-256
thumbprint, RS256 with a SHA-1 one) sign with."""

LEEWAY = 60
"""Seconds of clock difference forgiven in exp, nbf and iat."""


class JwtError(ValueError):
    """The token is no well-formed JWT, or a claim in it is not acceptable."""


@dataclass(frozen=True)
class Jws:
    """A compact JWS taken apart (not yet verified)."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_decode(text: str) -> bytes:
    """Base64url without padding (RFC 7515), strictly: other characters are an error."""
    try:
        return base64.b64decode(
            text.encode("ascii") + b"=" * (-len(text) % 4), altchars=b"-_", validate=True
        )
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise JwtError("a part of the JWT is not base64url") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_object(part: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JwtError("a part of the JWT is not JSON") from exc
    if not isinstance(value, dict):
        raise JwtError("a part of the JWT is not a JSON object")
    return value


def parse(token: str) -> Jws:
    """Take a compact JWS apart; raises :class:`JwtError` if it is malformed."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise JwtError("a JWT has three non-empty parts separated by dots")
    header, claims = _json_object(parts[0]), _json_object(parts[1])
    return Jws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2]))


def public_key(pem: str) -> RSAPublicKey:
    """The RSA public key in a PEM certificate or public key; :class:`JwtError` if none."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode("ascii", "replace")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise JwtError(f"not a PEM certificate or public key: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise JwtError("only RSA keys are supported")
    return key


def verify_signature(jws: Jws, pems: Iterable[str]) -> bool:
    """True if one of the keys made the signature; :class:`JwtError` for an unknown alg."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    alg = jws.header.get("alg")
    if alg not in ALGORITHMS:
        raise JwtError(f"alg {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
    pad: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if alg == "RS256"
        else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    )
    for pem in pems:
        try:
            public_key(pem).verify(jws.signature, jws.signing_input, pad, hashes.SHA256())
        except InvalidSignature:
            continue
        return True
    return False


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(f"claim {name} is not a number")
    return float(value)


def check_times(claims: dict[str, Any], now: float, *, max_lifetime: int = 3600) -> None:
    """exp is required and in the future, nbf and iat not in the future, and the assertion
    lives at most ``max_lifetime`` seconds (RFC 7523, section 3)."""
    exp = _number(claims, "exp")
    if exp is None:
        raise JwtError("the assertion has no exp claim")
    if exp <= now - LEEWAY:
        raise JwtError("the assertion has expired")
    nbf, iat = _number(claims, "nbf"), _number(claims, "iat")
    if nbf is not None and nbf > now + LEEWAY:
        raise JwtError("the assertion is not valid yet (nbf)")
    if iat is not None and iat > now + LEEWAY:
        raise JwtError("the assertion was issued in the future (iat)")
    if exp - (iat if iat is not None else now) > max_lifetime + LEEWAY:
        raise JwtError(f"the assertion lives longer than {max_lifetime} seconds")


def audiences(claims: dict[str, Any]) -> list[str]:
    """The aud claim as a list (it may be one string or several)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise JwtError("the assertion has no aud claim naming this token endpoint")


class Signer:
    """The provider's own RS256 key (new at every start), for the ID tokens it issues to
    OpenID Connect clients (msal keeps accounts by them); its public half is at /jwks."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self.kid = b64url_encode(_uint(numbers.n)[-8:])
        self.jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": b64url_encode(_uint(numbers.n)),
            "e": b64url_encode(_uint(numbers.e)),
        }

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = ".".join(
            b64url_encode(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims)
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url_encode(signature)}"


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")

"""DKIM with the test mail stack's keys: sign test mail, look keys up in its DNS.

``scripts/mailstack up`` makes one RSA key pair per signing domain
(``<domain>.private`` and ``<domain>.public`` in ``.mailstack/dkim/``) and
publishes each public key as the TXT record ``s1._domainkey.<domain>`` on a
private DNS server at :data:`DNS_SERVER`. Its Postfix checks every message it
receives against those records. Here, :func:`sign` signs a message as one of
those domains, and :func:`dnsfunc` lets dkimpy verify against the same records:
``dkim.verify(raw, dnsfunc=dnsfunc)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import dkim
import dns.exception
import dns.resolver

from sarbot.testing.stack import port

#: Where the stack's DNS server answers (UDP and TCP), as (address, port).
DNS_SERVER: Final[tuple[str, int]] = ("127.0.0.1", port("dns"))

#: The selector of every key the stack publishes.
SELECTOR: Final = "s1"

#: The domains the stack has keys for.
SIGNING_DOMAINS: Final = ("example.test", "mail.example.test", "evil.test", "redtrain.test")

#: The header fields a signature covers. A field the message lacks is signed
#: as absent, so adding it in transit breaks the signature too.
SIGNED_HEADERS: Final = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)


def sign(raw: bytes, domain: str, *, selector: str = SELECTOR, keys_dir: Path) -> bytes:
    """``raw`` with a DKIM-Signature (d=``domain``, rsa-sha256, relaxed/simple) put on top.

    The private key is ``keys_dir/<domain>.private``.
    """
    private_key = (keys_dir / f"{domain}.private").read_bytes()
    linesep = b"\r\n" if b"\r\n" in raw else b"\n"
    signature = dkim.sign(
        raw,
        selector.encode("ascii"),
        domain.encode("ascii"),
        private_key,
        include_headers=[name.encode("ascii") for name in SIGNED_HEADERS],
        linesep=linesep,
    )
    if not isinstance(signature, bytes):
        raise TypeError(f"dkim.sign returned {type(signature).__name__}, not bytes")
    return signature + raw


def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    """The TXT record at ``name`` on the stack's DNS server, the way dkimpy wants it.

    Like dkimpy's own lookup: the first TXT record with its strings joined, or
    None if the name or record does not exist. A server that does not answer,
    or answers with an error, raises ``dkim.DnsTimeoutError`` (a temporary
    failure), so that a broken DNS server never looks like a missing key.
    """
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_SERVER[0]]
    resolver.port = DNS_SERVER[1]
    try:
        answer = resolver.resolve(
            name.decode("ascii"), "TXT", lifetime=timeout, search=False, raise_on_no_answer=False
        )
    except dns.resolver.NXDOMAIN:
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise dkim.DnsTimeoutError(f"DNS lookup of {name!r} failed: {error}") from error
    if answer.rrset is None:
        return None
    for record in answer.rrset:
        return b"".join(record.strings)
    return None

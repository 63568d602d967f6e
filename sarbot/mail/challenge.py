"""Proof that the requester controls the address: challenge tokens and codes.

The acknowledgement's Message-ID embeds a 192-bit random token:
``<SAR-2026-48213907.TOKEN@domain>``.  A reply cites it in In-Reply-To or
References.  Mail clients that drop those headers are served by a short code
printed in the acknowledgement, quoted together with the reference.  Only
hashes are stored; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_TOKEN_RE = re.compile(
    r"^(?P<ref>[A-Z]{2,10}-\d{4}-\d{4,9})\.(?P<token>[A-Za-z0-9_-]{32})@(?P<domain>.+)$"
)
_CODE_RE = re.compile(r"\b([2-9A-HJKMNP-Z]{4})-([2-9A-HJKMNP-Z]{4})\b")
MAX_CODES_PER_MESSAGE = 3


@dataclass(frozen=True)
class Challenge:
    """A fresh challenge: the plain values go into the acknowledgement only."""

    token: str
    code: str

    @property
    def token_hash(self) -> str:
        return digest(self.token)

    @property
    def code_hash(self) -> str:
        return digest(self.code)


def new_challenge() -> Challenge:
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return Challenge(token=secrets.token_urlsafe(24), code=f"{code[:4]}-{code[4:]}")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("ascii")).hexdigest()


def matches(candidate: str, stored_hash: str) -> bool:
    """Constant-time check of a candidate token or code against its stored hash."""
    return hmac.compare_digest(digest(candidate), stored_hash)


def challenge_message_id(reference: str, token: str, domain: str) -> str:
    return f"<{reference}.{token}@{domain}>"


@dataclass(frozen=True)
class CitedToken:
    reference: str
    token: str


def cited_tokens(cited_ids: tuple[str, ...], domain: str) -> list[CitedToken]:
    """The challenge tokens a reply cites in In-Reply-To/References, in order."""
    found = []
    for message_id in cited_ids:
        match = _TOKEN_RE.match(message_id)
        if match and match["domain"].lower() == domain:
            found.append(CitedToken(match["ref"], match["token"]))
    return found


def quoted_codes(text: str) -> list[str]:
    """Codes quoted in a reply's text (a few at most, so one mail can't guess many)."""
    codes = [f"{a}-{b}" for a, b in _CODE_RE.findall(text)]
    return list(dict.fromkeys(codes))[:MAX_CODES_PER_MESSAGE]

"""An incoming message reduced to what sarbot decides on.

Parsing never raises: a message that cannot be read in part gives empty
fields, and the classification of an empty field is always "leave alone".

``headers`` holds every field with its RFC 2047 encoded words decoded, for
reading (the subject, say).  What decides who sent a message is read from the
fields as written instead, before any decoding, where an encoded word cannot
pass for an address or an authserv-id: the sender (``sender``, or why there
is none in ``sender_problem``), parsed once here, and the
``Authentication-Results`` fields (``authentication_results``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import mailparser

from sarbot.addresses import InvalidAddress, sender_of

_MSGID_RE = re.compile(r"<([^<>\s]{1,994})>")
_SPACE_RE = re.compile(r"\s+")
_FOLDING_RE = re.compile(r"\r?\n(?=[ \t])")
_TAG_RE = re.compile(r"<[^>]*>")
MAX_TEXT_CHARS = 200_000


@dataclass(frozen=True)
class IncomingMail:
    """The headers and text of one incoming message."""

    headers: Mapping[str, tuple[str, ...]]
    subject: str
    message_id: str | None
    cited_ids: tuple[str, ...]
    text: str = ""
    header_digest: str = field(default="", repr=False)
    raw: bytes = field(default=b"", repr=False)
    sender: str | None = field(default=None, repr=False)
    """The normalised address of the one From field as written; None if there is none."""
    sender_problem: str = "no From header"
    """Why ``sender`` is None (e.g. "more than one From header"); "" when there is a sender."""
    authentication_results: tuple[str, ...] = field(default=(), repr=False)
    """Every Authentication-Results field as written (unfolded, not decoded), top first."""

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def key(self) -> str:
        """The deduplication key: the Message-ID, or a digest of the headers without one."""
        return self.message_id or f"sha256:{self.header_digest}"


def parse_headers(raw: bytes) -> IncomingMail:
    """Parse only the header block (intake's first, cheap look at a message)."""
    message = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return _from_message(message, raw, text="", whole=False)


def parse_message(raw: bytes) -> IncomingMail:
    """Parse a whole message, body text included; the raw bytes are kept for attachments."""
    message = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return _from_message(message, raw, text=_body_text(raw), whole=True)


def _from_message(message: Message, raw: bytes, text: str, *, whole: bool) -> IncomingMail:
    headers: dict[str, list[str]] = {}
    written: dict[str, list[str]] = {"from": [], "authentication-results": []}
    for name, value in message.items():
        headers.setdefault(name.lower(), []).append(decode_header_value(value))
    for name, value in message.raw_items():
        if name.lower() in written:
            written[name.lower()].append(as_written(value))
    try:
        sender: str | None = sender_of(written["from"])
        problem = ""
    except InvalidAddress as exc:
        sender, problem = None, str(exc)
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    first = {name: values[0] for name, values in headers.items()}
    cited = _message_ids(first.get("in-reply-to", "")) + _message_ids(first.get("references", ""))
    own_ids = _message_ids(first.get("message-id", ""))
    return IncomingMail(
        headers={name: tuple(values) for name, values in headers.items()},
        subject=_SPACE_RE.sub(" ", first.get("subject", "")).strip(),
        message_id=f"<{own_ids[0]}>" if own_ids else None,
        cited_ids=tuple(dict.fromkeys(cited)),
        text=text[:MAX_TEXT_CHARS],
        header_digest=hashlib.sha256(head).hexdigest(),
        raw=raw if whole else b"",
        sender=sender,
        sender_problem=problem,
        authentication_results=tuple(written["authentication-results"]),
    )


def as_written(value: object) -> str:
    """A header field's value as it arrived: unfolded, its bytes read as UTF-8, not decoded."""
    text = value if isinstance(value, str) else str(value)
    unfolded = _FOLDING_RE.sub("", text)
    return unfolded.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def decode_header_value(value: object) -> str:
    """Decode RFC 2047 encoded words; undecodable parts are replaced, never raised."""
    text = str(value)
    try:
        decoded = str(make_header(decode_header(text)))
    except Exception:  # malformed encoded words raise assorted errors
        decoded = text
    return decoded.encode("utf-8", "replace").decode("utf-8")


def _message_ids(value: str) -> list[str]:
    return _MSGID_RE.findall(value)


def _body_text(raw: bytes) -> str:
    try:
        parsed = mailparser.parse_from_bytes(raw)
        parts = [*parsed.text_plain, *(_TAG_RE.sub(" ", html) for html in parsed.text_html)]
    except Exception:  # mail-parser raises on some malformed input; no text is a defined state
        return ""
    return "\n".join(part for part in parts if isinstance(part, str))

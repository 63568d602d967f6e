"""What a message's address and subject headers say, read defensively."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email import message_from_string, policy
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader, BaseHeader
from email.message import EmailMessage, Message

from sarbot.connector import (
    LOOP_HEADER,
    Identifier,
    InvalidAddress,
    JSONValue,
    decode_header_value,
    normalize_address,
)

# Reply-To matters: a contact form usually sends from the website, with the visitor in Reply-To.
ADDRESS_HEADERS = ("From", "Reply-To", "To", "Cc")


SPACES_RE = re.compile(r"[ \t\r\f\v]+")
_FOLDING_RE = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class Party:
    """One mailbox named in an address header (or the header's text, if it cannot be read)."""

    shown: str
    address: str | None  # normalised; None when it is not a plain address


@dataclass(frozen=True)
class Headers:
    """What the address and subject headers of one message say."""

    parties: Mapping[str, tuple[Party, ...]]
    unreadable: bool
    subject: str
    looped: bool

    def shown(self, name: str) -> list[JSONValue]:
        return [party.shown for party in self.parties[name]]


def read_headers(head: bytes) -> Headers:
    """The headers of a header block.  Raw 8-bit text (SMTPUTF8 mail: ``alice@bücher.test``)
    is read as UTF-8, as the IMAP server's SEARCH reads it; bytes that are not UTF-8 become
    U+FFFD, which is in no address."""
    message = message_from_string(head.decode("utf-8", "replace"), policy=policy.default)
    raw = {name.casefold(): value for name, value in reversed(list(message.raw_items()))}
    parties: dict[str, tuple[Party, ...]] = {}
    unreadable = False
    for name in ADDRESS_HEADERS:
        try:
            parties[name] = tuple(parties_of(message, name))
        except Exception:  # malformed, or the stdlib parser broke on hostile input
            unreadable = True
            text = flat(raw.get(name.casefold(), ""))
            parties[name] = (Party(text, None),) if text else ()
    try:
        subject = flat(str(message.get("Subject", "")))
    except Exception:  # a malformed encoded word
        subject = flat(raw.get("subject", ""))
    return Headers(parties, unreadable, subject, LOOP_HEADER in message)


def parties_of(message: Message, name: str) -> Iterator[Party]:
    """The mailboxes of every ``name`` field of a message.

    A field the parser finds malformed raises ValueError: it names no one, as
    ``single_sender`` in sarbot.addresses refuses such a From.  A contact form
    writing ``{name} <{email}>`` unquoted makes ``alice@example.test <bob@other.test>``,
    whose parse keeps alice's address and loses bob's.  So is a field with an address
    that, as parsed, is not in the text as written: the parser dropped quotes, a comment,
    a control or line-separator character or a non-ASCII space (no-break space) from it.
    """
    for field, value in message.raw_items():
        if field.casefold() != name.casefold():
            continue
        written = _FOLDING_RE.sub("", str(value))
        header = policy.default.header_factory(name, written)
        if not isinstance(header, AddressHeader) or not isinstance(header, BaseHeader):
            raise ValueError("not an address header")
        if any(isinstance(defect, InvalidHeaderDefect) for defect in header.defects):
            raise ValueError("malformed address header")
        for mailbox in header.addresses:
            addr_spec = f"{mailbox.username}@{mailbox.domain}"
            try:
                address: str | None = normalize_address(addr_spec)
            except InvalidAddress:
                address = None
            if address is not None and addr_spec not in written:
                raise ValueError("an address not as written")
            yield Party(flat(str(mailbox)), address)


def flat(value: object) -> str:
    return SPACES_RE.sub(" ", decode_header_value(value).replace("\n", " ")).strip()


def date_of(message: EmailMessage) -> str | None:
    try:
        header = message["Date"]
        if header is None:
            return None
        moment = getattr(header, "datetime", None)
        return moment.isoformat() if moment is not None else flat(str(header))
    except Exception:  # an unparsable date stays as it was written
        return None


def match(headers: Headers, wanted: Mapping[str, Identifier]) -> Identifier | None:
    for name in ADDRESS_HEADERS:
        for party in headers.parties[name]:
            if party.address is not None and party.address in wanted:
                return wanted[party.address]
    return None

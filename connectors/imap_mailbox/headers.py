"""What a message's address and subject headers say, read defensively."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.headerregistry import AddressHeader
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
    message = message_from_bytes(head, policy=policy.default)
    raw = {name.casefold(): value for name, value in reversed(list(message.raw_items()))}
    parties: dict[str, tuple[Party, ...]] = {}
    unreadable = False
    for name in ADDRESS_HEADERS:
        try:
            parties[name] = tuple(parties_of(message, name))
        except Exception:  # the stdlib address parser raises assorted errors on hostile input
            unreadable = True
            text = flat(raw.get(name.casefold(), ""))
            parties[name] = (Party(text, None),) if text else ()
    try:
        subject = flat(str(message.get("Subject", "")))
    except Exception:  # a malformed encoded word
        subject = flat(raw.get("subject", ""))
    return Headers(parties, unreadable, subject, LOOP_HEADER in message)


def parties_of(message: Message, name: str) -> Iterator[Party]:
    for header in message.get_all(name) or ():
        if not isinstance(header, AddressHeader):
            raise ValueError("not an address header")
        for mailbox in header.addresses:
            try:
                address: str | None = normalize_address(f"{mailbox.username}@{mailbox.domain}")
            except InvalidAddress:
                address = None
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

"""``imap_mailbox``: a person's mail kept in internal mailboxes (contact-form copies, letters).

Each configured folder is opened read-only (IMAP EXAMINE) and searched for
messages from, to, copied to or with a Reply-To of any of the person's
addresses (a contact form sends from the website, with the visitor in
Reply-To), an internationalised one in its ASCII and its Unicode form (``alice@bücher.test``,
searched with CHARSET UTF-8).  IMAP SEARCH matches substrings, so every hit is checked again on
the parsed headers: only an exact match of the normalised address counts.  Messages
are only ever fetched with ``BODY.PEEK``, so no flag changes.

Never exported: anything carrying sarbot's loop header, mail from an address in
``exclude_from``, and the request thread itself (a subject with a reference
such as ``[SAR-2026-0001]`` or the words "GDPR DATA REQUEST").
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import replace
from email import message_from_bytes, policy
from typing import ClassVar

from imapclient import IMAPClient
from pydantic import BaseModel, Field, field_validator

from connectors.imap_mailbox.content import (
    contents,
)
from connectors.imap_mailbox.headers import (
    Headers,
    Party,
    date_of,
    match,
    read_headers,
)
from sarbot.connector import (
    OTHER_PERSON,
    ConnectorError,
    Identifier,
    Identity,
    ImapLogin,
    InvalidAddress,
    JSONValue,
    Record,
    domain_of,
    imap_session,
    normalize_address,
    with_other_people_note,
    written_forms,
)

CATEGORY = "Email"
SAR_REFERENCE_RE = re.compile(r"\[[A-Z]{2,10}-\d{4}-\d{4,9}\]")
REQUEST_PHRASE = "gdpr data request"
FETCH_BATCH = 100
UNREADABLE_NOTE = (
    "A message in this mailbox that may concern you could not be read, so it is not "
    "included; ask us and we will look at it by hand."
)
PART_UNREADABLE_NOTE = "Part of this message could not be read and is not included."
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class ImapMailboxSettings(ImapLogin):
    """How to log in (as sarbot's own mailbox does: TLS unless plaintext is allowed), and what
    to search."""

    folders: tuple[str, ...] = Field(min_length=1)
    exclude_from: tuple[str, ...] = ()
    own_domains: tuple[str, ...] = ()
    max_messages: int = Field(default=500, gt=0)
    max_body_chars: int = Field(default=20_000, gt=0)

    @field_validator("folders")
    @classmethod
    def _plain_folder_names(cls, folders: tuple[str, ...]) -> tuple[str, ...]:
        for folder in folders:
            if not folder.strip() or _CONTROL_RE.search(folder):
                raise ValueError("a folder name must be non-empty text without control characters")
        if len(set(folders)) != len(folders):
            raise ValueError("a folder is listed twice")
        return folders

    @field_validator("exclude_from")
    @classmethod
    def _normalised_addresses(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(normalize_address(address) for address in addresses)
        except InvalidAddress as exc:
            raise ValueError(f"not a plain email address ({exc})") from None

    @field_validator("own_domains")
    @classmethod
    def _normalised_domains(cls, domains: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(domain_of(normalize_address(f"x@{domain}")) for domain in domains)
        except InvalidAddress:
            raise ValueError("not a plain domain name") from None


def imap_search_criteria(address: str) -> bytes:
    """FROM, TO, CC or Reply-To the address, given as a quoted string, never as syntax."""
    if not address.isascii() or _CONTROL_RE.search(address):
        raise ValueError("an IMAP quoted string takes printable ASCII only")
    quoted = '"' + address.replace("\\", "\\\\").replace('"', '\\"') + '"'
    criteria = f"OR OR OR FROM {quoted} TO {quoted} CC {quoted} HEADER Reply-To {quoted}"
    return criteria.encode("ascii")


def unicode_search_criteria(address: str) -> list[bytes]:
    """The same criteria for an address written in Unicode, to send with CHARSET UTF-8.

    Each value holds 8-bit bytes, so imapclient sends it as a literal, never as syntax.
    """
    if address.isascii() or _CONTROL_RE.search(address):
        raise ValueError("a UTF-8 search is for a non-ASCII address without control characters")
    value = address.encode("utf-8")
    or_three = [b"OR", b"OR", b"OR"]
    return [*or_three, b"FROM", value, b"TO", value, b"CC", value, b"HEADER", b"Reply-To", value]


class ImapMailboxConnector:
    """Exports the person's messages from the configured folders of one IMAP account."""

    Settings: ClassVar[type[BaseModel]] = ImapMailboxSettings

    def __init__(self, name: str, settings: ImapMailboxSettings) -> None:
        self.name = name
        self.settings = settings
        self.excluded = frozenset(settings.exclude_from)
        # The company's own addresses are shown; everyone else's are withheld.  Its domains
        # are named by the admin, never derived: a mailbox at a shared provider (gmail.com)
        # would otherwise make every other customer of that provider "the company".
        own = [settings.username, *settings.exclude_from]
        self.own_addresses = frozenset(_normalized(a) for a in own) - {None}
        self.own_domains = frozenset(settings.own_domains)

    def check(self) -> None:
        with imap_session(self.settings) as client:
            for folder in self.settings.folders:
                _select(client, folder)

    def collect(self, identity: Identity) -> Iterator[Record]:
        wanted: dict[str, Identifier] = {}
        for identifier in identity.of_kind("email"):
            with suppress(InvalidAddress):
                wanted.setdefault(normalize_address(identifier.value), identifier)
        if not wanted:
            return
        with imap_session(self.settings) as client:
            found = (
                record
                for folder in self.settings.folders
                for record in self._folder_records(client, folder, wanted)
            )
            yield from _capped(found, self.settings.max_messages)

    def close(self) -> None:
        """Nothing is held open: each lookup has its own IMAP session."""

    def _folder_records(
        self, client: IMAPClient, folder: str, wanted: Mapping[str, Identifier]
    ) -> Iterator[Record]:
        uidvalidity = _select(client, folder)
        candidates = _search(client, folder, wanted)
        uids = sorted(candidates)
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            heads = client.fetch(batch, ["BODY.PEEK[HEADER]"])
            for uid in batch:
                head = _item(heads.get(uid), b"BODY[HEADER]")
                if head is None:  # expunged since the search
                    continue
                location = f"folder '{folder}', UID {uid}"
                key = f"{folder}:{uidvalidity}:{uid}"
                unreadable = Record(
                    CATEGORY,
                    {},
                    wanted[candidates[uid]],
                    location,
                    notes=(UNREADABLE_NOTE,),
                    key=key,
                )
                try:
                    headers = read_headers(head)
                except Exception:  # a hostile header block may break the parser in any way
                    yield unreadable
                    continue
                if self._excluded(headers):
                    continue
                found_by = match(headers, wanted)
                if found_by is None:
                    if headers.unreadable:  # it may be theirs; say so rather than guess
                        yield unreadable
                    continue
                raw = _item(client.fetch([uid], ["BODY.PEEK[]"]).get(uid), b"BODY[]")
                if raw is None:
                    continue
                try:
                    yield self._record(raw, headers, found_by, wanted, location, key)
                except Exception:  # malformed mail is reported, never fatal
                    yield replace(unreadable, found_by=found_by)

    def _excluded(self, headers: Headers) -> bool:
        subject = headers.subject.casefold()
        if headers.looped or REQUEST_PHRASE in subject or SAR_REFERENCE_RE.search(headers.subject):
            return True
        for party in headers.parties["From"]:
            if party.address is None:  # unreadable: look for the address in the text
                if any(address in party.shown.casefold() for address in self.excluded):
                    return True
            elif party.address in self.excluded:
                return True
        return False

    def _record(
        self,
        raw: bytes,
        headers: Headers,
        found_by: Identifier,
        wanted: Mapping[str, Identifier],
        location: str,
        key: str,
    ) -> Record:
        notes: list[str] = []
        message = message_from_bytes(raw, policy=policy.default)
        try:
            text, attachments = contents(message)
        except Exception:  # a broken MIME structure must not lose the headers
            text, attachments = "", []
            notes.append(PART_UNREADABLE_NOTE)
        limit = self.settings.max_body_chars
        if len(text) > limit:
            text = text[:limit]
            notes.append(
                f"The text of this message is longer than {limit} characters; "
                f"only the first {limit} are included."
            )
        if headers.unreadable and PART_UNREADABLE_NOTE not in notes:
            notes.append(PART_UNREADABLE_NOTE)
        shown = self._shown_parties(headers, wanted)
        fields: dict[str, JSONValue] = {
            "Date": date_of(message),
            "From": ", ".join(shown["From"]),
            "To": list(shown["To"]),
            "Cc": list(shown["Cc"]),
            "Reply-To": list(shown["Reply-To"]),
            "Subject": headers.subject,
            "Text": text,
            "Attachments": attachments,
        }
        record = Record(CATEGORY, fields, found_by, location=location, notes=tuple(notes), key=key)
        return with_other_people_note(record)  # another's address was withheld above

    def _is_other(self, party: Party, wanted: Mapping[str, Identifier]) -> bool:
        """Anyone but the person and the company (an unreadable party counts as another)."""
        if party.address is None:
            return True
        mine = party.address in wanted or party.address in self.own_addresses
        return not mine and domain_of(party.address) not in self.own_domains

    def _shown_parties(
        self, headers: Headers, wanted: Mapping[str, Identifier]
    ) -> dict[str, list[str]]:
        """Each address header as shown, other people's addresses withheld."""
        return {
            name: [OTHER_PERSON if self._is_other(p, wanted) else p.shown for p in parties]
            for name, parties in headers.parties.items()
        }


def _normalized(address: str) -> str | None:
    try:
        return normalize_address(address)
    except InvalidAddress:
        return None


def _select(client: IMAPClient, folder: str) -> int:
    """Open a folder read-only; its UIDVALIDITY."""
    try:
        selected = client.select_folder(folder, readonly=True)
    except imaplib.IMAP4.error:
        raise ConnectorError(f"folder '{folder}' does not exist or cannot be opened") from None
    if b"READ-ONLY" not in selected:
        raise ConnectorError(f"the server did not open folder '{folder}' read-only")
    return int(selected[b"UIDVALIDITY"])


def _search(client: IMAPClient, folder: str, wanted: Iterable[str]) -> dict[int, str]:
    """The UIDs that IMAP SEARCH finds for each address, in each form it may be written in
    (substring hits, still to verify)."""
    found: dict[int, str] = {}
    for address in wanted:
        for written in written_forms(address):
            try:
                if written.isascii():
                    uids = client.search(imap_search_criteria(written))
                else:  # a server without UTF-8 search fails the lookup rather than miss mail
                    uids = client.search(unicode_search_criteria(written), charset="UTF-8")
            except imaplib.IMAP4.error:  # the library's message would quote the address
                raise ConnectorError(f"IMAP SEARCH failed in folder '{folder}'") from None
            for uid in uids:
                found.setdefault(int(uid), address)
    return found


def _item(data: Mapping[bytes, object] | None, prefix: bytes) -> bytes | None:
    if data is None:
        return None
    value = next((v for k, v in data.items() if k.startswith(prefix)), None)
    return value if isinstance(value, bytes) else None


def _capped(records: Iterator[Record], cap: int) -> Iterator[Record]:
    """At most ``cap`` records; the last one says so when more were found."""
    held: Record | None = None
    for count, record in enumerate(records):
        if count == cap and held is not None:
            note = (
                f"More than {cap} messages in this mailbox concern you; "
                f"only the first {cap} are included. Ask us for the rest."
            )
            yield replace(held, notes=(*held.notes, note))
            return
        if held is not None:
            yield held
        held = record
    if held is not None:
        yield held

"""``imap_mailbox``: a person's mail kept in internal mailboxes (contact-form copies, letters).

Each configured folder is opened read-only (IMAP EXAMINE) and searched for
messages from, to, copied to or with a Reply-To of any of the person's
addresses (a contact form sends from the website, with the visitor in
Reply-To).  IMAP SEARCH matches substrings, so every hit is checked again on
the parsed headers: only an exact match of the normalised address counts.  Messages
are only ever fetched with ``BODY.PEEK``, so no flag changes.

Never exported: anything carrying sarbot's loop header, mail from an address in
``exclude_from``, and the request thread itself (a subject with a reference
such as ``[SAR-2026-0001]`` or the words "GDPR DATA REQUEST").
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from email import message_from_bytes, policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from typing import ClassVar, Literal

from imapclient import IMAPClient
from pydantic import BaseModel, Field, field_validator

from sarbot.config import Section
from sarbot.connector import (
    OTHER_PERSON,
    Identifier,
    Identity,
    JSONValue,
    Record,
    with_other_people_note,
)
from sarbot.errors import ConnectorError
from sarbot.mail.addresses import InvalidAddress, domain_of, normalize_address
from sarbot.mail.guards import LOOP_HEADER
from sarbot.mail.message import decode_header_value
from sarbot.secretref import ConfigPath, Secret

CATEGORY = "Email"
# Reply-To matters: a contact form usually sends from the website, with the visitor in Reply-To.
ADDRESS_HEADERS = ("From", "Reply-To", "To", "Cc")
SAR_REFERENCE_RE = re.compile(r"\[[A-Z]{2,10}-\d{4}-\d{4,9}\]")
REQUEST_PHRASE = "gdpr data request"
FETCH_BATCH = 100
MAX_MIME_DEPTH = 30
UNREADABLE_NOTE = (
    "A message in this mailbox that may concern you could not be read, so it is not "
    "included; ask us and we will look at it by hand."
)
PART_UNREADABLE_NOTE = "Part of this message could not be read and is not included."
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_BLANK_LINES_RE = re.compile(r"\n\s*\n\s*")
_SPACES_RE = re.compile(r"[ \t\r\f\v]+")


class ImapMailboxSettings(Section):
    host: str = Field(min_length=1)
    port: int = Field(default=993, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    password: Secret
    ca_file: ConfigPath | None = None
    folders: tuple[str, ...] = Field(min_length=1)
    exclude_from: tuple[str, ...] = ()
    own_domains: tuple[str, ...] = ()
    max_messages: int = Field(default=500, gt=0)
    max_body_chars: int = Field(default=20_000, gt=0)
    timeout: float = Field(default=60.0, gt=0)

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
        with self._session() as client:
            for folder in self.settings.folders:
                _select(client, folder)

    def collect(self, identity: Identity) -> Iterator[Record]:
        wanted: dict[str, Identifier] = {}
        for identifier in identity.of_kind("email"):
            with suppress(InvalidAddress):
                wanted.setdefault(normalize_address(identifier.value), identifier)
        if not wanted:
            return
        with self._session() as client:
            found = (
                record
                for folder in self.settings.folders
                for record in self._folder_records(client, folder, wanted)
            )
            yield from _capped(found, self.settings.max_messages)

    def close(self) -> None:
        """Nothing is held open: each lookup has its own IMAP session."""

    @contextmanager
    def _session(self) -> Iterator[IMAPClient]:
        s = self.settings
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        client = IMAPClient(
            s.host, port=s.port, ssl=s.security == "tls", ssl_context=context, timeout=s.timeout
        )
        try:
            if s.security == "starttls":
                client.starttls(context)
            client.login(s.username, s.password.get_secret_value())
            yield client
        finally:
            with suppress(Exception):
                client.logout()
            with suppress(Exception):
                client.shutdown()

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
                    headers = _read_headers(head)
                except Exception:  # a hostile header block may break the parser in any way
                    yield unreadable
                    continue
                if self._excluded(headers):
                    continue
                found_by = _match(headers, wanted)
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
            text, attachments = _contents(message)
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
            "Date": _date(message),
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
    """The UIDs that IMAP SEARCH finds for each address (substring hits, still to verify)."""
    found: dict[int, str] = {}
    for address in wanted:
        try:
            uids = client.search(imap_search_criteria(address))
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


def _match(headers: Headers, wanted: Mapping[str, Identifier]) -> Identifier | None:
    for name in ADDRESS_HEADERS:
        for party in headers.parties[name]:
            if party.address is not None and party.address in wanted:
                return wanted[party.address]
    return None


def _read_headers(head: bytes) -> Headers:
    message = message_from_bytes(head, policy=policy.default)
    raw = {name.casefold(): value for name, value in reversed(list(message.raw_items()))}
    parties: dict[str, tuple[Party, ...]] = {}
    unreadable = False
    for name in ADDRESS_HEADERS:
        try:
            parties[name] = tuple(_parties(message, name))
        except Exception:  # the stdlib address parser raises assorted errors on hostile input
            unreadable = True
            text = _flat(raw.get(name.casefold(), ""))
            parties[name] = (Party(text, None),) if text else ()
    try:
        subject = _flat(str(message.get("Subject", "")))
    except Exception:  # a malformed encoded word
        subject = _flat(raw.get("subject", ""))
    return Headers(parties, unreadable, subject, LOOP_HEADER in message)


def _parties(message: Message, name: str) -> Iterator[Party]:
    for header in message.get_all(name) or ():
        if not isinstance(header, AddressHeader):
            raise ValueError("not an address header")
        for mailbox in header.addresses:
            try:
                address: str | None = normalize_address(f"{mailbox.username}@{mailbox.domain}")
            except InvalidAddress:
                address = None
            yield Party(_flat(str(mailbox)), address)


def _flat(value: object) -> str:
    return _SPACES_RE.sub(" ", decode_header_value(value).replace("\n", " ")).strip()


def _date(message: EmailMessage) -> str | None:
    try:
        header = message["Date"]
        if header is None:
            return None
        moment = getattr(header, "datetime", None)
        return moment.isoformat() if moment is not None else _flat(str(header))
    except Exception:  # an unparsable date stays as it was written
        return None


def _contents(message: EmailMessage) -> tuple[str, list[JSONValue]]:
    """The text of a message (its plain parts, else its HTML as text) and its attachments."""
    plain: list[str] = []
    html: list[str] = []
    attachments: list[JSONValue] = []
    for part in _leaves(message, 0):
        content_type = part.get_content_type()
        filename = part.get_filename()
        inline_text = content_type in ("text/plain", "text/html") and not filename
        if inline_text and part.get_content_disposition() != "attachment":
            (plain if content_type == "text/plain" else html).append(_decoded(part))
            continue
        name = _flat(filename) if filename else f"(unnamed {content_type})"
        attachments.append({"name": name, "size_bytes": _size(part)})
    texts = [t.strip() for t in plain] if plain else [_html_text(h) for h in html]
    return "\n\n".join(t for t in texts if t), attachments


def _leaves(part: Message, depth: int) -> Iterator[Message]:
    """The parts that hold content; an attached message counts as one attachment."""
    if depth > MAX_MIME_DEPTH:
        raise ValueError("MIME structure nested too deeply")
    if part.get_content_maintype() == "multipart" and part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                yield from _leaves(child, depth + 1)
    else:
        yield part


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except (LookupError, ValueError):  # unknown or non-text charset names
        return payload.decode("utf-8", errors="replace")


def _size(part: Message) -> int | None:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return len(payload)
    try:
        return len(part.as_bytes())
    except Exception:  # an attached message that cannot be serialised again
        return None


class _HtmlText(HTMLParser):
    """The visible text of an HTML document, one line per block."""

    BLOCKS = frozenset(
        {"address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1"}
        | {"h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section"}
        | {"table", "td", "th", "tr", "ul"}
    )
    HIDDEN = frozenset({"head", "script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, 1)

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, -1)

    def _tag(self, tag: str, step: int) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden + step)
        elif tag in self.BLOCKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data)


def _html_text(document: str) -> str:
    parser = _HtmlText()
    parser.feed(document)
    parser.close()
    lines = (_SPACES_RE.sub(" ", line).strip() for line in "".join(parser.chunks).split("\n"))
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip()

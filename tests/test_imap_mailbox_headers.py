"""``imap_mailbox``'s reading of address headers, on header blocks as written (no server).

The connector's searches and exports are tested against the mail stack's Dovecot in
test_connector_imap_mailbox.py; these are the header forms behind them.
"""

from __future__ import annotations

import pytest

from connectors.imap_mailbox.connector import unicode_search_criteria
from connectors.imap_mailbox.headers import ADDRESS_HEADERS, Headers, match, read_headers
from sarbot.connector import Identity

ALICE = "alice@example.test"
BOB = "bob@other.test"
WANTED = {
    address: Identity.verified(address).identifiers[0]
    for address in (ALICE, BOB, "alice@xn--bcher-kva.test")
}


def headers(field: str, value: str, *, encoding: str = "utf-8") -> Headers:
    others = {"From": "website@redtrain.test", "To": "contact@redtrain.test"}
    others[field] = value
    head = "".join(f"{name}: {text}\r\n" for name, text in others.items())
    return read_headers(f"{head}Subject: Contact form\r\n\r\n".encode(encoding))


@pytest.mark.parametrize("field", ADDRESS_HEADERS)
@pytest.mark.parametrize(
    "value",
    [
        f"{ALICE} <{BOB}>",  # a PHP form's "{name} <{email}>", an address typed as the name
        f"Bob for {ALICE} <{BOB}>",
        f"Bob (PA), {ALICE} <{BOB}>",
        f"{ALICE}: {BOB};",  # a group whose name is an address
        f"Bob <{ALICE}",  # no closing bracket
        "=?utf-8?q?alice?=@example.test",  # an encoded word is never an address
        '"alice"@example.test',  # quotes the parser drops
        "alice(c)@example.test",  # a comment the parser drops
        "alice@example\x0b.test",  # a control character the parser drops
        "alice@example\u00a0.test",  # a non-ASCII space the parser drops
        "alice@example\u2028.test",  # a line separator the parser drops
        f"{BOB}\u0085Cc: {ALICE}",  # a next-line character that is no new line
    ],
)
def test_a_field_not_read_as_written_names_no_one(field: str, value: str) -> None:
    """A field the parser finds malformed, or whose address it had to piece together, is
    unreadable (as sarbot.addresses.single_sender refuses such a From): neither alice nor bob
    is named by it, and its text is kept as written for the withheld placeholder."""
    read = headers(field, value)
    assert read.unreadable
    assert match(read, WANTED) is None
    [party] = read.parties[field]
    assert party.address is None
    assert "\n" not in party.shown


@pytest.mark.parametrize("field", ADDRESS_HEADERS)
def test_well_formed_fields_still_name_their_people(field: str) -> None:
    """The look-alike forms written as the standard says still name the one they name."""
    quoted = headers(field, f'"{ALICE}" <{BOB}>')
    assert not quoted.unreadable
    assert [p.address for p in quoted.parties[field]] == [BOB]
    both = headers(field, f'"Alice" <{ALICE}>, Bob\r\n <{BOB}>')
    assert not both.unreadable
    assert [p.address for p in both.parties[field]] == [ALICE, BOB]
    assert [p.shown for p in both.parties[field]] == [f"Alice <{ALICE}>", f"Bob <{BOB}>"]


@pytest.mark.parametrize("field", ADDRESS_HEADERS)
def test_raw_utf8_is_read_as_utf8(field: str) -> None:
    """SMTPUTF8 mail carries its headers in raw UTF-8: a Unicode domain is the address, in its
    ASCII form; a name and a subject read as written."""
    read = headers(field, "Jürgen <alice@BÜCHER.test>")
    assert not read.unreadable
    [party] = read.parties[field]
    assert party == type(party)("Jürgen <alice@BÜCHER.test>", "alice@xn--bcher-kva.test")
    subject = read_headers("Subject: Grüße\r\n\r\n".encode()).subject
    assert subject == "Grüße"


def test_bytes_that_are_not_utf8_make_no_address() -> None:
    """A Latin-1 byte in a domain is no character of any address: no one is named by it."""
    read = headers("Reply-To", "alice@bücher.test", encoding="latin-1")
    assert match(read, WANTED) is None
    assert [p.address for p in read.parties["Reply-To"]] == [None]


def test_unicode_search_criteria() -> None:
    """The UTF-8 search takes a non-ASCII address only (its values go as literals), never
    control characters."""
    value = "alice@bücher.test".encode()
    assert unicode_search_criteria("alice@bücher.test") == [
        *(b"OR", b"OR", b"OR"),
        *(b"FROM", value, b"TO", value, b"CC", value, b"HEADER", b"Reply-To", value),
    ]
    for address in ("alice@example.test", "alice@bücher.test\r\nA1 LOGOUT"):
        with pytest.raises(ValueError, match="non-ASCII address"):
            unicode_search_criteria(address)

"""The ``imap_mailbox`` connector against the real Dovecot of scripts/mailstack."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from connectors.imap_mailbox import (
    PART_UNREADABLE_NOTE,
    UNREADABLE_NOTE,
    ImapMailboxConnector,
    ImapMailboxSettings,
    imap_search_criteria,
)
from sarbot.config import validate
from sarbot.connector import OTHER_PEOPLE_NOTE, OTHER_PERSON, Identifier, Identity, Record, Trust
from sarbot.errors import ConfigError, ConnectorError
from sarbot.mail.guards import LOOP_HEADER
from sarbot.mail.oauth import OAuthError
from sarbot.testing import Correspondent, MailServer, stack
from sarbot.testing.idp import IdpClient
from tests.conftest import CA_FILE, unique
from tests.oauthkit import generic_table, new_client, write_secret

pytestmark = pytest.mark.mailstack

FOLDER = "Contact form"
HOSTILE = 'a") OR ALL (FROM "x'


def imap_as(server: MailServer, address: str) -> IMAPClient:
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    client.starttls(server.tls())
    client.login(address, server.password)
    return client


@pytest.fixture
def contact(mailstack: MailServer) -> Correspondent:
    """A fresh company mailbox with an empty 'Contact form' folder."""
    box = Correspondent(mailstack, unique("contact", "redtrain.test"))
    with imap_as(mailstack, box.address) as client:
        client.create_folder(FOLDER)
    return box


@pytest.fixture
def alice() -> str:
    return unique("alice", "example.test")


def mail(
    sender: str,
    to: str,
    subject: str = "Hello",
    body: str = "Hi there",
    *,
    cc: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Date"] = "Tue, 03 Feb 2026 10:11:12 +0100"
    message["Message-ID"] = make_msgid(domain="example.test")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


def put(box: Correspondent, message: EmailMessage | bytes, folder: str = FOLDER) -> None:
    raw = message if isinstance(message, bytes) else message.as_bytes(policy=policy.SMTP)
    box.append(raw, folder)


def connector(tmp_path: Path, box: Correspondent, **overrides: Any) -> ImapMailboxConnector:
    secret = tmp_path / "mailbox-password"
    secret.write_text("test\n")
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": stack.port("imap"),
        "security": "starttls",
        "ca_file": str(CA_FILE),
        "username": box.address,
        "password": {"file": str(secret)},
        "folders": [FOLDER],
        "timeout": 30,
        **overrides,
    }
    data = {key: value for key, value in data.items() if value is not None}
    settings = validate(data, ImapMailboxSettings, source="test", base_dir=tmp_path)
    return ImapMailboxConnector("mailbox", settings)


def collect(tmp_path: Path, box: Correspondent, address: str, **overrides: Any) -> list[Record]:
    found = connector(tmp_path, box, **overrides)
    try:
        return list(found.collect(Identity.verified(address)))
    finally:
        found.close()


def subjects(records: list[Record]) -> list[Any]:
    return [record.fields.get("Subject") for record in records]


class TestMatching:
    def test_matches_from_to_and_cc(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Mail from, to or copied to the person is found, with provenance, location and key."""
        put(contact, mail(f"Alice <{alice.upper()}>", contact.address, "from her"))
        put(contact, mail(contact.address, alice, "to her"))
        put(contact, mail(contact.address, "bob@redtrain.test", "copied to her", cc=alice))
        put(contact, mail("carol@example.test", contact.address, "someone else"))
        identity = Identity.verified(alice)
        records = list(connector(tmp_path, contact).collect(identity))
        assert subjects(records) == ["from her", "to her", "copied to her"]
        assert all(r.found_by is identity.identifiers[0] for r in records)
        first = records[0]
        assert first.category == "Email"
        assert first.location == f"folder '{FOLDER}', UID 1"
        assert first.key.startswith(f"{FOLDER}:") and first.key.endswith(":1")
        assert first.fields["From"] == f"Alice <{alice.upper()}>"
        assert first.fields["To"] == [contact.address]
        assert first.fields["Date"] == "2026-02-03T10:11:12+01:00"
        assert first.fields["Text"] == "Hi there"
        assert records[2].fields["Cc"] == [alice]
        assert all(r.yields == () for r in records)

    def test_contact_form_mail_is_found_by_reply_to(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """A form sends from the website with the visitor in Reply-To: that mail is hers."""
        form = mail(
            "website@redtrain.test",
            contact.address,
            "Contact form: backups",
            headers={"Reply-To": f"Alice <{alice}>"},
        )
        put(contact, form)
        put(
            contact,
            mail(
                "website@redtrain.test",
                contact.address,
                "Contact form: other",
                headers={"Reply-To": "malice@example.test"},
            ),
        )
        records = collect(tmp_path, contact, alice)
        assert subjects(records) == ["Contact form: backups"]
        assert records[0].fields["Reply-To"] == [f"Alice <{alice}>"]

    def test_lookalike_addresses_do_not_match(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """IMAP SEARCH substring hits (malice@, alice@....evil.test, display names) are dropped."""
        put(contact, mail(f"m{alice}", contact.address, "malice"))
        put(contact, mail(f"{alice}.evil.test", contact.address, "longer domain"))
        put(contact, mail(f'"{alice}" <mallory@evil.test>', contact.address, "display name"))
        put(contact, mail(contact.address, f"Someone <x.{alice}>", "prefix"))
        assert collect(tmp_path, contact, alice) == []

    def test_later_round_identifier_and_every_folder(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """An address found in a later round is searched in every folder and credited."""
        other = unique("a.smith", "example.test")
        put(contact, mail(other, contact.address, "in contact form"))
        put(contact, mail(contact.address, other, "in inbox"), folder="INBOX")
        put(contact, mail(alice, contact.address, "verified address only"))
        origin = "keepass 'vault': UserName of entry 1 in group 'Clients'"
        found_by = Identifier("email", other, origin, "email", Trust.CONTROLLER)
        identity = Identity(alice, (found_by,))
        records = list(connector(tmp_path, contact, folders=[FOLDER, "INBOX"]).collect(identity))
        assert subjects(records) == ["in contact form", "in inbox"]
        assert [r.location for r in records] == [
            f"folder '{FOLDER}', UID 1",
            "folder 'INBOX', UID 1",
        ]
        assert all(r.found_by is found_by for r in records)


class TestExclusion:
    def test_own_mail_and_the_request_thread_are_never_exported(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Loop header, exclude_from senders, SAR references and the request phrase are skipped."""
        sarbot = unique("support", "redtrain.test")
        put(contact, mail(contact.address, alice, "Looped", headers={LOOP_HEADER: sarbot}))
        put(contact, mail(sarbot, alice, "Please confirm"))
        put(contact, mail(alice, sarbot, "Re: [SAR-2026-0001] Your data"))
        put(contact, mail(alice, sarbot, "GDPR Data Request"))
        put(contact, mail(alice, sarbot, "Grüße: gdpr data request bitte"))
        put(contact, mail(alice, contact.address, "Question about my invoice [ref 2026-1]"))
        records = collect(tmp_path, contact, alice, exclude_from=[sarbot.upper()])
        assert subjects(records) == ["Question about my invoice [ref 2026-1]"]


class TestReadOnly:
    def test_flags_and_messages_are_unchanged(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Collecting sets no flag (no \\Seen) and leaves every message where it was."""
        put(contact, mail(alice, contact.address, "one"))
        put(contact, mail(contact.address, alice, "two"))
        before = contact.flags(FOLDER)
        assert len(collect(tmp_path, contact, alice)) == 2
        after = contact.flags(FOLDER)
        assert after == before
        assert all(b"\\Seen" not in flags for _id, flags in after)
        assert len(contact.messages(FOLDER)) == 2


class TestContent:
    def test_attachments_are_listed_and_plain_text_preferred(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """The plain part is the text; attachments are named with their size."""
        message = mail(alice, contact.address, "with files", "Plain words.")
        message.add_alternative("<p>HTML words.</p>", subtype="html")
        message.add_attachment(b"%PDF" + bytes(1020), "application", "pdf", filename="cv.pdf")
        message.add_attachment("notes\n", filename="Notizen für später.txt")
        put(contact, message)
        (record,) = collect(tmp_path, contact, alice)
        assert record.fields["Text"] == "Plain words."
        assert record.fields["Attachments"] == [
            {"name": "cv.pdf", "size_bytes": 1024},
            {"name": "Notizen für später.txt", "size_bytes": 7},  # "notes\r\n" as sent
        ]

    def test_html_only_mail_gives_its_text(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Without a plain part, the HTML is read as text: tags, scripts and styles removed."""
        message = mail(alice, contact.address, "html")
        message.set_content(
            "<html><head><style>p{color:red}</style><title>T</title></head><body>"
            "<p>Dear team,</p><p>I&#39;d like a &quot;quote&quot; &amp; more.<br>Thanks</p>"
            "<script>alert(1)</script></body></html>",
            subtype="html",
            charset="iso-8859-1",
        )
        put(contact, message)
        (record,) = collect(tmp_path, contact, alice)
        assert record.fields["Text"] == 'Dear team,\n\nI\'d like a "quote" & more.\nThanks'
        assert record.fields["Attachments"] == []

    def test_long_text_is_cut_and_the_cap_is_noted(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Text beyond max_body_chars is cut, messages beyond max_messages left out; both noted."""
        for number in range(3):
            put(contact, mail(alice, contact.address, f"n{number}", "x" * 100))
        records = collect(tmp_path, contact, alice, max_messages=2, max_body_chars=40)
        assert subjects(records) == ["n0", "n1"]
        assert all(r.fields["Text"] == "x" * 40 for r in records)
        assert "longer than 40 characters" in records[0].notes[0]
        assert len(records[0].notes) == 1
        assert "More than 2 messages" in records[1].notes[-1]

    def test_other_people_note(self, tmp_path: Path, contact: Correspondent, alice: str) -> None:
        """Only mail naming someone besides the person and the company gets the note; the
        company's addresses are those at the domains the admin names in own_domains."""
        put(contact, mail(alice, contact.address, "just us", cc="sales@redtrain.test"))
        put(contact, mail(alice, contact.address, "with bob", cc="bob@example.test"))
        records = collect(tmp_path, contact, alice, own_domains=["RedTrain.test"])
        assert [r.notes for r in records] == [(), (OTHER_PEOPLE_NOTE,)]
        assert records[0].fields["Cc"] == ["sales@redtrain.test"]
        assert records[1].fields["Cc"] == [OTHER_PERSON]

    def test_the_company_domain_is_never_guessed(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Without own_domains, only the mailbox's own address (and exclude_from's) is the
        company's: a colleague at the mailbox's domain is withheld like anyone else."""
        put(contact, mail(alice, contact.address, "just us", cc="sales@redtrain.test"))
        [record] = collect(tmp_path, contact, alice)
        assert record.fields["To"] == [contact.address]
        assert record.fields["Cc"] == [OTHER_PERSON]
        assert record.notes == (OTHER_PEOPLE_NOTE,)

    def test_other_peoples_addresses_are_withheld(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Addresses of people other than the person and the company never leave."""
        put(
            contact, mail(alice, contact.address, "with bob", cc=f"Bob <bob@example.test>, {alice}")
        )
        [record] = collect(tmp_path, contact, alice)
        assert record.fields["Cc"] == [OTHER_PERSON, alice]
        assert record.fields["To"] == [contact.address]
        assert "bob@" not in repr(record.fields)


class TestSharedProvider:
    def test_customers_of_the_mailboxs_provider_are_other_people(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """A company mailbox at a shared provider (here example.test, as gmail.com would be):
        two customers there, alice and another alice, each see their own mail with the other's
        address withheld, never each other's mail; the mailbox's own address and the excluded
        sarbot address are shown."""
        box = Correspondent(mailstack, unique("redtrain.contact", "example.test"))
        with imap_as(mailstack, box.address) as client:
            client.create_folder(FOLDER)
        alice, other = unique("alice", "example.test"), unique("alice", "example.test")
        sarbot = unique("redtrain.sar", "example.test")
        put(box, mail(alice, box.address, "both of us", cc=f"Alice B <{other}>"))
        put(box, mail(other, box.address, "only the other alice", cc=sarbot))
        put(box, mail(alice, box.address, "only alice", cc=sarbot))
        mine = collect(tmp_path, box, alice, exclude_from=[sarbot])
        theirs = collect(tmp_path, box, other, exclude_from=[sarbot])
        assert subjects(mine) == ["both of us", "only alice"]
        assert subjects(theirs) == ["both of us", "only the other alice"]
        assert mine[0].fields["From"] == alice
        assert mine[0].fields["To"] == [box.address]
        assert mine[0].fields["Cc"] == [OTHER_PERSON]
        assert mine[0].notes == (OTHER_PEOPLE_NOTE,)
        assert theirs[0].fields["From"] == OTHER_PERSON
        assert theirs[0].fields["Cc"] == [f"Alice B <{other}>"]
        assert mine[1].fields["Cc"] == [sarbot] and mine[1].notes == ()
        assert other not in repr([r.fields for r in mine])
        assert alice not in repr([r.fields for r in theirs])


class TestMalformed:
    def test_malformed_mail_is_reported_not_fatal(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """Broken headers, charsets and encodings give notes; the rest is still collected."""
        broken_body = (
            f"From: {alice}\r\nTo: {contact.address}, a@\r\nSubject: =?x-bogus?q?odd?=\r\n"
            "Date: yesterday\r\nMIME-Version: 1.0\r\n"
            'Content-Type: text/plain; charset="x-no-such-charset"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n!!not base64 \xff\r\n"
        ).encode("latin-1")
        unverifiable = f"From: bob@evil.test\r\nTo: {alice}, a@\r\nSubject: x\r\n\r\nhi\r\n"
        put(contact, broken_body)
        put(contact, unverifiable.encode())
        put(contact, mail(alice, contact.address, "fine"))
        records = collect(tmp_path, contact, alice)
        assert len(records) == 3
        broken, placeholder, fine = records
        assert broken.fields["From"] == alice
        assert broken.fields["To"] == [OTHER_PERSON]  # unreadable: it may name anyone
        assert broken.fields["Date"] == "yesterday"
        assert isinstance(broken.fields["Text"], str)
        assert PART_UNREADABLE_NOTE in broken.notes
        assert placeholder.fields == {} and placeholder.notes == (UNREADABLE_NOTE,)
        assert placeholder.location == f"folder '{FOLDER}', UID 2"
        assert fine.fields["Subject"] == "fine" and fine.notes == ()


def raw_mail(headers: dict[str, str], body: str = "hi") -> bytes:
    """A message exactly as written, in UTF-8: EmailMessage would quote a malformed address
    header and encode a Unicode one."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    plain = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    return f"{head}{plain}\r\n{body}\r\n".encode()


class TestLookalikeHeaders:
    @pytest.mark.parametrize("field", ["Reply-To", "From", "To", "Cc"])
    def test_a_malformed_address_header_names_no_one(
        self, tmp_path: Path, contact: Correspondent, alice: str, field: str
    ) -> None:
        """Bob's form copy written ``{name} <{email}>`` unquoted, alice's address typed as the
        name: the parser flags the field, so it names no one.  Neither alice nor bob gets any
        of that message (at most the could-not-be-read placeholder, as for any unreadable
        header); each still gets all of their own well-formed mail."""
        bob = unique("bob", "other.test")
        website = {"From": "website@redtrain.test", "To": contact.address}
        malformed = {**website, field: f"{alice} <{bob}>", "Subject": "Bob's question"}
        put(contact, raw_mail(malformed, "I'm Bob Jones, 07700 900123, about my account."))
        for subject, reply_to in [("Alice's question", f'"Alice" <{alice}>'), ("Bob's", bob)]:
            put(contact, raw_mail({**website, "Reply-To": reply_to, "Subject": subject}))
        mine, theirs = collect(tmp_path, contact, alice), collect(tmp_path, contact, bob)
        assert subjects(mine) == [None, "Alice's question"]
        placeholder = mine[0]
        assert placeholder.fields == {} and placeholder.notes == (UNREADABLE_NOTE,)
        assert placeholder.location == f"folder '{FOLDER}', UID 1"
        assert mine[1].fields["Reply-To"] == [f"Alice <{alice}>"]
        assert subjects(theirs)[-1] == "Bob's"  # Dovecot finds his in Reply-To only
        assert all(r.fields == {} for r in theirs[:-1])
        for records in (mine, theirs):
            assert "Bob's question" not in repr(records) and "07700" not in repr(records)
        assert bob not in repr(mine) and alice not in repr(theirs)

    def test_a_well_formed_copy_naming_both_is_each_ones(
        self, tmp_path: Path, contact: Correspondent, alice: str
    ) -> None:
        """The same two people, quoted as the standard says: ``"alice@..." <bob@...>`` is bob's
        alone, and a copy with both in Cc reaches both, each other's address withheld."""
        bob = unique("bob", "other.test")
        quoted = {"Reply-To": f'"{alice}" <{bob}>'}
        put(contact, mail("website@redtrain.test", contact.address, "Bob, quoted", headers=quoted))
        put(contact, mail(contact.address, contact.address, "both", cc=f"{alice}, Bob <{bob}>"))
        mine, theirs = collect(tmp_path, contact, alice), collect(tmp_path, contact, bob)
        assert subjects(mine) == ["both"]
        assert subjects(theirs) == ["Bob, quoted", "both"]
        assert mine[0].fields["Cc"] == [alice, OTHER_PERSON]
        assert theirs[1].fields["Cc"] == [OTHER_PERSON, f"Bob <{bob}>"]


class TestInternationalised:
    def test_an_address_written_in_unicode_is_found(
        self, tmp_path: Path, contact: Correspondent
    ) -> None:
        """A form copy with ``Reply-To: alice@bücher.test`` in raw UTF-8 (SMTPUTF8) is found by
        a CHARSET UTF-8 search and read as UTF-8, as are the punycode and upper-case forms.
        Her look-alike at bucher.test (no umlaut) gets none of them, and she none of the
        look-alike's: a display name showing her Unicode address is not her address."""
        local = unique("alice", "x").partition("@")[0]
        alice, lookalike = f"{local}@bücher.test", f"{local}@bucher.test"
        website = {"From": "website@redtrain.test", "To": contact.address}
        for subject, reply_to in [
            ("unicode", f"Alice <{alice}>"),
            ("punycode", f"Alice <{local}@xn--bcher-kva.test>"),
            ("upper case", f"{local.upper()}@BÜCHER.TEST"),
            ("look-alike", f"Alice <{lookalike}>"),
            ("encoded name", f"=?utf-8?q?{local}=40b=C3=BCcher.test?= <{lookalike}>"),
        ]:
            put(contact, raw_mail({**website, "Reply-To": reply_to, "Subject": subject}))
        mine = collect(tmp_path, contact, alice, own_domains=["redtrain.test"])
        theirs = collect(tmp_path, contact, lookalike, own_domains=["redtrain.test"])
        assert subjects(mine) == ["unicode", "punycode", "upper case"]
        assert subjects(theirs) == ["look-alike", "encoded name"]
        assert mine[0].fields["Reply-To"] == [f"Alice <{alice}>"]
        assert all(r.notes == () for r in [*mine, *theirs])
        assert "bucher.test" not in repr([r.fields for r in mine])


class TestSafety:
    @pytest.mark.parametrize("value", [HOSTILE, 'x@example.test\r\nA1 DELETE "Contact form"'])
    def test_injection_shaped_identifier_finds_nothing(
        self, tmp_path: Path, contact: Correspondent, alice: str, value: str
    ) -> None:
        """A hostile identifier value matches no message and changes nothing."""
        put(contact, mail(alice, contact.address, "one"))
        put(contact, mail("x@example.test", contact.address, "two"))
        identity = Identity(alice, (Identifier("email", value, "test"),))
        assert list(connector(tmp_path, contact).collect(identity)) == []
        assert len(contact.messages(FOLDER)) == 2

    def test_search_values_are_quoted_strings(
        self, mailstack: MailServer, contact: Correspondent, alice: str
    ) -> None:
        """On the server, a hostile value is searched for as text, never run as criteria."""
        put(contact, mail(alice, contact.address, "one"))
        with imap_as(mailstack, contact.address) as client:
            client.select_folder(FOLDER, readonly=True)
            assert client.search(["ALL"]) == [1]
            assert client.search(imap_search_criteria(HOSTILE)) == []
            assert client.search(imap_search_criteria('\\" OR ALL')) == []
        with pytest.raises(ValueError, match="printable ASCII"):
            imap_search_criteria("x@example.test\r\nA1 LOGOUT")

    def test_address_with_imap_special_characters(
        self, tmp_path: Path, contact: Correspondent
    ) -> None:
        """Characters legal in an address but special in IMAP ({ % *) are searched correctly."""
        odd = unique("a{3}%b*", "example.test")
        put(contact, mail(odd, contact.address, "odd"))
        assert subjects(collect(tmp_path, contact, odd)) == ["odd"]


class TestFolders:
    def test_missing_folder_is_an_error(self, tmp_path: Path, contact: Correspondent) -> None:
        """A configured folder that does not exist fails check() and collect()."""
        broken = connector(tmp_path, contact, folders=[FOLDER, "No such folder"])
        with pytest.raises(ConnectorError, match="No such folder"):
            broken.check()
        with pytest.raises(ConnectorError, match="No such folder"):
            list(broken.collect(Identity.verified("alice@example.test")))

    def test_check_opens_every_folder(self, tmp_path: Path, contact: Correspondent) -> None:
        """check() logs in and opens each folder; a wrong password fails it."""
        connector(tmp_path, contact, folders=[FOLDER, "INBOX"]).check()
        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        with pytest.raises(LoginError):
            connector(tmp_path, contact, password={"file": str(wrong)}).check()


class TestSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        """Only host, username, password and folders are required."""
        settings = validate(
            {"host": "mail", "username": "u", "password": {"env": "PATH"}, "folders": ["INBOX"]},
            ImapMailboxSettings,
            source="test",
            base_dir=tmp_path,
        )
        assert isinstance(settings, ImapMailboxSettings)
        assert (settings.port, settings.security, settings.exclude_from) == (993, "tls", ())
        assert (settings.max_messages, settings.max_body_chars) == (500, 20_000)
        assert settings.own_domains == ()

    def test_own_domains_are_normalised(self, tmp_path: Path) -> None:
        """Own domains compare as addresses do: lower case, internationalised ones as IDNA 2008
        (straße.test stays itself, never strasse.test)."""
        settings = validate(
            {
                "host": "mail",
                "username": "u",
                "password": {"env": "PATH"},
                "folders": ["INBOX"],
                "own_domains": ["RedTrain.TEST", "straße.test"],
            },
            ImapMailboxSettings,
            source="test",
            base_dir=tmp_path,
        )
        assert isinstance(settings, ImapMailboxSettings)
        assert settings.own_domains == ("redtrain.test", "xn--strae-oqa.test")

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"password": "test"}, "password"),
            ({"folders": []}, "folders"),
            ({"folders": ["INBOX", "INBOX"]}, "listed twice"),
            ({"folders": ["a\r\nb"]}, "control characters"),
            ({"exclude_from": ["not an address"]}, "exclude_from"),
            ({"own_domains": ["not a domain"]}, "own_domains"),
            ({"own_domains": ["@redtrain.test"]}, "own_domains"),
            ({"max_messages": 0}, "max_messages"),
        ],
    )
    def test_bad_settings_are_refused(
        self, tmp_path: Path, change: dict[str, Any], message: str
    ) -> None:
        """Inline passwords, empty or odd folder lists and bad addresses are config errors."""
        data = {"host": "mail", "username": "u", "password": {"env": "PATH"}, "folders": ["I"]}
        with pytest.raises(ConfigError, match=message):
            validate({**data, **change}, ImapMailboxSettings, source="test", base_dir=tmp_path)


def test_plaintext_is_refused_unless_allowed(tmp_path: Path) -> None:
    """security = "none" sends the password and the mail in clear: refused as for the
    watched mailbox, unless allow_plaintext says so."""
    base = {
        "host": "127.0.0.1",
        "username": "contact@redtrain.test",
        "password": {"file": str(tmp_path / "pw")},
        "folders": ["INBOX"],
        "security": "none",
    }
    (tmp_path / "pw").write_text("x")
    with pytest.raises(ConfigError, match="allow_plaintext"):
        validate(base, ImapMailboxSettings, source="test", base_dir=tmp_path)
    allowed = validate(
        {**base, "allow_plaintext": True}, ImapMailboxSettings, source="test", base_dir=tmp_path
    )
    assert allowed.security == "none"


def test_a_mailbox_on_oauth2_is_read_with_a_token(
    tmp_path: Path, contact: Correspondent, alice: str, idp: IdpClient
) -> None:
    """``auth = "oauth2"`` on the connector: the contact-form mailbox is read with a token from
    the provider (client credentials), and a refused client is an OAuthError in words."""
    put(contact, mail(alice, contact.address, "from her"))
    client_id = new_client(idp, [contact.address], secret="s3cret")
    oauth2 = generic_table(tmp_path, idp, client_id)
    found = collect(tmp_path, contact, alice, password=None, auth="oauth2", oauth2=oauth2)
    assert subjects(found) == ["from her"]
    wrong = {**oauth2, "client_secret": write_secret(tmp_path, "wrong-91c2")}
    broken = connector(tmp_path, contact, password=None, auth="oauth2", oauth2=wrong)
    with pytest.raises(OAuthError) as failure:
        broken.check()
    assert failure.value.cause == "client"
    assert "invalid_client" in str(failure.value) and "wrong-91c2" not in str(failure.value)

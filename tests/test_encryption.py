"""OpenPGP keys from request mails, and exports encrypted to them, checked against real GnuPG."""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from functools import cache
from pathlib import Path

import pysequoia
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysequoia import Cert, CipherSuite, Tsk
from pysequoia.packet import Packet, PacketPile, Tag

from sarbot.errors import SarbotError
from sarbot.export import keys
from sarbot.export.encryption import EncryptionError, encrypt
from sarbot.export.keys import MAX_CANDIDATES, PRIVATE_KEY_REASON, KeyChoice, find_key

ALICE = "alice@example.test"
BOB = "bob@example.test"
ZIP_BYTES = b"PK\x03\x04" + bytes(range(256)) * 64
BEGIN, END = "-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----END PGP PUBLIC KEY BLOCK-----"


# -- keys and mails ------------------------------------------------------------------------


def packets(data: bytes) -> list[Packet]:
    pile: Iterator[Packet] = iter(PacketPile.from_bytes(data))
    return list(pile)


def new_key(
    *emails: str,
    encryption_subkey: bool = True,
    rsa: bool = False,
    validity_seconds: int | None = None,
) -> Tsk:
    """An unprotected secret key made by Sequoia (Curve25519, or RSA-2048).

    A certifying primary key, a signing subkey and, usually, an encryption subkey.
    """
    key = Tsk.generate(
        user_ids=[f"Test Person <{address}>" for address in emails],
        cipher_suite=CipherSuite.RSA2k if rsa else CipherSuite.Cv25519,
        validity_seconds=validity_seconds,
    )
    if encryption_subkey:
        return key
    kept: list[Packet] = []
    dropping = False
    for packet in packets(bytes(key)):
        if packet.tag == Tag.SecretSubkey:
            dropping = packet.key_id in encryption_subkeys(key)
        elif packet.tag != Tag.Signature:
            dropping = False
        if not dropping:
            kept.append(packet)
    return Tsk.from_packets(kept)


def encryption_subkeys(key: Tsk | Cert) -> set[str]:
    """The key ids of the subkeys whose binding allows encryption."""
    found: set[str] = set()
    subkey: str | None = None
    for packet in packets(bytes(key)):
        if packet.tag in (Tag.PublicSubkey, Tag.SecretSubkey):
            subkey = packet.key_id
        elif packet.tag != Tag.Signature:
            subkey = None
        elif subkey is not None and (flags := packet.key_flags) is not None:
            found |= {subkey} if flags.transport_encryption or flags.storage_encryption else set()
    return found


def public(key: Tsk) -> str:
    return str(key.extract_certificate())


def public_binary(key: Tsk) -> bytes:
    return bytes(key.extract_certificate())


def fingerprint(key: Tsk) -> str:
    return key.extract_certificate().fingerprint.upper()


@cache
def alice() -> Tsk:
    return new_key(ALICE, rsa=True)


@cache
def bob() -> Tsk:
    return new_key(BOB)


@cache
def strangers() -> tuple[Tsk, ...]:
    return tuple(new_key(f"stranger{n}@example.test") for n in range(MAX_CANDIDATES))


@cache
def expired(address: str = ALICE) -> Tsk:
    """A key for ``address`` whose lifetime of one second is over.

    Sequoia dates a new key a minute back, so it has expired when made; the
    wait only matters should that change.
    """
    key = new_key(address, validity_seconds=1)
    [created] = [p.key_created for p in packets(bytes(key)) if p.tag == Tag.SecretKey]
    assert created is not None
    while datetime.now(UTC) < created + timedelta(seconds=1):
        time.sleep(0.1)
    return key


def revoked(target: str, gnupg: GnuPG) -> str:
    """A public key for ALICE with the whole key, the user id or the encryption subkey revoked.

    pysequoia cannot revoke a subkey, so GnuPG makes that key.
    """
    if target == "subkey":
        fpr = gnupg.generate("Revoked Subkey <alice@example.test>", "rsa2048", "sign", "never")
        gnupg.run("--quick-add-key", fpr, "rsa2048", "encr", "never")
        commands = "key 1\nrevkey\ny\n0\n\ny\nsave\n"
        gnupg.run("--command-fd", "0", "--edit-key", fpr, stdin=commands.encode())
        return gnupg.export(fpr)
    key = new_key(ALICE)
    cert = key.extract_certificate()
    if target == "key":
        revocation = cert.revoke(key.certifier())
    else:
        revocation = cert.revoke_user_id(cert.user_ids[0], key.certifier())
    return str(Cert.from_bytes(bytes(cert) + bytes(revocation)))


def request_mail(
    body: str = "Please send me a copy of my personal data.",
    *,
    html: str | None = None,
    attachments: Sequence[tuple[bytes, str, str]] = (),
) -> bytes:
    """A request mail from ALICE; attachments are (data, content type, file name)."""
    message = EmailMessage()
    message["From"] = f"Alice <{ALICE}>"
    message["To"] = "privacy@controller.test"
    message["Subject"] = "Subject access request"
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for data, content_type, filename in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(message)


def key_file(armored_or_binary: str | bytes, filename: str = "key.asc") -> tuple[bytes, str, str]:
    data = armored_or_binary.encode() if isinstance(armored_or_binary, str) else armored_or_binary
    return data, "application/pgp-keys", filename


def assert_not_used(choice: KeyChoice, *phrases: str) -> None:
    assert choice.key_armored is None and choice.fingerprint is None
    for phrase in phrases:
        assert phrase in choice.reason
    assert "the export is not encrypted" in choice.reason


def recipients(ciphertext: bytes) -> set[str]:
    """The key ids a message is encrypted to, from its public-key encrypted session keys."""
    found: set[str] = set()
    for packet in packets(ciphertext):
        body = packet.body
        if packet.tag != Tag.PKESK:
            continue
        if body[0] == 3:
            found.add(body[1:9].hex())
        else:  # version 6 names the key by its fingerprint; a v4 key's id is its end
            fpr = body[3 : 2 + body[1]]
            found.add((fpr[-8:] if body[2] == 4 else fpr[:8]).hex())
    return found


def decrypt(key: Tsk, ciphertext: bytes) -> tuple[bytes | None, set[str]]:
    """What key's secret opens, and the key ids the message names as recipients."""
    plain = pysequoia.decrypt(ciphertext, decryptor=key.decryptor()).bytes
    return plain, recipients(ciphertext)


# -- finding a key -------------------------------------------------------------------------


class TestFindsTheRequestersKey:
    def test_attached_armored_key(self) -> None:
        """An armored application/pgp-keys attachment for the address is chosen."""
        choice = find_key(request_mail(attachments=[key_file(public(alice()))]), ALICE)
        assert choice.fingerprint == fingerprint(alice())
        assert choice.key_armored is not None
        assert choice.reason.startswith("The export is encrypted to your OpenPGP key ")
        pretty = " ".join(fingerprint(alice())[i : i + 4] for i in range(0, 40, 4))
        assert pretty[:24] + " " + pretty[24:] in choice.reason

    def test_attached_binary_key(self) -> None:
        """A binary key in a .gpg file of a generic content type is chosen."""
        attachment = (public_binary(alice()), "application/octet-stream", "alice.gpg")
        choice = find_key(request_mail(attachments=[attachment]), ALICE)
        assert choice.fingerprint == fingerprint(alice())

    def test_armored_block_in_the_body(self) -> None:
        """A key pasted into the plain text body is chosen."""
        body = "Please encrypt the answer to this key:\n\n" + public(alice()) + "\nThanks\n"
        assert find_key(request_mail(body), ALICE).fingerprint == fingerprint(alice())

    def test_armored_block_in_an_html_body(self) -> None:
        """A key in an HTML part, lines split by <br> and '+' written as an entity, is chosen."""
        lines = public(alice()).replace("+", "&#43;").splitlines()
        html = "<html><body><p>My key:</p><p>" + "<br>\n".join(lines) + "</p></body></html>"
        choice = find_key(request_mail("See the HTML part.", html=html), ALICE)
        assert choice.fingerprint == fingerprint(alice())

    def test_key_quoted_in_a_reply(self) -> None:
        """A key quoted with '> ' in a reply is still read."""
        quoted = "\n".join("> " + line for line in public(alice()).splitlines())
        assert find_key(request_mail(quoted), ALICE).fingerprint == fingerprint(alice())

    def test_key_pasted_into_a_clear_signed_text(self) -> None:
        """A key inside a clear-signed text (dash-escaped) is found; prose about armor is passed."""
        escaped = "\n".join(
            "- " + line if line.startswith("-") else line for line in public(alice()).splitlines()
        )
        body = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
            "Blocks start with -----BEGIN PGP and a kind. My key:\n"
            f"{escaped}\n-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
        )
        assert find_key(request_mail(body), ALICE).fingerprint == fingerprint(alice())

    def test_primary_key_that_encrypts(self, gnupg: GnuPG) -> None:
        """A key without subkeys whose primary key may encrypt is used as it is.

        Sequoia always makes subkeys, so GnuPG makes this key.
        """
        fpr = gnupg.generate("Primary Only <alice@example.test>", "rsa2048", "sign,encr", "never")
        choice = find_key(request_mail(attachments=[key_file(gnupg.export(fpr))]), ALICE)
        assert choice.fingerprint == fpr and choice.key_armored is not None
        secret = Tsk.from_bytes(gnupg.export_secret(fpr))
        plain, encrypters = decrypt(secret, encrypt(ZIP_BYTES, choice.key_armored))
        assert (plain, encrypters) == (ZIP_BYTES, {fpr[-16:].lower()})

    def test_user_id_is_normalised_before_comparing(self) -> None:
        """A user id in another case and with an IDN domain matches the normalised address."""
        key = new_key("Alice@Bücher.Example")
        choice = find_key(
            request_mail(attachments=[key_file(public(key))]), "alice@xn--bcher-kva.example"
        )
        assert choice.fingerprint == fingerprint(key)

    def test_only_the_second_key_matches(self) -> None:
        """Of two keys, the one for the address is chosen even when it comes second."""
        mail = request_mail(attachments=[key_file(public(bob())), key_file(public(alice()))])
        assert find_key(mail, ALICE).fingerprint == fingerprint(alice())

    def test_both_keys_in_one_block(self) -> None:
        """A keyring of two keys in one armored block yields the matching one."""
        both = public_binary(bob()) + public_binary(alice())
        block = f"{BEGIN}\n\n"
        block += base64.encodebytes(both).decode() + f"{END}\n"
        assert find_key(request_mail(block), ALICE).fingerprint == fingerprint(alice())

    def test_stored_key_is_public_and_names_only_the_address(self) -> None:
        """The stored key has no secret part and no user id of another address."""
        key = new_key(ALICE, "alice.private@elsewhere.test")
        choice = find_key(request_mail(attachments=[key_file(public(key))]), ALICE)
        assert choice.key_armored is not None
        assert "PUBLIC KEY BLOCK" in choice.key_armored
        raw = bytes(Cert.from_bytes(choice.key_armored.encode()))
        tags = [packet.tag for packet in packets(raw)]
        assert Tag.SecretKey not in tags and Tag.SecretSubkey not in tags
        emails = [p.user_id_email for p in packets(raw) if p.tag == Tag.UserID]
        assert emails == [ALICE]
        assert b"elsewhere" not in raw

    @pytest.mark.parametrize(
        "attachment",
        [
            (
                b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
                "application/pgp-signature",
                "signature.asc",
            ),
            (b"\x85\x01\x0c" + bytes(300), "application/octet-stream", "message.gpg"),
            (
                b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
                "application/octet-stream",
                "server.key",
            ),
        ],
    )
    def test_other_openpgp_data_is_no_key(self, attachment: tuple[bytes, str, str]) -> None:
        """Signatures, encrypted messages and TLS keys are not taken for keys (empty reason)."""
        assert find_key(request_mail(attachments=[attachment]), ALICE) == KeyChoice(None, None, "")

    def test_no_key_at_all(self) -> None:
        """A mail without a key gives no key and an empty reason."""
        assert find_key(request_mail(), ALICE) == KeyChoice(None, None, "")


class TestRefusesUnusableKeys:
    def test_key_for_another_address(self) -> None:
        """A key for another address is not used, and the reason names neither it nor its key."""
        choice = find_key(request_mail(attachments=[key_file(public(bob()))]), ALICE)
        assert_not_used(choice, "for another address", "the address the request came from")
        assert "bob" not in choice.reason.lower()
        assert fingerprint(bob())[-8:] not in choice.reason.replace(" ", "")

    def test_expired_key(self) -> None:
        """A key whose self-signature says it expired is not used."""
        choice = find_key(request_mail(attachments=[key_file(public(expired()))]), ALICE)
        assert_not_used(choice, "has expired")

    @pytest.mark.parametrize("target", ["key", "uid", "subkey"])
    def test_revoked(self, target: str, gnupg: GnuPG) -> None:
        """A revoked key, user id or encryption subkey is not used."""
        key = revoked(target, gnupg)
        choice = find_key(request_mail(attachments=[key_file(key)]), ALICE)
        assert_not_used(choice, "has been revoked")

    def test_sign_only_key(self) -> None:
        """A key without any encryption key is not used."""
        key = new_key(ALICE, encryption_subkey=False)
        choice = find_key(request_mail(attachments=[key_file(public(key))]), ALICE)
        assert_not_used(choice, "has no key for encryption")

    def test_forged_user_id(self) -> None:
        """A user id edited after signing (its self-signature fails) is not trusted."""
        forged = public_binary(bob()).replace(BOB.encode(), b"eve@example.test")
        attachment = (forged, "application/pgp-keys", "eve.gpg")
        choice = find_key(request_mail(attachments=[attachment]), "eve@example.test")
        assert_not_used(choice, "do not verify")

    def test_malformed_armor(self) -> None:
        """Armor that is not base64 gives no key and says the key could not be read."""
        body = f"{BEGIN}\n\nnot base64 !!\n{END}"
        assert_not_used(find_key(request_mail(body), ALICE), "could not be read")

    def test_armor_without_an_end(self) -> None:
        """A block that never ends says the key could not be read, and hides no later block."""
        cut = "My key:\n" + public(alice()).split("-----END")[0]
        assert_not_used(find_key(request_mail(cut), ALICE), "could not be read")
        both = cut + "\nSorry, again:\n" + public(alice())
        assert find_key(request_mail(both), ALICE).fingerprint == fingerprint(alice())

    def test_armor_of_garbage_packets(self) -> None:
        """Valid base64 that holds no sensible packets gives no key and says so."""
        block = f"{BEGIN}\n\n"
        block += base64.b64encode(b"\x99\x01\x0d" + random.Random(7).randbytes(400)).decode()
        block += f"\n{END}\n"
        assert_not_used(find_key(request_mail(block), ALICE), "could not be read")

    @pytest.mark.parametrize("armored", [True, False])
    def test_huge_blob_is_ignored(self, armored: bool) -> None:
        """Key material above the limit is not parsed; a real key next to it is still found."""
        blob = b"\x99" + os.urandom(300_000)
        if armored:
            text = base64.encodebytes(blob).decode()
            blob = f"{BEGIN}\n\n{text}{END}\n".encode()
        huge = (blob, "application/pgp-keys", "huge.asc")
        assert_not_used(find_key(request_mail(attachments=[huge]), ALICE), "larger than we accept")
        both = request_mail(attachments=[huge, key_file(public(alice()))])
        assert find_key(both, ALICE).fingerprint == fingerprint(alice())

    @pytest.mark.parametrize(
        ("others", "found"), [(MAX_CANDIDATES - 1, True), (MAX_CANDIDATES, False)]
    )
    def test_number_of_keys_is_capped(self, others: int, found: bool) -> None:
        """Only the first few keys of a message are looked at."""
        files = [key_file(public(key)) for key in strangers()[:others]]
        choice = find_key(request_mail(attachments=[*files, key_file(public(alice()))]), ALICE)
        assert (choice.fingerprint == fingerprint(alice())) is found
        if not found:
            assert_not_used(choice, "for another address")

    def test_usable_key_wins_over_failures(self) -> None:
        """An expired key and a key for another address do not hide a usable one."""
        files = [key_file(public(expired())), key_file(public(bob())), key_file(public(alice()))]
        assert find_key(request_mail(attachments=files), ALICE).fingerprint == fingerprint(alice())

    def test_own_failure_is_told_before_another_address(self) -> None:
        """With keys for another address and an expired own key, the letter tells of the own key."""
        files = [key_file(public(bob())), key_file(public(expired()))]
        assert_not_used(find_key(request_mail(attachments=files), ALICE), "has expired")


class TestPrivateKeys:
    def test_private_block_in_the_body(self) -> None:
        """A pasted private key is never used and the reason calls it compromised."""
        secret = str(alice())
        assert "PRIVATE KEY BLOCK" in secret
        choice = find_key(request_mail("My key:\n" + secret), ALICE)
        assert choice == KeyChoice(None, None, PRIVATE_KEY_REASON)
        assert "compromised" in choice.reason

    def test_private_key_spoils_a_public_key_beside_it(self) -> None:
        """With a private key anywhere in the mail, not even an attached public key is used."""
        secret = str(alice())
        mail = request_mail(secret, attachments=[key_file(public(alice()))])
        assert find_key(mail, ALICE).reason == PRIVATE_KEY_REASON

    def test_binary_private_key_attached(self) -> None:
        """A binary secret key file is recognised as private."""
        secret = bytes(alice())
        choice = find_key(request_mail(attachments=[key_file(secret, "alice.gpg")]), ALICE)
        assert choice.reason == PRIVATE_KEY_REASON

    def test_private_key_labelled_public(self) -> None:
        """Secret key packets under a PUBLIC KEY BLOCK label are still recognised as private."""
        disguised = str(alice()).replace("PRIVATE KEY BLOCK", "PUBLIC KEY BLOCK")
        choice = find_key(request_mail(attachments=[key_file(disguised)]), ALICE)
        assert choice.reason == PRIVATE_KEY_REASON


class TestHostileInput:
    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"\xff\xfe\x00garbage",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n",
            b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n-----BEGIN PGP PUBLIC KEY",
            b"Content-Type: application/pgp-keys\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!",
        ],
    )
    def test_broken_mails(self, raw: bytes) -> None:
        """Broken mails give no key and never raise."""
        assert find_key(raw, ALICE).key_armored is None

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=2000))
    def test_arbitrary_bytes_never_raise(self, raw: bytes) -> None:
        """Any bytes at all give a KeyChoice without a key."""
        assert find_key(raw, ALICE).key_armored is None

    def test_a_panic_in_sequoia_gives_no_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A panic in Sequoia's Rust code (pyo3 raises it outside Exception) gives no key.

        Other exceptions outside Exception, such as KeyboardInterrupt, still go through.
        """
        panic = type("PanicException", (BaseException,), {})
        mail = request_mail(attachments=[key_file(public(alice()))])
        for raised, escapes in [(panic, False), (KeyboardInterrupt, True)]:

            def parse(blob: bytes | str, raised: type[BaseException] = raised) -> None:
                raise raised("called `Option::unwrap()` on a `None` value")

            monkeypatch.setattr(keys, "parse_keys", parse)
            if escapes:
                with pytest.raises(raised):
                    find_key(mail, ALICE)
            else:
                assert find_key(mail, ALICE) == KeyChoice(None, None, "")

    def test_no_warnings_escape_and_filters_stay(self) -> None:
        """No warning escapes (pysequoia warns on its deprecated calls); the filters stay."""
        before = list(warnings.filters)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            choice = find_key(request_mail(attachments=[key_file(public(alice()))]), ALICE)
            assert choice.key_armored is not None
            encrypt(ZIP_BYTES, choice.key_armored)
        assert warnings.filters == before


# -- encrypting ----------------------------------------------------------------------------


class TestEncrypt:
    def test_round_trip(self) -> None:
        """The secret key decrypts the export; the encryption subkey is the recipient."""
        choice = find_key(request_mail(attachments=[key_file(public(alice()))]), ALICE)
        assert choice.key_armored is not None
        ciphertext = encrypt(ZIP_BYTES, choice.key_armored)
        assert ZIP_BYTES not in ciphertext
        plain, encrypters = decrypt(alice(), ciphertext)
        assert plain == ZIP_BYTES
        assert encrypters == encryption_subkeys(alice()) and len(encrypters) == 1

    def test_stored_key_that_expired_since(self) -> None:
        """A stored key that has expired by the time of the export is refused."""
        with pytest.raises(EncryptionError, match="no longer usable"):
            encrypt(ZIP_BYTES, public(expired()))

    def test_private_key_is_refused(self) -> None:
        """encrypt never works from a private key."""
        with pytest.raises(EncryptionError, match="public key"):
            encrypt(ZIP_BYTES, str(alice()))

    def test_garbage_key(self) -> None:
        """An unreadable stored key raises EncryptionError, a SarbotError."""
        with pytest.raises(EncryptionError, match="could not be read") as caught:
            encrypt(ZIP_BYTES, f"{BEGIN}\nxx\n")
        assert isinstance(caught.value, SarbotError)


# -- real GnuPG ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GnuPG:
    home: str

    def run(
        self, *args: str, cwd: Path | None = None, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        command = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]
        result = subprocess.run(
            [*command, *args],
            input=stdin,
            capture_output=True,
            cwd=cwd,
            env={**os.environ, "GNUPGHOME": self.home, "LC_ALL": "C"},
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"gpg {' '.join(args)} failed:\n{result.stderr.decode()}", pytrace=False)
        return result

    def generate(self, uid: str, algo: str, usage: str, expire: str, *extra: str) -> str:
        """Generate a key, returning its fingerprint."""
        status = self.run(*extra, "--status-fd", "1", "--quick-gen-key", uid, algo, usage, expire)
        created = [line.split() for line in status.stdout.decode().splitlines()]
        return next(words[3] for words in created if words[:2] == ["[GNUPG:]", "KEY_CREATED"])

    def export(self, fpr: str) -> str:
        return self.run("--armor", "--export", fpr).stdout.decode()

    def export_secret(self, fpr: str) -> bytes:
        return self.run("--export-secret-keys", fpr).stdout


@pytest.fixture(scope="module")
def gnupg() -> Iterator[GnuPG]:
    """A throw-away GnuPG home (short path: the agent's socket lives in it)."""
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed; the interoperability tests need GnuPG", pytrace=False)
    home = tempfile.mkdtemp(prefix="gpg-", dir="/tmp")
    yield GnuPG(home)
    subprocess.run(
        [shutil.which("gpgconf") or "gpgconf", "--kill", "all"],
        env={**os.environ, "GNUPGHOME": home},
        capture_output=True,
        check=False,
    )
    shutil.rmtree(home, ignore_errors=True)


class TestGnuPG:
    def test_gnupg_decrypts_the_export(self, gnupg: GnuPG, tmp_path: Path) -> None:
        """gpg decrypts the export to its RSA key: AES-256, MDC, binary literal data.

        The message carries no file name any more (pysequoia cannot set one).
        """
        fpr = gnupg.generate("Hal <hal@example.test>", "default", "default", "never")
        mail = request_mail(attachments=[key_file(gnupg.export(fpr), "hal.asc")])
        choice = find_key(mail, "hal@example.test")
        assert choice.fingerprint == fpr and choice.key_armored is not None
        (tmp_path / "export.pgp").write_bytes(encrypt(ZIP_BYTES, choice.key_armored))
        result = gnupg.run(
            "--status-fd", "2", "--output", "-", "--decrypt", str(tmp_path / "export.pgp")
        )
        status = result.stderr.decode()
        assert result.stdout == ZIP_BYTES
        assert "[GNUPG:] DECRYPTION_INFO 2 9" in status  # MDC, AES-256
        assert "[GNUPG:] PLAINTEXT 62 " in status  # binary
        assert "[GNUPG:] GOODMDC" in status and "DECRYPTION_OKAY" in status

    def test_gnupg_made_curve25519_key(self, gnupg: GnuPG, tmp_path: Path) -> None:
        """A GnuPG ed25519/cv25519 key is chosen, and gpg decrypts what is encrypted to it."""
        fpr = gnupg.generate("Carol <carol@example.test>", "future-default", "default", "1y")
        mail = request_mail(attachments=[key_file(gnupg.export(fpr), "carol.asc")])
        choice = find_key(mail, "carol@example.test")
        assert choice.fingerprint == fpr and choice.key_armored is not None
        (tmp_path / "export.pgp").write_bytes(encrypt(ZIP_BYTES, choice.key_armored))
        result = gnupg.run("--output", "-", "--decrypt", str(tmp_path / "export.pgp"))
        assert result.stdout == ZIP_BYTES

    def test_gnupg_expired_key(self, gnupg: GnuPG) -> None:
        """A key GnuPG made in 2020 with a one-day lifetime counts as expired."""
        fpr = gnupg.generate(
            "Dan <dan@example.test>",
            "future-default",
            "default",
            "1d",
            "--faked-system-time",
            "20200101T000000",
        )
        choice = find_key(request_mail(gnupg.export(fpr)), "dan@example.test")
        assert_not_used(choice, "has expired")

    def test_gnupg_expired_encryption_subkey(self, gnupg: GnuPG) -> None:
        """A valid key whose only encryption subkey expired has nothing to encrypt to.

        pysequoia cannot give a subkey a lifetime of its own, so GnuPG makes this key.
        """
        past = ("--faked-system-time", "20200101T000000")
        fpr = gnupg.generate("Gil <gil@example.test>", "ed25519", "sign", "never", *past)
        gnupg.run(*past, "--quick-add-key", fpr, "cv25519", "encr", "1d")
        choice = find_key(request_mail(gnupg.export(fpr)), "gil@example.test")
        assert_not_used(choice, "has expired")

    def test_gnupg_revoked_key(self, gnupg: GnuPG, tmp_path: Path) -> None:
        """A key revoked with GnuPG's own revocation certificate counts as revoked."""
        fpr = gnupg.generate("Erin <erin@example.test>", "future-default", "default", "1y")
        certificate = Path(gnupg.home, "openpgp-revocs.d", f"{fpr}.rev").read_text()
        # GnuPG puts a colon before the armor so that the certificate is not imported by accident.
        (tmp_path / "rev.asc").write_text(certificate.replace(":-----BEGIN", "-----BEGIN"))
        gnupg.run("--import", str(tmp_path / "rev.asc"))
        choice = find_key(request_mail(gnupg.export(fpr)), "erin@example.test")
        assert_not_used(choice, "has been revoked")

    def test_gnupg_sign_only_key(self, gnupg: GnuPG) -> None:
        """A GnuPG ed25519 signing key without a subkey has no key for encryption."""
        fpr = gnupg.generate("Fay <fay@example.test>", "ed25519", "sign", "never")
        choice = find_key(request_mail(gnupg.export(fpr)), "fay@example.test")
        assert_not_used(choice, "has no key for encryption")

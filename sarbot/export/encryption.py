"""OpenPGP encryption of an export to a key the requester sent with the request.

``find_key`` chooses a public key from the request mail only if one of its
user ids is the requester's address, its self-signatures verify, it is
neither expired nor revoked and it has an encryption key; the key is kept with
only the matching user ids.  A private key anywhere in the mail means no key
is used: having travelled by email, it must be considered compromised.
``encrypt`` checks the stored key again and encrypts with AES-256.  See
docs/encryption.md.  pgpy's warnings are silenced around each use only.
"""

from __future__ import annotations

import base64
import binascii
import email
import html
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import Message
from enum import Enum
from typing import Any

from sarbot.errors import SarbotError
from sarbot.mail.addresses import InvalidAddress, normalize_address

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (
        CompressionAlgorithm,
        KeyFlags,
        PubKeyAlgorithm,
        SignatureType,
        SymmetricKeyAlgorithm,
    )

MAX_KEY_BYTES = 200_000  # larger key material, armored or binary, is ignored
MAX_CANDIDATES = 5  # keys parsed and checked per message
MAX_PARTS = 100  # MIME parts looked at per message
MAX_ARMOR_BLOCKS = 50  # armor header lines looked at per text part
KEY_SUFFIXES = (".asc", ".gpg", ".pgp", ".key")
_ARMOR_KINDS = {"PUBLIC KEY BLOCK": False, "PRIVATE KEY BLOCK": True, "SECRET KEY BLOCK": True}
_PUBLIC_KEY_TAG, _SECRET_KEY_TAG = 6, 5
_ENCRYPT = frozenset({KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
_CAN_ENCRYPT_TO = frozenset({PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.ECDH})
_CERTIFICATIONS = frozenset(SignatureType(t) for t in range(0x10, 0x14))  # user id self-sigs
_TAG_RE = re.compile(r"<[^>]*>")
_BEGIN_RE = re.compile(r"-----BEGIN PGP ([A-Z0-9 ,]{1,40})-----")
_PGPY_LOCK = threading.Lock()


class EncryptionError(SarbotError):
    """An export could not be encrypted to the stored OpenPGP key."""


@dataclass(frozen=True)
class KeyChoice:
    """The key to encrypt an export to, or None, and a sentence for the requester's letter."""

    key_armored: str | None
    fingerprint: str | None
    reason: str


_NOT_USED = ", so it was not used and the export is not encrypted."


class _Outcome(Enum):
    """What checking a key found, from most to least telling; the value is the letter's text."""

    USABLE = "The export is encrypted to your OpenPGP key {fp}."
    EXPIRED = "Your OpenPGP key {fp} has expired" + _NOT_USED
    REVOKED = "Your OpenPGP key {fp} has been revoked" + _NOT_USED
    NO_ENCRYPTION = "Your OpenPGP key {fp} has no key for encryption (it can only sign)" + _NOT_USED
    UNSUPPORTED = "Your OpenPGP key {fp} encrypts with an algorithm we cannot use" + _NOT_USED
    INVALID = "The signatures of your OpenPGP key {fp} do not verify" + _NOT_USED
    OTHER_ADDRESS = (
        "Your message carried an OpenPGP key for another address" + _NOT_USED + " We only "
        "encrypt to a key for the address the request came from."
    )
    TOO_LARGE = "Your message carried OpenPGP key data larger than we accept" + _NOT_USED
    UNREADABLE = "Your message seemed to carry an OpenPGP key, but it could not be read" + _NOT_USED

    def sentence(self, fingerprint: str) -> str:
        """The text with the fingerprint grouped by four, as GnuPG shows it."""
        groups = [fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4)]
        middle = "  " if len(groups) == 10 else " "
        pretty = " ".join(groups[:5]) + middle + " ".join(groups[5:])
        return self.value.format(fp=pretty.strip())


PRIVATE_KEY_REASON = (
    "Your message carried an OpenPGP private key, so no key from it was used and the export is "
    "not encrypted. A private key that has been sent by email must be considered compromised: "
    "please revoke it, make a new key pair and only ever send the public key."
)


@dataclass
class _Scan:
    """The key material found in a message, before any of it is parsed."""

    blobs: list[bytes] = field(default_factory=list)
    private: bool = False
    too_large: bool = False
    unreadable: bool = False

    def add(self, blob: bytes) -> None:
        if not blob:
            self.unreadable = True
        elif len(blob) > MAX_KEY_BYTES:
            self.too_large = True
        elif blob not in self.blobs and len(self.blobs) < MAX_CANDIDATES:
            self.blobs.append(blob)


@contextmanager
def _quiet() -> Iterator[None]:
    # catch_warnings swaps process-wide state: two threads inside it at once could leave
    # "ignore" behind for good, so pgpy is only ever used by one thread at a time.
    with _PGPY_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- finding a key -------------------------------------------------------------------------


def find_key(raw_message: bytes, address: str) -> KeyChoice:
    """The requester's usable OpenPGP key from a raw request mail, or why there is none."""
    try:
        with _quiet():
            return _choose(_scan_message(raw_message), address)
    except Exception:  # hostile input may break the mail or OpenPGP parser in any way
        return KeyChoice(None, None, "")


def _choose(scan: _Scan, address: str) -> KeyChoice:
    if scan.private:
        return KeyChoice(None, None, PRIVATE_KEY_REASON)
    failures: list[tuple[_Outcome, str]] = []
    checked = 0
    for blob in scan.blobs:
        try:
            keys = _parse_keys(blob)
        except Exception:  # malformed packets raise assorted errors inside pgpy
            failures.append((_Outcome.UNREADABLE, ""))
            continue
        for key in keys[: MAX_CANDIDATES - checked]:
            checked += 1
            if not key.is_public:
                return KeyChoice(None, None, PRIVATE_KEY_REASON)
            fingerprint = str(key.fingerprint)
            try:
                outcome, _ = _assess(key, address)
            except Exception:  # pgpy may fail on odd packets; the other keys still count
                outcome = _Outcome.UNREADABLE
            if outcome is _Outcome.USABLE:
                return KeyChoice(str(key), fingerprint, outcome.sentence(fingerprint))
            failures.append((outcome, fingerprint))
    if scan.too_large:
        failures.append((_Outcome.TOO_LARGE, ""))
    if scan.unreadable:
        failures.append((_Outcome.UNREADABLE, ""))
    if not failures:
        return KeyChoice(None, None, "")
    order = list(_Outcome)
    outcome, fingerprint = min(failures, key=lambda failure: order.index(failure[0]))
    return KeyChoice(None, None, outcome.sentence(fingerprint))


def _scan_message(raw_message: bytes) -> _Scan:
    message = email.message_from_bytes(raw_message, policy=policy.default)
    scan = _Scan()
    for count, part in enumerate(message.walk()):
        if count >= MAX_PARTS:
            break
        if part.is_multipart():
            continue
        try:
            _scan_part(part, scan)
        except Exception:  # a broken part must not hide the others
            scan.unreadable = True
    return scan


def _scan_part(part: Message, scan: _Scan) -> None:
    content_type = part.get_content_type()
    filename = (part.get_filename() or "").lower()
    is_key_file = content_type == "application/pgp-keys" or filename.endswith(KEY_SUFFIXES)
    if not is_key_file and content_type not in ("text/plain", "text/html"):
        return
    encoded = part.get_payload()
    if is_key_file and isinstance(encoded, str) and len(encoded) > 3 * MAX_KEY_BYTES:
        scan.too_large = True  # not worth decoding; a long text part is still scanned
        return
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return
    if is_key_file and b"-----BEGIN PGP " not in payload:
        tag = _first_packet_tag(payload)
        if tag == _SECRET_KEY_TAG:
            scan.private = True
        elif tag == _PUBLIC_KEY_TAG:
            scan.add(payload)
        return
    text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    if content_type == "text/html" and not is_key_file:
        text = html.unescape(_TAG_RE.sub("\n", text))
    _scan_text(text, scan)


def _scan_text(text: str, scan: _Scan) -> None:
    for kind, body in _armored_blocks(text):
        if _ARMOR_KINDS[kind]:
            scan.private = True
        elif body is None:
            scan.unreadable = True
        elif len(body) > MAX_KEY_BYTES:
            scan.too_large = True
        else:
            try:
                scan.add(_dearmor(body))
            except ValueError:
                scan.unreadable = True


def _armored_blocks(text: str) -> Iterator[tuple[str, str | None]]:
    """(kind, body) of each armored key block; body None when the block has no end line.

    Other armor (messages, signatures, a clear-signed text around a pasted key)
    is stepped over, not skipped, so a key inside it is still found.
    """
    position = 0
    for _ in range(MAX_ARMOR_BLOCKS):
        begin = _BEGIN_RE.search(text, position)
        if begin is None:
            return
        kind, position = begin[1], begin.end()
        if kind not in _ARMOR_KINDS:
            continue
        end = text.find(f"-----END PGP {kind}-----", position)
        if end < 0 or text.find("-----BEGIN PGP ", position, end) >= 0:
            yield kind, None  # no end line before the next block
            continue
        yield kind, text[position:end]
        position = end + len(f"-----END PGP {kind}-----")


def _dearmor(body: str) -> bytes:
    """The bytes of an armored body, tolerant of quoting ("> ") and HTML line breaks.

    Armor headers are skipped; the checksum line is not checked because a
    damaged key fails its signature checks anyway.
    """
    lines: list[str] = []
    for raw_line in body.splitlines():
        line = "".join(raw_line.split()).lstrip(">")
        if not line or ":" in line:
            continue
        if line.startswith("="):
            break
        lines.append(line)
    try:
        return base64.b64decode("".join(lines), validate=True)
    except binascii.Error as exc:
        raise ValueError("bad armor") from exc


def _first_packet_tag(data: bytes) -> int | None:
    if not data or not data[0] & 0x80:
        return None
    return data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F


def _parse_keys(blob: bytes | str) -> list[Any]:
    """Each primary key in a blob, or ValueError when there is none."""
    parsed = pgpy.PGPKey.from_blob(blob)
    first, others = parsed if isinstance(parsed, tuple) else (parsed, {})
    keys: list[Any] = []
    for key in [first, *others.values()]:  # pgpy lists the first key again among the others
        # Garbage may parse into a key object without any key packet.
        if key.fingerprint and key.is_primary and all(key is not k for k in keys):
            keys.append(key)
    if not keys:
        raise ValueError("no key packet")
    return keys


# -- checking a key ------------------------------------------------------------------------


def _assess(key: Any, address: str | None) -> tuple[_Outcome, Any]:
    """Whether a public key is fit to encrypt to, and the (sub)key to use.

    With an address, user ids of other addresses (and photos) are removed from
    ``key`` first; without one, every user id counts.
    """
    if address is not None:
        _keep_only_address(key, address)
    if not key.userids:
        return _Outcome.OTHER_ADDRESS, None
    if _revoked(key, key, SignatureType.KeyRevocation):
        return _Outcome.REVOKED, None
    now = datetime.now(UTC)
    failures: list[_Outcome] = []
    flags: set[Any] = set()
    for uid in key.userids:
        outcome, cert = _assess_uid(key, uid, now)
        if cert is None:
            failures.append(outcome)
        else:
            flags |= set(cert.key_flags)
    if len(failures) == len(key.userids):
        return min(failures, key=list(_Outcome).index), None
    return _encryption_key(key, flags, now)


def _assess_uid(key: Any, uid: Any, now: datetime) -> tuple[_Outcome, Any]:
    certs = _self_issued(key, uid, _CERTIFICATIONS)
    if not certs:
        return _Outcome.INVALID, None
    cert = max(certs, key=lambda sig: sig.created)
    # pgpy refuses to verify anything on an expired key, so expiry is checked first.
    if _expired(key.created, cert.key_expiration, now) or cert.is_expired:
        return _Outcome.EXPIRED, None
    if _revoked(key, uid, SignatureType.CertRevocation):
        return _Outcome.REVOKED, None
    if not _verifies(key, uid, cert):
        return _Outcome.INVALID, None
    return _Outcome.USABLE, cert


def _encryption_key(key: Any, primary_flags: set[Any], now: datetime) -> tuple[_Outcome, Any]:
    """The newest valid key with an encryption flag: a subkey, or the primary key itself."""
    usable: list[Any] = []
    failures: list[_Outcome] = []
    if primary_flags & _ENCRYPT:
        if key.key_algorithm in _CAN_ENCRYPT_TO:
            usable.append(key)
        else:
            failures.append(_Outcome.UNSUPPORTED)
    for subkey in key.subkeys.values():
        bindings = _self_issued(key, subkey, {SignatureType.Subkey_Binding})
        binding = max(bindings, key=lambda sig: sig.created) if bindings else None
        if binding is None or not set(binding.key_flags) & _ENCRYPT:
            continue
        if not _verifies(key, subkey, binding):
            failures.append(_Outcome.INVALID)
        elif _revoked(key, subkey, SignatureType.SubkeyRevocation):
            failures.append(_Outcome.REVOKED)
        elif _expired(subkey.created, binding.key_expiration, now) or binding.is_expired:
            failures.append(_Outcome.EXPIRED)
        elif subkey.key_algorithm not in _CAN_ENCRYPT_TO:
            failures.append(_Outcome.UNSUPPORTED)
        else:
            usable.append(subkey)
    if usable:
        return _Outcome.USABLE, max(usable, key=lambda k: k.created)
    if failures:
        return min(failures, key=list(_Outcome).index), None
    return _Outcome.NO_ENCRYPTION, None


def _keep_only_address(key: Any, address: str) -> None:
    """Drop every user id and user attribute that is not the address (pgpy has no public way)."""
    for uid in list(key._uids):
        if not (uid.is_uid and _uid_address(uid) == address):
            key._uids.remove(uid)
            uid._parent = None


def _uid_address(uid: Any) -> str | None:
    try:
        return normalize_address(str(uid.email))
    except InvalidAddress:
        return None


def _self_issued(key: Any, subject: Any, types: set[Any] | frozenset[Any]) -> list[Any]:
    """Signatures of the given types on subject that claim to be made by key (not yet verified)."""
    return [sig for sig in subject.__sig__ if sig.type in types and _issued_by(sig, key)]


def _issued_by(sig: Any, key: Any) -> bool:
    try:
        issuer = str(sig.signer_fingerprint).replace(" ", "")
        if issuer:
            return issuer == str(key.fingerprint).replace(" ", "")
        return bool(sig.signer == key.fingerprint.keyid)
    except Exception:  # pgpy fails on a signature without an issuer subpacket
        return False


def _revoked(key: Any, subject: Any, revocation: Any) -> bool:
    return any(_verifies(key, subject, sig) for sig in _self_issued(key, subject, {revocation}))


def _verifies(key: Any, subject: Any, sig: Any) -> bool:
    try:
        return bool(key.verify(subject, sig))
    except Exception:  # unsupported algorithms and malformed signatures raise
        return False


def _expired(created: datetime, lifetime: timedelta | None, now: datetime) -> bool:
    """A key expiry: none, or zero, means the key does not expire."""
    return lifetime is not None and lifetime > timedelta(0) and created + lifetime <= now


# -- encrypting ----------------------------------------------------------------------------


def encrypt(data: bytes, key_armored: str, filename: str) -> bytes:
    """A binary OpenPGP message of data for key_armored, its literal data named filename."""
    if not (0 < len(filename) <= 255 and filename.isascii() and filename.isprintable()) or (
        "/" in filename or "\\" in filename
    ):
        raise EncryptionError("the file name must be 1 to 255 printable ASCII characters, no path")
    with _quiet():
        try:
            keys = _parse_keys(key_armored)
        except Exception as exc:  # pgpy raises assorted errors on malformed keys
            raise EncryptionError("the stored OpenPGP key could not be read") from exc
        if len(keys) != 1 or not keys[0].is_public:
            raise EncryptionError("the stored OpenPGP key is not exactly one public key")
        outcome, target = _assess(keys[0], None)
        if outcome is not _Outcome.USABLE:
            raise EncryptionError(f"the stored OpenPGP key is no longer usable: {outcome.name}")
        try:
            message = pgpy.PGPMessage.new(
                data, format="b", compression=CompressionAlgorithm.Uncompressed
            )
            message._message.filename = filename  # pgpy sets a name only for files on disk
            message._message.update_hlen()
            encrypted = target.encrypt(message, cipher=SymmetricKeyAlgorithm.AES256)
            return bytes(encrypted)
        except Exception as exc:  # pgpy and cryptography raise assorted errors
            raise EncryptionError(f"OpenPGP encryption failed: {type(exc).__name__}") from exc

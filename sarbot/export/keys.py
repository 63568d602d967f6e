"""The requester's OpenPGP key, found in the request mail.

``find_key`` chooses a public key from the request mail only if one of its
user ids is the requester's address, its self-signatures verify, it is
neither expired nor revoked and it has an encryption key
(``sarbot.export.encryption.assess``); the key is kept with only the matching
user ids.  A private key anywhere in the mail means no key is used: having
travelled by email, it must be considered compromised.  See docs/encryption.md.
"""

from __future__ import annotations

import base64
import binascii
import email
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import Message

from sarbot.export.encryption import Outcome, assess, is_library_panic, parse_keys

_PUBLIC_KEY_TAG, _SECRET_KEY_TAG = 6, 5  # OpenPGP packet tags
MAX_KEY_BYTES = 200_000  # larger key material, armored or binary, is ignored


MAX_CANDIDATES = 5  # keys parsed and checked per message


MAX_PARTS = 100  # MIME parts looked at per message


MAX_ARMOR_BLOCKS = 50  # armor header lines looked at per text part


KEY_SUFFIXES = (".asc", ".gpg", ".pgp", ".key")


_ARMOR_KINDS = {"PUBLIC KEY BLOCK": False, "PRIVATE KEY BLOCK": True, "SECRET KEY BLOCK": True}


_TAG_RE = re.compile(r"<[^>]*>")


_BEGIN_RE = re.compile(r"-----BEGIN PGP ([A-Z0-9 ,]{1,40})-----")


@dataclass(frozen=True)
class KeyChoice:
    """The key to encrypt an export to, or None, and a sentence for the requester's letter."""

    key_armored: str | None
    fingerprint: str | None
    reason: str


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


def find_key(raw_message: bytes, address: str) -> KeyChoice:
    """The requester's usable OpenPGP key from a raw request mail, or why there is none."""
    try:
        return _choose(_scan_message(raw_message), address)
    except Exception:  # hostile input may break the mail or OpenPGP parser in any way
        return KeyChoice(None, None, "")
    except BaseException as exc:  # a panic in Sequoia's Rust code is no Exception
        if not is_library_panic(exc):
            raise
        return KeyChoice(None, None, "")


def _choose(scan: _Scan, address: str) -> KeyChoice:
    if scan.private:
        return KeyChoice(None, None, PRIVATE_KEY_REASON)
    failures: list[tuple[Outcome, str]] = []
    checked = 0
    for blob in scan.blobs:
        try:
            keys = parse_keys(blob)
        except Exception:  # Sequoia raises on malformed packets
            failures.append((Outcome.UNREADABLE, ""))
            continue
        for key in keys[: MAX_CANDIDATES - checked]:
            checked += 1
            if not key.is_public:
                return KeyChoice(None, None, PRIVATE_KEY_REASON)
            fingerprint = key.fingerprint
            try:
                outcome, _ = assess(key, address)
                armored = key.armored() if outcome is Outcome.USABLE else ""
            except Exception:  # Sequoia may refuse odd packets; the other keys still count
                outcome = Outcome.UNREADABLE
            if outcome is Outcome.USABLE:
                return KeyChoice(armored, fingerprint, outcome.sentence(fingerprint))
            failures.append((outcome, fingerprint))
    if scan.too_large:
        failures.append((Outcome.TOO_LARGE, ""))
    if scan.unreadable:
        failures.append((Outcome.UNREADABLE, ""))
    if not failures:
        return KeyChoice(None, None, "")
    order = list(Outcome)
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

"""OpenPGP encryption of an export to a key the requester sent with the request.

``assess`` says whether a key can be encrypted to (its self-signatures verify,
it is neither expired nor revoked, it has an encryption key);
``sarbot.export.keys`` uses it to choose the key from the request mail.
``encrypt`` checks the stored key again and encrypts with AES-256.  See
docs/encryption.md.  pgpy's warnings are silenced around each use only.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from sarbot.addresses import InvalidAddress, normalize_address
from sarbot.errors import SarbotError

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

_ENCRYPT = frozenset({KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
_CAN_ENCRYPT_TO = frozenset({PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.ECDH})
_CERTIFICATIONS = frozenset(SignatureType(t) for t in range(0x10, 0x14))  # user id self-sigs
_PGPY_LOCK = threading.Lock()


class EncryptionError(SarbotError):
    """An export could not be encrypted to the stored OpenPGP key."""


_NOT_USED = ", so it was not used and the export is not encrypted."


class Outcome(Enum):
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


@contextmanager
def quiet() -> Iterator[None]:
    # catch_warnings swaps process-wide state: two threads inside it at once could leave
    # "ignore" behind for good, so pgpy is only ever used by one thread at a time.
    with _PGPY_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- finding a key -------------------------------------------------------------------------


def parse_keys(blob: bytes | str) -> list[Any]:
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


def assess(key: Any, address: str | None) -> tuple[Outcome, Any]:
    """Whether a public key is fit to encrypt to, and the (sub)key to use.

    With an address, user ids of other addresses (and photos) are removed from
    ``key`` first; without one, every user id counts.
    """
    if address is not None:
        keep_only_address(key, address)
    if not key.userids:
        return Outcome.OTHER_ADDRESS, None
    if _revoked(key, key, SignatureType.KeyRevocation):
        return Outcome.REVOKED, None
    now = datetime.now(UTC)
    failures: list[Outcome] = []
    flags: set[Any] = set()
    for uid in key.userids:
        outcome, cert = _assess_uid(key, uid, now)
        if cert is None:
            failures.append(outcome)
        else:
            flags |= set(cert.key_flags)
    if len(failures) == len(key.userids):
        return min(failures, key=list(Outcome).index), None
    return _encryption_key(key, flags, now)


def _assess_uid(key: Any, uid: Any, now: datetime) -> tuple[Outcome, Any]:
    certs = _self_issued(key, uid, _CERTIFICATIONS)
    if not certs:
        return Outcome.INVALID, None
    cert = max(certs, key=lambda sig: sig.created)
    # pgpy refuses to verify anything on an expired key, so expiry is checked first.
    if _expired(key.created, cert.key_expiration, now) or cert.is_expired:
        return Outcome.EXPIRED, None
    if _revoked(key, uid, SignatureType.CertRevocation):
        return Outcome.REVOKED, None
    if not _verifies(key, uid, cert):
        return Outcome.INVALID, None
    return Outcome.USABLE, cert


def _encryption_key(key: Any, primary_flags: set[Any], now: datetime) -> tuple[Outcome, Any]:
    """The newest valid key with an encryption flag: a subkey, or the primary key itself."""
    usable: list[Any] = []
    failures: list[Outcome] = []
    if primary_flags & _ENCRYPT:
        if key.key_algorithm in _CAN_ENCRYPT_TO:
            usable.append(key)
        else:
            failures.append(Outcome.UNSUPPORTED)
    for subkey in key.subkeys.values():
        bindings = _self_issued(key, subkey, {SignatureType.Subkey_Binding})
        binding = max(bindings, key=lambda sig: sig.created) if bindings else None
        if binding is None or not set(binding.key_flags) & _ENCRYPT:
            continue
        if not _verifies(key, subkey, binding):
            failures.append(Outcome.INVALID)
        elif _revoked(key, subkey, SignatureType.SubkeyRevocation):
            failures.append(Outcome.REVOKED)
        elif _expired(subkey.created, binding.key_expiration, now) or binding.is_expired:
            failures.append(Outcome.EXPIRED)
        elif subkey.key_algorithm not in _CAN_ENCRYPT_TO:
            failures.append(Outcome.UNSUPPORTED)
        else:
            usable.append(subkey)
    if usable:
        return Outcome.USABLE, max(usable, key=lambda k: k.created)
    if failures:
        return min(failures, key=list(Outcome).index), None
    return Outcome.NO_ENCRYPTION, None


def keep_only_address(key: Any, address: str) -> None:
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
    with quiet():
        try:
            keys = parse_keys(key_armored)
        except Exception as exc:  # pgpy raises assorted errors on malformed keys
            raise EncryptionError("the stored OpenPGP key could not be read") from exc
        if len(keys) != 1 or not keys[0].is_public:
            raise EncryptionError("the stored OpenPGP key is not exactly one public key")
        outcome, target = assess(keys[0], None)
        if outcome is not Outcome.USABLE:
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

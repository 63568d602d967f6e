"""OpenPGP encryption of an export to a key the requester sent with the request.

``assess`` says whether a key can be encrypted to (its self-signatures verify,
it is neither expired nor revoked, it has an encryption key);
``sarbot.export.keys`` uses it to choose the key from the request mail.
``encrypt`` checks the stored key again and encrypts to it.  See
docs/encryption.md.

The OpenPGP work is Sequoia's, through pysequoia.  A key is read as its packets
(``Key``), so that user ids of other addresses can be dropped and each part of
the key judged on its own; Sequoia then says, for a certificate made of some of
those packets, which user ids it accepts and which keys it would encrypt to.
That is how signatures are verified and revocations found without pysequoia
having a call for either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

import pysequoia
from pysequoia import Cert
from pysequoia.packet import Packet, PacketPile, PublicKeyAlgorithm, SignatureType, Tag

from sarbot.addresses import InvalidAddress, normalize_address
from sarbot.errors import SarbotError

_CERTIFICATIONS = (
    SignatureType.GenericCertification,
    SignatureType.PersonaCertification,
    SignatureType.CasualCertification,
    SignatureType.PositiveCertification,
)
# Public key algorithms that encrypt; a flagged key of another kind is "an algorithm we cannot use".
_ENCRYPTING = (
    PublicKeyAlgorithm.RSAEncryptSign,
    PublicKeyAlgorithm.RSAEncrypt,
    PublicKeyAlgorithm.ECDH,
    PublicKeyAlgorithm.X25519,
    PublicKeyAlgorithm.X448,
    PublicKeyAlgorithm.MLKEM768_X25519,
    PublicKeyAlgorithm.MLKEM1024_X448,
)
_PRIMARY_TAGS = (Tag.PublicKey, Tag.SecretKey)
_SUBKEY_TAGS = (Tag.PublicSubkey, Tag.SecretSubkey)
_COMPONENT_TAGS = (Tag.UserID, Tag.UserAttribute, *_SUBKEY_TAGS)
_EPOCH = datetime.fromtimestamp(0, UTC)


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


def is_library_panic(exc: BaseException) -> bool:
    """Whether exc is a panic inside the Rust code (pyo3 raises those outside Exception)."""
    return type(exc).__name__ == "PanicException"


# -- a key as its packets ------------------------------------------------------------------


@dataclass
class Component:
    """A key, subkey, user id or user attribute packet and the signatures that follow it."""

    packet: Packet
    signatures: list[Packet] = field(default_factory=list)

    def packets(self) -> list[Packet]:
        return [self.packet, *self.signatures]

    def signed(self, *types: SignatureType) -> list[Packet]:
        """The signatures of these types, newest first."""
        found = [sig for sig in self.signatures if sig.signature_type in types]
        return sorted(found, key=lambda sig: sig.signature_created or _EPOCH, reverse=True)


@dataclass
class Key:
    """One transferable key: the primary key with its direct signatures, then its components."""

    primary: Component
    components: list[Component] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """Upper case hex, as GnuPG shows it."""
        return str(self.primary.packet.fingerprint).upper()

    @property
    def is_public(self) -> bool:
        tags = [self.primary.packet.tag] + [c.packet.tag for c in self.components]
        return Tag.SecretKey not in tags and Tag.SecretSubkey not in tags

    @property
    def user_ids(self) -> list[Component]:
        return [c for c in self.components if c.packet.tag == Tag.UserID]

    @property
    def subkeys(self) -> list[Component]:
        return [c for c in self.components if c.packet.tag in _SUBKEY_TAGS]

    def packets(self) -> list[Packet]:
        return [p for c in [self.primary, *self.components] for p in c.packets()]

    def armored(self) -> str:
        """The key as an armored public key block (Sequoia's canonical form)."""
        return str(Cert.from_packets(self.packets()))

    def self_issued(self) -> Key:
        """A copy with only the signatures that claim to be made by the primary key."""

        def own(component: Component) -> Component:
            sigs = [sig for sig in component.signatures if self._issued_by_primary(sig)]
            return Component(component.packet, sigs)

        return Key(own(self.primary), [own(c) for c in self.components])

    def _issued_by_primary(self, sig: Packet) -> bool:
        if sig.issuer_fingerprint is not None:
            return sig.issuer_fingerprint.upper() == self.fingerprint
        return sig.issuer_key_id is not None and sig.issuer_key_id == self.primary.packet.key_id


def parse_keys(blob: bytes | str) -> list[Key]:
    """Each key in a blob (binary or armored), or ValueError when there is none.

    Sequoia's parser raises on malformed packets; packets that are no part of a
    key (a marker, trust packets) are passed over.
    """
    data = blob.encode() if isinstance(blob, str) else blob
    keys: list[Key] = []
    packets: Iterable[Packet] = PacketPile.from_bytes(data)
    for packet in packets:
        if packet.tag in _PRIMARY_TAGS:
            keys.append(Key(Component(packet)))
        elif not keys:
            continue
        elif packet.tag in _COMPONENT_TAGS:
            keys[-1].components.append(Component(packet))
        elif packet.tag == Tag.Signature:
            key = keys[-1]
            (key.components[-1] if key.components else key.primary).signatures.append(packet)
    # Garbage may parse into a key packet that holds no key.
    keys = [key for key in keys if key.primary.packet.fingerprint]
    if not keys:
        raise ValueError("no key packet")
    return keys


# -- checking a key ------------------------------------------------------------------------


def assess(key: Key, address: str | None) -> tuple[Outcome, Cert | None]:
    """Whether a public key is fit to encrypt to, and the certificate to encrypt to.

    With an address, user ids of other addresses (and photos) are removed from
    ``key`` first; without one, every user id counts.  The certificate holds
    the primary key, the usable user ids and the one key to encrypt to.
    """
    if address is not None:
        keep_only_address(key, address)
    own = key.self_issued()
    if not own.user_ids:
        return Outcome.OTHER_ADDRESS, None
    if Cert.from_packets(own.packets()).is_revoked:
        return Outcome.REVOKED, None
    now = datetime.now(UTC)
    created = _created(own.primary.packet)
    if any(_expired(created, sig, now) for sig in own.primary.signed(SignatureType.DirectKey)[:1]):
        return Outcome.EXPIRED, None
    failures: list[Outcome] = []
    usable: list[Component] = []
    for uid in own.user_ids:
        outcome = _assess_uid(own.primary.packet, uid, now)
        if outcome is Outcome.USABLE:
            usable.append(uid)
        else:
            failures.append(outcome)
    if not usable:
        return _worst(failures), None
    return _encryption_key(own, usable, now)


def _assess_uid(primary: Packet, uid: Component, now: datetime) -> Outcome:
    certifications = uid.signed(*_CERTIFICATIONS)
    if not certifications:
        return Outcome.INVALID
    if _expired(_created(primary), certifications[0], now):
        return Outcome.EXPIRED
    name = uid.packet.user_id
    if name not in _user_ids([primary, uid.packet, *certifications]):
        return Outcome.INVALID
    revocations = uid.signed(SignatureType.CertificationRevocation)
    if revocations and name not in _user_ids([primary, *uid.packets()]):
        return Outcome.REVOKED
    return Outcome.USABLE


def _encryption_key(key: Key, uids: list[Component], now: datetime) -> tuple[Outcome, Cert | None]:
    """The newest valid key that may encrypt: a subkey, or the primary key itself."""
    base = key.primary.packets() + [p for uid in uids for p in uid.packets()]
    usable: list[tuple[datetime, list[Packet]]] = []
    failures: list[Outcome] = []
    primary = key.primary.packet
    newest = key.primary.signed(SignatureType.DirectKey)[:1]
    newest += [uid.signed(*_CERTIFICATIONS)[0] for uid in uids]
    if any(_encrypts(sig) for sig in newest):
        if primary.key_algorithm in _ENCRYPTING and _is_recipient(primary, base):
            usable.append((_created(primary), base))
        else:
            failures.append(Outcome.UNSUPPORTED)
    for subkey in key.subkeys:
        bindings = subkey.signed(SignatureType.SubkeyBinding)
        if not bindings or not _encrypts(bindings[0]):
            continue
        if subkey.packet.key_algorithm not in _ENCRYPTING:
            failures.append(Outcome.UNSUPPORTED)
            continue
        # Sequoia uses the newest binding that verifies; one at a time tells which that is.
        binding = next(
            (b for b in bindings if _is_recipient(subkey.packet, [*base, subkey.packet, b])), None
        )
        if binding is None:  # none verifies (with flags to encrypt: Sequoia requires them)
            failures.append(Outcome.INVALID)
            continue
        revocations = subkey.signed(SignatureType.SubkeyRevocation)
        if revocations and not _is_recipient(
            subkey.packet, [*base, subkey.packet, binding, *revocations]
        ):
            failures.append(Outcome.REVOKED)
        elif _expired(_created(subkey.packet), binding, now):
            failures.append(Outcome.EXPIRED)
        else:
            usable.append((_created(subkey.packet), [*base, subkey.packet, binding]))
    if usable:
        _, packets = max(usable, key=lambda entry: entry[0])
        return Outcome.USABLE, Cert.from_packets(packets)
    if failures:
        return _worst(failures), None
    return Outcome.NO_ENCRYPTION, None


def keep_only_address(key: Key, address: str) -> None:
    """Drop every user id and user attribute that is not the address."""
    key.components = [
        c
        for c in key.components
        if c.packet.tag in _SUBKEY_TAGS
        or (c.packet.tag == Tag.UserID and _uid_address(c.packet) == address)
    ]


def _uid_address(uid: Packet) -> str | None:
    email = uid.user_id_email
    if email is None:
        return None
    try:
        return normalize_address(email)
    except InvalidAddress:
        return None


def _user_ids(packets: Sequence[Packet]) -> list[str]:
    """The user ids Sequoia accepts (self-signature verifies, not revoked) among packets."""
    try:
        return [str(uid) for uid in Cert.from_packets(packets).user_ids]
    except Exception:  # no valid binding at all: Sequoia refuses the certificate
        return []


def _is_recipient(key: Packet, packets: Sequence[Packet]) -> bool:
    """Whether Sequoia encrypts to key for a certificate made of packets.

    It does only if the key's binding verifies, the key is not revoked, its
    flags allow encryption and its algorithm is supported.  (Once no key is
    alive it falls back to expired ones, so expiry is checked apart.)
    """
    try:
        message = pysequoia.encrypt(b"", [Cert.from_packets(packets)], armor=False)
        sessions: Iterable[Packet] = PacketPile.from_bytes(message)
    except Exception:  # no key Sequoia would encrypt to, or none it can
        return False
    return any(_recipient(session) in (key.key_id, key.fingerprint) for session in sessions)


def _recipient(packet: Packet) -> str | None:
    """The key id (v3) or fingerprint (v6) a public-key encrypted session key is for."""
    if packet.tag != Tag.PKESK or not packet.body:
        return None
    body = packet.body
    if body[0] == 3:
        return body[1:9].hex()
    if body[0] == 6 and len(body) > 2 and body[1] > 1:
        return body[3 : 2 + body[1]].hex()
    return None


def _encrypts(sig: Packet) -> bool:
    flags = sig.key_flags
    return flags is not None and (flags.transport_encryption or flags.storage_encryption)


def _created(key: Packet) -> datetime:
    return key.key_created or _EPOCH


def _expired(created: datetime, sig: Packet, now: datetime) -> bool:
    """Whether a self-signature says its key has expired, or has itself expired.

    A key lifetime of none, or zero, means the key does not expire.
    """
    lifetime = sig.key_validity_period
    if lifetime is not None and lifetime > timedelta(0) and created + lifetime <= now:
        return True
    expires = sig.signature_expiration_time
    return expires is not None and expires <= now


def _worst(failures: list[Outcome]) -> Outcome:
    return min(failures, key=list(Outcome).index)


# -- encrypting ----------------------------------------------------------------------------


def encrypt(data: bytes, key_armored: str) -> bytes:
    """A binary OpenPGP message of data for key_armored.

    The literal data carries no file name: pysequoia cannot set one.
    """
    try:
        keys = parse_keys(key_armored)
    except Exception as exc:  # Sequoia raises on malformed keys
        raise EncryptionError("the stored OpenPGP key could not be read") from exc
    if len(keys) != 1 or not keys[0].is_public:
        raise EncryptionError("the stored OpenPGP key is not exactly one public key")
    try:
        outcome, target = assess(keys[0], None)
    except Exception as exc:  # a key Sequoia cannot make a certificate of
        raise EncryptionError("the stored OpenPGP key could not be read") from exc
    if outcome is not Outcome.USABLE or target is None:
        raise EncryptionError(f"the stored OpenPGP key is no longer usable: {outcome.name}")
    try:
        return bytes(pysequoia.encrypt(data, [target], armor=False))
    except Exception as exc:  # Sequoia reports failures as RuntimeError with a long trace
        raise EncryptionError(f"OpenPGP encryption failed: {type(exc).__name__}") from exc

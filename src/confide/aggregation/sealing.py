"""Sealing the CKKS secret key to one member, so a relay (the coordinator) cannot open it.

Construction (HPKE-like, base mode): a fresh ephemeral X25519 key per blob; the shared secret
goes through HKDF-SHA256 (salt = ephemeral public key || recipient public key) to a
ChaCha20-Poly1305 key and nonce, both unique per blob. The associated data binds the format
version, recipient id and key id, so a blob cannot be replayed to another member or relabelled
as another key without failing authentication.

Blob: ``b"CFSL" | version(1) | u16 len | recipient_id | u16 len | key_id | ephemeral pub(32) |
ciphertext+tag``. X25519 keys are raw 32-byte values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.aggregation.errors import SealedKeyError, WrongKey

SEALED_VERSION = 1
_MAGIC = b"CFSL"
_INFO = b"confide sealed ckks key v1"
SHARE_INFO = b"confide sealed mask share v1"
"""HKDF info of mask shares (`secagg`): a share blob never opens as a sealed key, nor the reverse."""
_MAX_ID_BYTES = 256


@dataclass(frozen=True)
class SealedHeader:
    """Who a sealed blob is for and which key it carries (readable without opening it)."""

    recipient_id: str
    key_id: str


def generate_identity_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 identity key pair as raw 32-byte (private, public) values."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _derive(shared: bytes, ephemeral_pub: bytes, recipient_pub: bytes, info: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=44, salt=ephemeral_pub + recipient_pub, info=info
    ).derive(shared)
    return okm[:32], okm[32:]


def _text_field(value: str, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SealedKeyError(f"{name} must be a non-empty string")
    raw = value.encode("utf-8")
    if len(raw) > _MAX_ID_BYTES:
        raise SealedKeyError(f"{name} is longer than {_MAX_ID_BYTES} bytes")
    return struct.pack(">H", len(raw)) + raw


def _load_public(raw: bytes, whose: str) -> X25519PublicKey:
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise SealedKeyError(f"{whose} X25519 public key must be 32 raw bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:  # all-zero shared secret: a low-order public key
        raise SealedKeyError(
            "the X25519 public key is degenerate (low order)", "check the roster entry"
        ) from None


def seal_secret(
    secret_bytes: bytes, recipient_public_key: bytes, recipient_id: str, key_id: str, info: bytes = _INFO
) -> bytes:
    """Encrypt ``secret_bytes`` so that only the holder of ``recipient_public_key``'s private
    key, opening it as ``recipient_id``, can read it. ``key_id`` is the label bound to the blob
    (the CKKS key id; for a mask share, what the share is of), ``info`` the purpose (``SHARE_INFO``
    for mask shares). Raises SealedKeyError on bad arguments."""
    recipient = _load_public(recipient_public_key, "recipient's")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = _raw_public(ephemeral.public_key())
    header = (
        _MAGIC
        + bytes([SEALED_VERSION])
        + _text_field(recipient_id, "recipient_id")
        + _text_field(key_id, "key_id")
        + ephemeral_pub
    )
    key, nonce = _derive(_exchange(ephemeral, recipient), ephemeral_pub, _raw_public(recipient), info)
    return header + ChaCha20Poly1305(key).encrypt(nonce, bytes(secret_bytes), header)


def _parse(blob: bytes) -> tuple[SealedHeader, bytes, bytes, bytes]:
    """(header, associated data, ephemeral public key, ciphertext); raises SealedKeyError."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SealedKeyError(f"a sealed key must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:4] != _MAGIC:
        raise SealedKeyError("these bytes are not a confide sealed key", "check the file")
    if len(blob) < 5 or blob[4] != SEALED_VERSION:
        raise SealedKeyError("sealed key has an unknown format version", "ask for it again")
    pos = 5
    fields = []
    for _ in range(2):
        if pos + 2 > len(blob):
            raise SealedKeyError("sealed key is truncated", "ask the key-holder to resend it")
        (length,) = struct.unpack_from(">H", blob, pos)
        pos += 2
        if length == 0 or length > _MAX_ID_BYTES or pos + length > len(blob):
            raise SealedKeyError("sealed key is truncated or corrupt", "ask for it again")
        try:
            fields.append(blob[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise SealedKeyError("sealed key has a corrupt id field", "ask for it again") from None
        pos += length
    if pos + 32 + 16 > len(blob):
        raise SealedKeyError("sealed key is truncated", "ask the key-holder to resend it")
    ephemeral_pub = blob[pos : pos + 32]
    aad = blob[: pos + 32]
    return SealedHeader(fields[0], fields[1]), aad, ephemeral_pub, blob[pos + 32 :]


def read_sealed_header(blob: bytes) -> SealedHeader:
    """Recipient id and key id of a sealed blob, without opening it (relays may call this)."""
    return _parse(blob)[0]


def open_sealed(blob: bytes, my_private_key: bytes, my_id: str, info: bytes = _INFO) -> bytes:
    """Open a blob sealed to ``my_id``; returns the secret bytes.

    Raises :class:`SealedKeyError` if the blob is malformed or addressed to another member, and
    :class:`WrongKey` if it does not authenticate under ``my_private_key`` (sealed to someone
    else's key, or tampered with).
    """
    header, aad, ephemeral_pub, ciphertext = _parse(blob)
    if header.recipient_id != my_id:
        raise SealedKeyError(
            f"this sealed key is addressed to {header.recipient_id!r}, not to {my_id!r}",
            "ask the key-holder for the blob sealed to you",
        )
    if not isinstance(my_private_key, (bytes, bytearray)) or len(my_private_key) != 32:
        raise SealedKeyError("my X25519 private key must be 32 raw bytes")
    private = X25519PrivateKey.from_private_bytes(bytes(my_private_key))
    ephemeral = _load_public(ephemeral_pub, "ephemeral")
    key, nonce = _derive(
        _exchange(private, ephemeral), ephemeral_pub, _raw_public(private.public_key()), info
    )
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise WrongKey(
            f"the sealed key for {my_id!r} does not open with this private key",
            "it was sealed to another identity key, or it was altered in transit",
        ) from None

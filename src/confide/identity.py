"""Institution identities: an Ed25519 key that signs, and an X25519 key that receives sealed secrets.

This module is a leaf: it depends on nothing else in confide, so policies (which hold public keys in
the roster), privacy (which signs the ledger) and aggregation (which seals the CKKS secret key to a
member) can all use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from confide.errors import BadInput

SIGNING_KEY_FILE = "signing.key"
SEALING_KEY_FILE = "sealing.key"
PUBLIC_FILE = "identity.json"


class IdentityError(BadInput):
    """An identity directory or key is missing, malformed or unsafe."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.hint = hint


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str, length: int | None = None) -> bytes:
    """Decode base64 `text`; raise IdentityError naming `what` if it is not valid or not `length` bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise IdentityError(f"{what} is not valid base64", "copy it again from the identity.json") from exc
    if length is not None and len(raw) != length:
        raise IdentityError(f"{what} has {len(raw)} bytes, expected {length}", "copy it again from the identity.json")
    return raw


def fingerprint(signing_public: bytes, sealing_public: bytes) -> str:
    """Short, human-comparable fingerprint of an identity: SHA-256 over both public keys, 16 bytes hex in groups."""
    digest = hashlib.sha256(b"confide-identity-v1" + signing_public + sealing_public).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


@dataclass(frozen=True)
class PublicIdentity:
    """What a federation roster holds of a member: its two raw 32-byte public keys."""

    signing_public: bytes
    sealing_public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signing_public, self.sealing_public)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if `signature` is this identity's Ed25519 signature over `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_public).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def signed(self, document) -> bool:
        """True if `document` (a `confide.formats.SignedDocument`) carries this identity's signature."""
        try:
            signature = base64.b64decode(document.signature, validate=True)
        except ValueError:
            return False
        return len(signature) == 64 and self.verify(signature, document.message())

    def to_roster_entry(self, institution_id: str) -> dict:
        return {"id": institution_id, "signing_key": b64(self.signing_public), "sealing_key": b64(self.sealing_public)}


@dataclass(frozen=True)
class Identity:
    """An institution's private identity. Never leaves the institution."""

    institution_id: str
    signing_private: bytes
    sealing_private: bytes

    @classmethod
    def generate(cls, institution_id: str) -> "Identity":
        sign = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        seal = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(institution_id, sign, seal)

    @property
    def public(self) -> PublicIdentity:
        sign_pub = Ed25519PrivateKey.from_private_bytes(self.signing_private).public_key()
        seal_pub = X25519PrivateKey.from_private_bytes(self.sealing_private).public_key()
        raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicIdentity(sign_pub.public_bytes(*raw), seal_pub.public_bytes(*raw))

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.signing_private).sign(message)

    def sign_document(self, document):
        """`document` (a `confide.formats.SignedDocument`) with this identity's signature over its message."""
        return document.model_copy(update={"signature": b64(self.sign(document.message()))})

    def save(self, directory: Path) -> None:
        """Write the identity to `directory`: private keys mode 0600, public part as identity.json.

        Raises IdentityError if an identity already exists there (it is never overwritten).
        """
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / SIGNING_KEY_FILE).exists() or (directory / SEALING_KEY_FILE).exists():
            raise IdentityError(f"{directory} already holds an identity", "choose another --out directory")
        for name, key in ((SIGNING_KEY_FILE, self.signing_private), (SEALING_KEY_FILE, self.sealing_private)):
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(b64(key) + "\n")
        pub = self.public
        info = pub.to_roster_entry(self.institution_id) | {"fingerprint": pub.fingerprint}
        (directory / PUBLIC_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Identity":
        """Read an identity written by `save`. Raises IdentityError if files are missing or readable by others."""
        info_path = directory / PUBLIC_FILE
        if not info_path.exists():
            raise IdentityError(f"{directory}: no identity found", "create one with `confide keys init --out DIR`")
        keys = []
        for name in (SIGNING_KEY_FILE, SEALING_KEY_FILE):
            path = directory / name
            if not path.exists():
                raise IdentityError(f"{path}: missing", "restore it from backup or create a new identity")
            if path.stat().st_mode & 0o077:
                raise IdentityError(f"{path}: readable by other users", f"run `chmod 600 {path}`")
            keys.append(unb64(path.read_text().strip(), str(path), 32))
        try:
            institution_id = json.loads(info_path.read_text())["id"]
        except (ValueError, KeyError) as exc:
            raise IdentityError(f"{info_path}: malformed", "restore it or create a new identity") from exc
        return cls(institution_id, keys[0], keys[1])


def roster_identities(roster) -> dict[str, PublicIdentity]:
    """Roster members (a FederationPolicy's `roster`) as PublicIdentity by id."""
    return {
        m.id: PublicIdentity(unb64(m.signing_key, f"roster {m.id} signing_key", 32),
                             unb64(m.sealing_key, f"roster {m.id} sealing_key", 32))
        for m in roster
    }

"""CKKS key material: the key-holder's secret, the coordinator's public context, their bytes.

Byte formats (never pickled): ``magic(4) | version(1) | json_length(u32, big endian) | json``
followed, for secret material only, by SEAL's serialized secret key. The JSON holds the key id,
the :class:`CkksParameters` and SEAL's parameter fingerprint. The two magics differ, so a
coordinator handed secret material refuses it instead of silently holding a key.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import tenseal.sealapi as seal
from pydantic import ValidationError

from confide.aggregation import _seal
from confide.aggregation.errors import KeyMaterialError, SecretKeyPresent
from confide.aggregation.params import DEFAULT_PARAMETERS, CkksParameters
from confide.aggregation.sealing import open_sealed, seal_secret
from confide.formats import canonical_json

__all__ = [
    "PublicContext",
    "SecretKeyMaterial",
    "create_key_material",
    "load_secret",
    "require_public",
    "open_sealed",
    "seal_secret",
]

FORMAT_VERSION = 1
_PUBLIC_MAGIC = b"CFPC"
_SECRET_MAGIC = b"CFSK"
_PREFIX = struct.Struct(">4sBI")
_MAX_JSON = 4096
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")


def _encode(magic: bytes, doc: dict[str, Any], tail: bytes = b"") -> bytes:
    body = canonical_json(doc)
    return _PREFIX.pack(magic, FORMAT_VERSION, len(body)) + body + tail


def _decode(data: bytes, magic: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    """Split framed bytes into (json document, tail); raises KeyMaterialError when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise KeyMaterialError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise KeyMaterialError(f"{what} is truncated ({len(data)} bytes)", "copy it again")
    got_magic, version, length = _PREFIX.unpack_from(data, 0)
    if got_magic != magic:
        raise KeyMaterialError(f"these bytes are not a confide {what}", "check which file you passed")
    if version != FORMAT_VERSION:
        raise KeyMaterialError(
            f"{what} has format version {version}; this build reads {FORMAT_VERSION}",
            "regenerate it with this confide version",
        )
    if length > _MAX_JSON or _PREFIX.size + length > len(data):
        raise KeyMaterialError(f"{what} is truncated or its header is corrupt", "copy it again")
    try:
        doc = json.loads(data[_PREFIX.size : _PREFIX.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyMaterialError(f"{what} header is not valid JSON", "copy it again") from None
    if not isinstance(doc, dict) or set(doc) != {"key_id", "params", "fingerprint"}:
        raise KeyMaterialError(
            f"{what} header must hold exactly key_id, params, fingerprint", "regenerate it"
        )
    if not isinstance(doc["key_id"], str) or not _KEY_ID.match(doc["key_id"]):
        raise KeyMaterialError(f"{what} has a malformed key id", "regenerate it")
    return doc, data[_PREFIX.size + length :]


def _context_from(doc: dict[str, Any], what: str) -> tuple[CkksParameters, seal.SEALContext]:
    try:
        params = CkksParameters.model_validate(doc["params"])
    except ValidationError as err:
        raise KeyMaterialError(f"{what} has malformed parameters: {err.errors()[0]['msg']}") from None
    context = _seal.build_context(params)
    if _seal.context_fingerprint(context) != doc["fingerprint"]:
        raise KeyMaterialError(
            f"{what} was made with a SEAL build that derives different primes",
            "use the same tenseal version at every member and the coordinator",
        )
    return params, context


@dataclass(frozen=True)
class PublicContext:
    """What the coordinator holds: the key id and encryption parameters, and no key at all.

    Enough to parse and add ciphertexts; nothing here can decrypt or encrypt.
    """

    key_id: str
    params: CkksParameters
    context: seal.SEALContext = field(repr=False, compare=False)

    def to_bytes(self) -> bytes:
        """Serialize for the coordinator (no key inside)."""
        doc = {
            "key_id": self.key_id,
            "params": self.params.model_dump(mode="json"),
            "fingerprint": _seal.context_fingerprint(self.context),
        }
        return _encode(_PUBLIC_MAGIC, doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        """Parse a public context.

        Raises :class:`SecretKeyPresent` if ``data`` is secret key material (a coordinator must
        never hold the key), :class:`KeyMaterialError` if it is malformed or has trailing bytes.
        """
        if bytes(data[:4]) == _SECRET_MAGIC:
            raise SecretKeyPresent(
                "these bytes contain a CKKS secret key, which the coordinator must never hold",
                "give the coordinator SecretKeyMaterial.public_context_bytes() instead",
            )
        doc, tail = _decode(data, _PUBLIC_MAGIC, "public context")
        if tail:
            raise KeyMaterialError(
                f"public context has {len(tail)} unexpected trailing bytes",
                "regenerate it with public_context_bytes()",
            )
        params, context = _context_from(doc, "public context")
        return cls(key_id=doc["key_id"], params=params, context=context)


class SecretKeyMaterial:
    """The shared CKKS secret of one federation key, held only by member institutions.

    ``key_id`` (32 hex characters) names the key; ciphertexts carry it. ``to_bytes()`` is the
    secret itself: seal it to each member with :func:`seal_secret`, never store it in clear.
    """

    __slots__ = ("key_id", "params", "context", "secret_key")

    def __init__(
        self,
        key_id: str,
        params: CkksParameters,
        context: seal.SEALContext,
        secret_key: seal.SecretKey,
    ) -> None:
        self.key_id = key_id
        self.params = params
        self.context = context
        self.secret_key = secret_key

    def __repr__(self) -> str:
        return f"SecretKeyMaterial(key_id={self.key_id!r}, params={self.params!r}, <secret>)"

    def public_context(self) -> PublicContext:
        """The coordinator's view: same key id and parameters, no key."""
        return PublicContext(key_id=self.key_id, params=self.params, context=self.context)

    def public_context_bytes(self) -> bytes:
        """Serialized public context for the coordinator (contains no key)."""
        return self.public_context().to_bytes()

    def to_bytes(self) -> bytes:
        """Serialize the secret (for :func:`seal_secret` only)."""
        with _seal.SealScratch() as scratch:
            key_blob = scratch.dump(self.secret_key)
        doc = {
            "key_id": self.key_id,
            "params": self.params.model_dump(mode="json"),
            "fingerprint": _seal.context_fingerprint(self.context),
        }
        return _encode(_SECRET_MAGIC, doc, key_blob)


def create_key_material(params: CkksParameters = DEFAULT_PARAMETERS) -> SecretKeyMaterial:
    """Generate a fresh CKKS secret key with a random key id (the key-holder's set-up step).

    Raises :class:`InsecureParameters` if SEAL refuses ``params``.
    """
    context = _seal.build_context(params)
    secret_key = seal.KeyGenerator(context).secret_key()
    return SecretKeyMaterial(secrets.token_hex(16), params, context, secret_key)


def load_secret(data: bytes) -> SecretKeyMaterial:
    """Parse bytes made by :meth:`SecretKeyMaterial.to_bytes` (e.g. after :func:`open_sealed`).

    Raises :class:`KeyMaterialError` when they are malformed.
    """
    doc, key_blob = _decode(data, _SECRET_MAGIC, "secret key material")
    params, context = _context_from(doc, "secret key material")
    max_bytes = params.poly_modulus_degree * len(params.coeff_mod_bit_sizes) * 8 + 1024
    try:
        _seal.check_seal_blob(key_blob, max_bytes, "secret key")
        with _seal.SealScratch() as scratch:
            secret_key = scratch.load_secret_key(context, key_blob)
    except Exception as err:  # SEAL or structure errors: report as malformed key material
        raise KeyMaterialError(f"secret key material is corrupt: {err}", "copy it again") from None
    return SecretKeyMaterial(doc["key_id"], params, context, secret_key)


def require_public(context: object) -> PublicContext:
    """Return ``context`` as a :class:`PublicContext`, checking it holds no secret key.

    Accepts a PublicContext or its bytes. Raises :class:`SecretKeyPresent` for secret material
    or a TenSEAL context that holds a secret key, :class:`KeyMaterialError` for anything else.
    """
    if isinstance(context, PublicContext):
        return context
    if isinstance(context, (bytes, bytearray, memoryview)):
        return PublicContext.from_bytes(bytes(context))
    if isinstance(context, SecretKeyMaterial):
        raise SecretKeyPresent(
            "the coordinator was given secret key material",
            "pass material.public_context() (or its bytes) to the coordinator",
        )
    has_secret = getattr(context, "has_secret_key", None)
    if callable(has_secret) and has_secret():
        raise SecretKeyPresent(
            "the coordinator was given a TenSEAL context holding a secret key",
            "pass a confide PublicContext made with public_context_bytes()",
        )
    raise KeyMaterialError(
        f"expected a confide PublicContext, got {type(context).__name__}",
        "load it with PublicContext.from_bytes()",
    )

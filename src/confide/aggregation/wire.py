"""The binary envelope that carries encrypted updates and sums (never pickled).

Layout, big endian::

    magic "CFHE" (4) | version (1) | kind (1: update, 2: sum) | reserved (2, zero)
    key id (16) | layout hash (32, SHA-256) | SHA-256 digest (32) | n_values (8)
    slots per ciphertext (4) | n_ciphertexts (4) | n_summed (4)
    n_ciphertexts x ciphertext length (4 each) | ciphertexts (SEAL serialization, concatenated)

``n_values`` counts the adapter values; two trailer values (weight, 1) follow them, and the
ciphertext count must equal ``ceil((n_values + 2) / (2 * slots))``. Every declared length is
checked against the actual byte count and against what these parameters can produce, so a
truncated, padded, oversized or garbled envelope is refused before SEAL parses anything. The
digest covers the whole envelope (with the digest field zeroed) and catches corruption in
transit or storage, which SEAL alone would not notice in a ciphertext's coefficients or in a
header count. It is a checksum, not a signature: the platform signs uploads.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confide.aggregation._seal import check_seal_blob
from confide.aggregation.errors import EnvelopeError, LayoutMismatch, WrongKey

MAGIC = b"CFHE"
VERSION = 1
KIND_UPDATE = 1
KIND_SUM = 2
_KIND_NAMES = {KIND_UPDATE: "update", KIND_SUM: "sum"}
_FIXED = struct.Struct(">4sBBH16s32s32sQIII")
_LENGTH = struct.Struct(">I")
_DIGEST_AT = 56  # offset of the digest field in the fixed header
_DIGEST_END = _DIGEST_AT + 32
_N_CT_FIELD = 9  # index of n_ciphertexts among the fixed header's fields

#: Default ceiling on one envelope: 2 GiB holds a sum of about 10**8 parameters.
DEFAULT_MAX_ENVELOPE_BYTES = 2**31
#: Slot counts of the supported ring degrees 4096..32768.
_SLOT_COUNTS = (2048, 4096, 8192, 16384)
#: SEAL metadata and compression framing on top of the raw polynomial data of one ciphertext.
_CT_OVERHEAD = 1024
_HEX = re.compile(r"^[0-9a-f]+$")

EnvelopeSource = bytes | bytearray | memoryview | str | os.PathLike


@dataclass(frozen=True)
class EnvelopeHeader:
    """Validated header of an envelope. Sizes are in bytes; ``n_values`` excludes the trailer."""

    kind: str
    key_id: str
    layout_hash: str
    sha256: str
    n_values: int
    slots: int
    n_ciphertexts: int
    n_summed: int
    ciphertext_lengths: tuple[int, ...]
    header_bytes: int
    total_bytes: int

    def ciphertext_offsets(self) -> list[int]:
        """Byte offset of each ciphertext from the start of the envelope."""
        offsets, pos = [], self.header_bytes
        for length in self.ciphertext_lengths:
            offsets.append(pos)
            pos += length
        return offsets


def max_ciphertext_bytes(slots: int) -> int:
    """Largest serialized ciphertext this protocol makes: two polynomials over one prime."""
    return 2 * (2 * slots) * 8 + _CT_OVERHEAD


def ciphertexts_needed(n_values: int, slots: int) -> int:
    """Ciphertexts for ``n_values`` plus the two trailer values, two reals per slot."""
    return -(-(n_values + 2) // (2 * slots))


def _hex_field(value: str, n_bytes: int, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * n_bytes or not _HEX.match(value):
        raise EnvelopeError(f"{name} must be {2 * n_bytes} lowercase hex characters")
    return bytes.fromhex(value)


def build_envelope(
    kind: int,
    key_id: str,
    layout_hash: str,
    n_values: int,
    slots: int,
    n_summed: int,
    blobs: Sequence[bytes],
) -> bytes:
    """Assemble an envelope from serialized ciphertexts (see the module docstring)."""
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        kind,
        0,
        _hex_field(key_id, 16, "key id"),
        _hex_field(layout_hash, 32, "layout hash"),
        bytes(32),
        n_values,
        slots,
        len(blobs),
        n_summed,
    )
    prefix = fixed + b"".join(_LENGTH.pack(len(b)) for b in blobs)
    digest = _digest_of_prefix(prefix)
    for blob in blobs:
        digest.update(blob)
    prefix = prefix[:_DIGEST_AT] + digest.digest() + prefix[_DIGEST_END:]
    return b"".join([prefix, *blobs])


def _digest_of_prefix(prefix: bytes) -> hashlib._Hash:
    """SHA-256 state after the header and length table, with the digest field read as zeros."""
    digest = hashlib.sha256(prefix[:_DIGEST_AT])
    digest.update(bytes(32))
    digest.update(prefix[_DIGEST_END:])
    return digest


def _parse_fixed(prefix: bytes, total_bytes: int, max_bytes: int) -> tuple:
    if total_bytes > max_bytes:
        raise EnvelopeError(
            f"envelope has {total_bytes} bytes, more than the {max_bytes} allowed",
            "raise max_bytes only if the adapter really is that large",
        )
    if len(prefix) < _FIXED.size:
        raise EnvelopeError(f"envelope is truncated ({total_bytes} bytes)", "upload it again")
    fields = _FIXED.unpack_from(prefix, 0)
    magic, version, kind, reserved, _, _, _, n_values, slots, n_ct, n_summed = fields
    if magic != MAGIC:
        raise EnvelopeError("these bytes are not a confide envelope", "check what was uploaded")
    if version != VERSION:
        raise EnvelopeError(
            f"envelope format version {version} is not supported (this build reads {VERSION})",
            "encrypt with the same confide version as the federation",
        )
    if kind not in _KIND_NAMES or reserved != 0:
        raise EnvelopeError("envelope header is corrupt (kind or reserved field)", "upload again")
    if slots not in _SLOT_COUNTS:
        raise EnvelopeError(f"envelope declares {slots} slots per ciphertext", "it is corrupt")
    # More values than max_bytes could carry means a forged count; refusing it here also bounds
    # the length table that is read next.
    if n_values < 1 or n_values > max_bytes:
        raise EnvelopeError(f"envelope declares {n_values} values", "it is corrupt")
    if n_ct != ciphertexts_needed(n_values, slots):
        raise EnvelopeError(
            f"envelope declares {n_ct} ciphertexts for {n_values} values; "
            f"{ciphertexts_needed(n_values, slots)} are needed",
            "it is corrupt",
        )
    if n_summed < 1 or (kind == KIND_UPDATE and n_summed != 1):
        raise EnvelopeError(f"envelope declares {n_summed} contributions", "it is corrupt")
    return fields


def _parse_header(
    prefix: bytes,
    total_bytes: int,
    *,
    expected_key_id: str | None,
    expected_layout_hash: str | None,
    expected_slots: int | None,
    max_bytes: int,
) -> EnvelopeHeader:
    fields = _parse_fixed(prefix, total_bytes, max_bytes)
    _, _, kind, _, key_raw, layout_raw, digest, n_values, slots, n_ct, n_summed = fields
    header_bytes = _FIXED.size + _LENGTH.size * n_ct
    if len(prefix) < header_bytes:
        raise EnvelopeError("envelope is truncated inside its length table", "upload it again")
    lengths = struct.unpack_from(f">{n_ct}I", prefix, _FIXED.size)
    limit = max_ciphertext_bytes(slots)
    if any(not 16 <= n <= limit for n in lengths):
        raise EnvelopeError(
            f"envelope declares a ciphertext outside 16..{limit} bytes", "it is corrupt"
        )
    declared = header_bytes + sum(lengths)
    if declared != total_bytes:
        problem = "truncated" if declared > total_bytes else "followed by unexpected bytes"
        raise EnvelopeError(
            f"envelope is {problem}: it declares {declared} bytes but has {total_bytes}",
            "upload it again",
        )
    header = EnvelopeHeader(
        kind=_KIND_NAMES[kind],
        key_id=key_raw.hex(),
        layout_hash=layout_raw.hex(),
        sha256=digest.hex(),
        n_values=n_values,
        slots=slots,
        n_ciphertexts=n_ct,
        n_summed=n_summed,
        ciphertext_lengths=tuple(lengths),
        header_bytes=header_bytes,
        total_bytes=total_bytes,
    )
    if expected_key_id is not None and header.key_id != expected_key_id:
        raise WrongKey(
            f"envelope is encrypted under key {header.key_id[:8]}..., "
            f"not the expected {expected_key_id[:8]}...",
            "encrypt with the federation's current key, or load the matching key",
        )
    if expected_layout_hash is not None and header.layout_hash != expected_layout_hash:
        raise LayoutMismatch(
            f"envelope carries adapter layout {header.layout_hash[:12]}..., "
            f"not the expected {expected_layout_hash[:12]}...",
            "all members must use the same adapter config (target modules, rank, dtype)",
        )
    if expected_slots is not None and slots != expected_slots:
        raise EnvelopeError(
            f"envelope uses {slots} slots per ciphertext; these parameters have {expected_slots}",
            "it was made with other CKKS parameters",
        )
    return header


def read_header(
    data: EnvelopeSource,
    *,
    expected_key_id: str | None = None,
    expected_layout_hash: str | None = None,
    expected_slots: int | None = None,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    verify_digest: bool = True,
) -> EnvelopeHeader:
    """Validate an envelope without decrypting it: cheap enough for a coordinator to call on
    every upload before storing it.

    ``data`` is the envelope bytes or a path to it. Checks magic, version, kind, the declared
    sizes against the actual length and ``max_bytes``, each ciphertext's SEAL framing, the
    optional expectations, then the digest (one SHA-256 pass, about 2 GB/s; skip with
    ``verify_digest=False``).

    Raises :class:`EnvelopeError` (malformed, truncated, oversized, corrupted),
    :class:`WrongKey`, :class:`LayoutMismatch`.
    """
    expectations = dict(
        expected_key_id=expected_key_id,
        expected_layout_hash=expected_layout_hash,
        expected_slots=expected_slots,
        max_bytes=max_bytes,
    )
    if isinstance(data, (str, os.PathLike)):
        return _read_header_file(Path(data), verify_digest, expectations)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"an envelope must be bytes or a path, not {type(data).__name__}")
    view = memoryview(data)
    n_table = 0
    if len(view) >= _FIXED.size:
        declared = _FIXED.unpack_from(view, 0)[_N_CT_FIELD]
        n_table = min(declared, (len(view) - _FIXED.size) // _LENGTH.size)
    prefix = bytes(view[: _FIXED.size + _LENGTH.size * n_table])
    header = _parse_header(prefix, len(view), **expectations)  # type: ignore[arg-type]
    limit = max_ciphertext_bytes(header.slots)
    for i, (offset, length) in enumerate(
        zip(header.ciphertext_offsets(), header.ciphertext_lengths)
    ):
        check_seal_blob(view[offset : offset + length], limit, f"ciphertext {i}")
    if verify_digest:
        digest = _digest_of_prefix(prefix)
        digest.update(view[header.header_bytes :])
        _check_digest(header, digest.hexdigest())
    return header


def _check_digest(header: EnvelopeHeader, actual: str) -> None:
    if actual != header.sha256:
        raise EnvelopeError(
            "envelope does not match its checksum: it was corrupted in transit or storage",
            "upload it again",
        )


def _read_header_file(
    path: Path, verify_digest: bool, expectations: dict[str, object]
) -> EnvelopeHeader:
    max_bytes = expectations["max_bytes"]
    try:
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            prefix = f.read(_FIXED.size)
            # Validate the fixed part before reading the table, so a forged ciphertext count
            # cannot make us read more than the file holds.
            fields = _parse_fixed(prefix, total, max_bytes)  # type: ignore[arg-type]
            prefix += f.read(_LENGTH.size * fields[_N_CT_FIELD])
            header = _parse_header(prefix, total, **expectations)  # type: ignore[arg-type]
            limit = max_ciphertext_bytes(header.slots)
            digest = _digest_of_prefix(prefix)
            for i, length in enumerate(header.ciphertext_lengths):
                blob = f.read(length)
                check_seal_blob(blob, limit, f"ciphertext {i} of {path}")
                if verify_digest:
                    digest.update(blob)
    except OSError as err:
        raise EnvelopeError(
            f"cannot read envelope {path}: {err.strerror}", "check the path"
        ) from None
    if verify_digest:
        _check_digest(header, digest.hexdigest())
    return header


def read_ciphertext(source: EnvelopeSource, offset: int, length: int) -> bytes | memoryview:
    """Bytes of one ciphertext of an envelope given as bytes or a path."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        if len(blob) != length:
            raise EnvelopeError(f"envelope {source} changed while it was being read")
        return blob
    return memoryview(source)[offset : offset + length]

"""The binary envelope that carries encrypted updates and sums (never pickled).

Layout, version 1, big endian::

    magic "CFHE" (4) | version (1) | kind (1: update, 2: sum) | reserved (2, zero)
    key id (16) | layout hash (32, SHA-256) | SHA-256 digest (32) | n_values (8)
    slots per ciphertext (4) | n_ciphertexts (4) | n_summed (4)
    bits per coefficient: all ciphertexts but the last (1) | the last (1) | reserved (2, zero)
    n_summed x seed (32 each) | n_ciphertexts x packed c0 (N = 2 x slots coefficients each)

Each ciphertext is its ``c0`` polynomial in coefficient form, bit-packed at the declared width
(see :mod:`confide.aggregation.compact`); its ``a`` polynomial comes from the seeds, one per
contribution. ``n_values`` counts the adapter values; two trailer values (weight, 1) follow
them, and the ciphertext count must equal ``ceil((n_values + 2) / (2 * slots))``. Sizes follow
from the header alone, so every declared count is checked against the actual byte count before
anything is parsed. The digest covers the whole envelope (with the digest field zeroed) and
catches corruption in transit or storage. It is a checksum, not a signature: the platform signs
uploads. An envelope of any other version is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confide.aggregation.bitpack import packed_size
from confide.aggregation.errors import EnvelopeError, LayoutMismatch, WrongKey

MAGIC = b"CFHE"
VERSION = 1
KIND_UPDATE = 1
KIND_SUM = 2
_KIND_NAMES = {KIND_UPDATE: "update", KIND_SUM: "sum"}
_FIXED = struct.Struct(">4sBBH16s32s32sQIIIBBH")
_DIGEST_AT = 56  # offset of the digest field in the fixed header
_DIGEST_END = _DIGEST_AT + 32
SEED_BYTES = 32
#: Coefficient widths an envelope may declare: SEAL's primes have at most 60 bits.
MIN_COEFFICIENT_BITS, MAX_COEFFICIENT_BITS = 8, 60

#: Default ceiling on one envelope: 2 GiB holds a sum of about 2 x 10**8 parameters.
DEFAULT_MAX_ENVELOPE_BYTES = 2**31
#: Slot counts of the supported ring degrees 4096..32768.
_SLOT_COUNTS = (2048, 4096, 8192, 16384)
_HEX = re.compile(r"^[0-9a-f]+$")

EnvelopeSource = bytes | bytearray | memoryview | str | os.PathLike


@dataclass(frozen=True)
class EnvelopeHeader:
    """Validated header of an envelope. Sizes are in bytes; ``n_values`` excludes the trailer;
    ``bits`` is the coefficient width of every ciphertext but the last, ``last_bits`` of the last."""

    kind: str
    key_id: str
    layout_hash: str
    sha256: str
    n_values: int
    slots: int
    n_ciphertexts: int
    n_summed: int
    bits: int
    last_bits: int
    header_bytes: int
    total_bytes: int

    @property
    def ciphertext_lengths(self) -> tuple[int, ...]:
        n = 2 * self.slots
        bulk = packed_size(n, self.bits)
        return (bulk,) * (self.n_ciphertexts - 1) + (packed_size(n, self.last_bits),)

    @property
    def seeds_offset(self) -> int:
        return _FIXED.size

    def ciphertext_offsets(self) -> list[int]:
        """Byte offset of each ciphertext from the start of the envelope."""
        offsets, pos = [], self.header_bytes
        for length in self.ciphertext_lengths:
            offsets.append(pos)
            pos += length
        return offsets


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
    seeds: Sequence[bytes],
    bits: int,
    last_bits: int,
    blobs: Sequence[bytes],
) -> bytes:
    """Assemble an envelope from the contributions' seeds and the packed ciphertexts (see the
    module docstring); ``len(seeds)`` is the number of contributions."""
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
        len(seeds),
        bits,
        last_bits,
        0,
    )
    digest = _digest_of_prefix(fixed)
    for part in (*seeds, *blobs):
        digest.update(part)
    fixed = fixed[:_DIGEST_AT] + digest.digest() + fixed[_DIGEST_END:]
    return b"".join([fixed, *seeds, *blobs])


def _digest_of_prefix(prefix: bytes) -> hashlib._Hash:
    """SHA-256 state after the fixed header, with the digest field read as zeros."""
    digest = hashlib.sha256(prefix[:_DIGEST_AT])
    digest.update(bytes(32))
    digest.update(prefix[_DIGEST_END:])
    return digest


def _parse_header(
    prefix: bytes,
    total_bytes: int,
    *,
    expected_key_id: str | None,
    expected_layout_hash: str | None,
    expected_slots: int | None,
    max_bytes: int,
) -> EnvelopeHeader:
    if total_bytes > max_bytes:
        raise EnvelopeError(
            f"envelope has {total_bytes} bytes, more than the {max_bytes} allowed",
            "raise max_bytes only if the adapter really is that large",
        )
    if len(prefix) >= 5 and prefix[:4] == MAGIC and prefix[4] != VERSION:
        raise EnvelopeError(
            f"envelope format version {prefix[4]} is not supported (this build reads {VERSION})",
            "encrypt with the same confide version as the federation",
        )
    if len(prefix) < _FIXED.size:
        raise EnvelopeError(f"envelope is truncated ({total_bytes} bytes)", "upload it again")
    fields = _FIXED.unpack_from(prefix, 0)
    (magic, _, kind, reserved, key_raw, layout_raw, digest, n_values, slots, n_ct, n_summed,
     bits, last_bits, reserved2) = fields
    if magic != MAGIC:
        raise EnvelopeError("these bytes are not a confide envelope", "check what was uploaded")
    if kind not in _KIND_NAMES or reserved != 0 or reserved2 != 0:
        raise EnvelopeError("envelope header is corrupt (kind or reserved field)", "upload again")
    if slots not in _SLOT_COUNTS:
        raise EnvelopeError(f"envelope declares {slots} slots per ciphertext", "it is corrupt")
    # More values than max_bytes could carry means a forged count.
    if n_values < 1 or n_values > 2 * max_bytes:
        raise EnvelopeError(f"envelope declares {n_values} values", "it is corrupt")
    if n_ct != ciphertexts_needed(n_values, slots):
        raise EnvelopeError(
            f"envelope declares {n_ct} ciphertexts for {n_values} values; "
            f"{ciphertexts_needed(n_values, slots)} are needed",
            "it is corrupt",
        )
    if n_summed < 1 or (kind == KIND_UPDATE and n_summed != 1):
        raise EnvelopeError(f"envelope declares {n_summed} contributions", "it is corrupt")
    widths_ok = all(MIN_COEFFICIENT_BITS <= b <= MAX_COEFFICIENT_BITS for b in (bits, last_bits))
    if not widths_ok or (kind == KIND_SUM and bits != last_bits):
        raise EnvelopeError(f"envelope declares {bits}/{last_bits}-bit coefficients", "it is corrupt")
    header_bytes = _FIXED.size + SEED_BYTES * n_summed
    n = 2 * slots
    declared = header_bytes + (n_ct - 1) * packed_size(n, bits) + packed_size(n, last_bits)
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
        bits=bits,
        last_bits=last_bits,
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
    sizes against the actual length and ``max_bytes``, the optional expectations, then the
    digest (one SHA-256 pass, about 2 GB/s; skip with ``verify_digest=False``).

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
    prefix = bytes(view[: _FIXED.size])
    header = _parse_header(prefix, len(view), **expectations)  # type: ignore[arg-type]
    if verify_digest:
        digest = _digest_of_prefix(prefix)
        digest.update(view[_FIXED.size :])
        _check_digest(header, digest.hexdigest())
    return header


def _check_digest(header: EnvelopeHeader, actual: str) -> None:
    if actual != header.sha256:
        raise EnvelopeError(
            "envelope does not match its checksum: it was corrupted in transit or storage",
            "upload it again",
        )


_READ_CHUNK = 1 << 20


def _read_header_file(
    path: Path, verify_digest: bool, expectations: dict[str, object]
) -> EnvelopeHeader:
    try:
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            prefix = f.read(_FIXED.size)
            header = _parse_header(prefix, total, **expectations)  # type: ignore[arg-type]
            if verify_digest:
                digest = _digest_of_prefix(prefix)
                while chunk := f.read(_READ_CHUNK):
                    digest.update(chunk)
    except OSError as err:
        raise EnvelopeError(
            f"cannot read envelope {path}: {err.strerror}", "check the path"
        ) from None
    if verify_digest:
        _check_digest(header, digest.hexdigest())
    return header


def read_seeds(source: EnvelopeSource, header: EnvelopeHeader) -> list[bytes]:
    """The contributions' seeds, in order."""
    raw = bytes(read_ciphertext(source, header.seeds_offset, SEED_BYTES * header.n_summed))
    return [raw[i : i + SEED_BYTES] for i in range(0, len(raw), SEED_BYTES)]


def read_ciphertext(source: EnvelopeSource, offset: int, length: int) -> bytes | memoryview:
    """``length`` bytes at ``offset`` of an envelope given as bytes or a path."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        if len(blob) != length:
            raise EnvelopeError(f"envelope {source} changed while it was being read")
        return blob
    return memoryview(source)[offset : offset + length]

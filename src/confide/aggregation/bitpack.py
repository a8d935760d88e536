"""Unsigned integers packed to a fixed bit width, little endian, with no padding between values.

Ciphertext coefficients are below a prime of at most 60 bits; after rounding an upload keeps
fewer. Storing each in a 64-bit word would waste the difference, so envelopes pack them.
"""

from __future__ import annotations

import numpy as np

from confide.aggregation.errors import EnvelopeError

MAX_BITS = 64
#: Widths up to this are unpacked with one 8-byte gather per value (value + bit shift <= 64).
_GATHER_MAX_BITS = 57


def packed_size(n_values: int, bits: int) -> int:
    """Bytes that ``n_values`` values of ``bits`` bits occupy."""
    return -(-n_values * bits // 8)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack uint64 ``values`` (each below ``2**bits``) into ``packed_size(len, bits)`` bytes."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width {bits} is outside 1..{MAX_BITS}")
    words = np.ascontiguousarray(values, dtype="<u8")
    if bits < MAX_BITS and words.size and int(words.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    bitmap = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return np.packbits(bitmap[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes | memoryview, bits: int, n_values: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``n_values`` uint64 values. Raises EnvelopeError on a size mismatch."""
    if len(data) != packed_size(n_values, bits):
        raise EnvelopeError(
            f"packed coefficients hold {len(data)} bytes, not {packed_size(n_values, bits)}",
            "the envelope is corrupt",
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == MAX_BITS:
        return raw.view("<u8").astype(np.uint64)
    if bits <= _GATHER_MAX_BITS and n_values % 8 == 0:
        return _unpack_groups(raw, bits, n_values)
    if bits <= _GATHER_MAX_BITS:
        # Each value starts at bit i*bits: read the 8 bytes from its first byte, then shift.
        padded = np.concatenate([raw, np.zeros(8, dtype=np.uint8)])
        start = np.arange(n_values, dtype=np.int64) * bits
        gather = (start >> 3)[:, None] + np.arange(8, dtype=np.int64)
        words = padded[gather].view("<u8").reshape(n_values)
        shift = (start & 7).astype(np.uint64)
        return (words >> shift) & np.uint64((1 << bits) - 1)
    bitmap = np.zeros((n_values, MAX_BITS), dtype=np.uint8)
    bitmap[:, :bits] = np.unpackbits(raw, bitorder="little")[: n_values * bits].reshape(n_values, bits)
    return np.packbits(bitmap, axis=1, bitorder="little").view("<u8").reshape(n_values).astype(np.uint64)


def _unpack_groups(raw: np.ndarray, bits: int, n_values: int) -> np.ndarray:
    """Unpack by groups of 8 values (exactly ``bits`` bytes): value k of every group starts at the
    same byte and bit of its group, so each of the 8 is one strided slice and one shift."""
    rows = n_values // 8
    padded = np.zeros((rows, bits + 8), dtype=np.uint8)
    padded[:, :bits] = raw.reshape(rows, bits)
    out = np.empty((rows, 8), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for k in range(8):
        first, shift = divmod(k * bits, 8)
        words = np.ascontiguousarray(padded[:, first : first + 8]).view("<u8").reshape(rows)
        out[:, k] = (words >> np.uint64(shift)) & mask
    return out.reshape(n_values)

"""Compact CKKS ciphertexts: what an upload carries, how a coordinator adds them, how a key holder
reads the sum.

A fresh symmetric CKKS ciphertext is ``(c0, a)`` with ``c0 = m + e - a*s (mod q0)`` and ``a``
uniform. Uploads carry ``a`` as a 32-byte public seed (SHAKE-256, one per upload, the ciphertext's
position as domain separation) and ``c0`` in coefficient form, rounded to a multiple of
``2**dropped`` and bit-packed to ``log2(q0) - dropped`` bits. Rounding in coefficient form adds
an error of at most ``2**(dropped-1)`` per coefficient, which decryption spreads over the slots
like the fresh noise ``e`` (the error model is in :mod:`confide.policies.ckks`). Rounding in NTT
form would not be small after the inverse transform, hence the coefficient form.

A sum is ``(sum c0, sum a)``: the coordinator adds the ``c0`` modulo ``q0`` with numpy (no SEAL,
no key) and passes on every contributor's seed; the key holder expands and adds the ``a``.

SEAL does the parts that need the key or its vetted samplers: encoding, the noise ``e`` (taken
from a fresh ``encrypt_symmetric``: its decryption is exactly ``m + e``), ``a*s`` (the
decryption of ``(0, a)``), the NTT, and decryption.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable

import numpy as np
import tenseal.sealapi as seal

from confide.aggregation import _seal, bitpack
from confide.aggregation.errors import EnvelopeError

SEED_BYTES = 32
_A_DOMAIN = b"confide/ckks/uniform-a/v1"
#: Values below 2**60 can be added 15 at a time in uint64 before a reduction is needed.
ADDS_PER_REDUCTION = 15


def uniform_poly(seed: bytes, position: int, q: int, n: int, domain: bytes = _A_DOMAIN) -> np.ndarray:
    """The public polynomial ``a`` of ciphertext ``position``: ``n`` values uniform below ``q``,
    by rejection sampling of SHAKE-256 output (masked to q's bit length). ``domain`` separates
    other public polynomials (the rounds' ``b`` of `secagg`) from every ``a``."""
    mask = np.uint64((1 << q.bit_length()) - 1)
    prefix = domain + seed + position.to_bytes(4, "big")
    words = n + n // 8 + 64
    while True:
        # A longer SHAKE digest extends a shorter one, so a retry keeps the values drawn so far.
        stream = np.frombuffer(hashlib.shake_256(prefix).digest(8 * words), dtype="<u8") & mask
        kept = stream[stream < np.uint64(q)]
        if kept.size >= n:
            return kept[:n].astype(np.uint64)
        words *= 2


def add_mod(polys: Iterable[np.ndarray], q: int, n: int) -> np.ndarray:
    """Sum of uint64 polynomials (values below ``q`` < 2**60) modulo ``q``; holds two at a time."""
    total = np.zeros(n, dtype=np.uint64)
    modulus = np.uint64(q)
    for i, poly in enumerate(polys, start=1):
        total += poly
        if i % ADDS_PER_REDUCTION == 0:
            np.remainder(total, modulus, out=total)
    return np.remainder(total, modulus, out=total)


def sub_mod(x: np.ndarray, y: np.ndarray, q: int) -> np.ndarray:
    """``x - y`` modulo ``q`` for uint64 values below ``q``."""
    return np.where(x >= y, x - y, x + (np.uint64(q) - y)).astype(np.uint64)


def round_coefficients(c0: np.ndarray, dropped: int, bits: int) -> np.ndarray:
    """``c0`` rounded to the nearest multiple of ``2**dropped``, as ``bits``-bit integers.

    Values that round up to ``2**bits`` wrap to 0. That happens only for coefficients within
    ``2**(dropped-1)`` of ``2**bits * 2**dropped``, which exceeds ``q0``: such a coefficient is
    within ``2**(dropped-1)`` of ``q0``, i.e. of 0 modulo ``q0``, so the wrap's error stays inside the
    rounding error every coefficient already has.
    """
    if dropped == 0:
        return c0
    half = np.uint64(1 << (dropped - 1))
    return ((c0 + half) >> np.uint64(dropped)) & np.uint64((1 << bits) - 1)


def restore_coefficients(packed: np.ndarray, dropped: int, q: int, what: str) -> np.ndarray:
    """Coefficients modulo ``q`` from their rounded form. Full-width values must already be
    below ``q`` (SEAL's own rule); rounded ones are reduced. Raises EnvelopeError, also for a
    width wider than the modulus' (a negative `dropped`)."""
    if dropped < 0:
        raise EnvelopeError(f"{what} declares coefficients wider than the modulus", "the envelope is corrupt")
    if dropped == 0:
        if packed.size and int(packed.max()) >= q:
            raise EnvelopeError(f"{what} holds a coefficient beyond the modulus", "the envelope is corrupt")
        return packed
    return (packed << np.uint64(dropped)) % np.uint64(q)


def encrypt_rows(
    context: seal.SEALContext,
    secret_key: seal.SecretKey,
    rows: np.ndarray,
    scale_bits: int,
    widths: list[tuple[int, int]],
    scratch: _seal.SealScratch,
    seed: bytes | None = None,
    first_position: int = 0,
    mask: Callable[[int], np.ndarray] | None = None,
) -> tuple[bytes, list[bytes]]:
    """Encrypt each row of complex slots; return the upload's seed and each ciphertext's packed
    ``c0``. ``widths[j]`` is ``(bits, dropped)`` for row ``j``. ``seed`` (32 bytes) is drawn from
    the OS unless given: workers sharing one upload are handed the same seed and their first
    position, so every ciphertext of the upload has its own ``a``. ``mask(position)``, if given,
    is subtracted from ``c0`` before rounding (``b*u`` of `confide.aggregation.secagg`)."""
    seed = os.urandom(SEED_BYTES) if seed is None else seed
    encoder = seal.CKKSEncoder(context)
    encryptor = seal.Encryptor(context, secret_key)
    decryptor = seal.Decryptor(context, secret_key)
    evaluator = seal.Evaluator(context)
    level = context.last_parms_id()
    q = _seal.last_modulus(context)
    n = 2 * rows.shape[1]
    zeros = np.zeros(n, dtype=np.uint64)
    out = []
    for j, (row, (bits, dropped)) in enumerate(zip(rows, widths)):
        plain = seal.Plaintext()
        encoder.encode(row.tolist(), level, 2.0**scale_bits, plain)
        fresh = seal.Ciphertext()
        encryptor.encrypt_symmetric(plain, fresh)
        noisy = seal.Plaintext()  # m + e, in NTT form
        decryptor.decrypt(fresh, noisy)
        ct = _seal.ciphertext_from_polys(
            scratch, context, zeros, uniform_poly(seed, first_position + j, q, n), scale_bits
        )
        evaluator.transform_to_ntt_inplace(ct)
        a_s = seal.Plaintext()
        decryptor.decrypt(ct, a_s)
        evaluator.add_plain_inplace(ct, noisy)
        evaluator.sub_plain_inplace(ct, a_s)  # (m + e - a*s, a)
        evaluator.transform_from_ntt_inplace(ct)
        c0 = _seal.read_poly(ct, 0, n)
        if mask is not None:
            c0 = sub_mod(c0, mask(first_position + j), q)
        out.append(bitpack.pack(round_coefficients(c0, dropped, bits), bits))
    return seed, out


def decrypt_rows(
    context: seal.SEALContext,
    secret_key: seal.SecretKey,
    c0_sums: list[np.ndarray],
    seeds: list[bytes],
    scale_bits: int,
    scratch: _seal.SealScratch,
    unmask: Callable[[int], np.ndarray] | None = None,
) -> np.ndarray:
    """Decrypt summed ``c0`` polynomials (coefficient form, below ``q0``) with the seeds of every
    contribution; returns the complex slots, shape (len(c0_sums), N/2). ``unmask(position)``, if
    given, is added to each ``c0`` first (``b*U``: the uploads' masks, see `secagg`)."""
    encoder = seal.CKKSEncoder(context)
    decryptor = seal.Decryptor(context, secret_key)
    evaluator = seal.Evaluator(context)
    q = _seal.last_modulus(context)
    rows = []
    for j, c0 in enumerate(c0_sums):
        n = c0.size
        if unmask is not None:
            c0 = add_mod((c0, unmask(j)), q, n)
        a_sum = add_mod((uniform_poly(seed, j, q, n) for seed in seeds), q, n)
        ct = _seal.ciphertext_from_polys(scratch, context, c0, a_sum, scale_bits)
        evaluator.transform_to_ntt_inplace(ct)
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        rows.append(np.asarray(encoder.decode_complex(plain), dtype=np.complex128))
    return np.stack(rows)

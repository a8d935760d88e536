"""Secure aggregation inside the CKKS envelope: a fresh additive key per upload, Shamir-shared to a committee.

Every member holds the federation's CKKS secret ``s``, so with plain symmetric CKKS any member who
gets hold of another member's upload (from the coordinator, or a leaked state directory) reads it.
Here each upload carries a second, one-time RLWE secret ``u`` that only its member ever holds:

    c0 = m + e - a*s - b*u   (mod q0)

``a`` comes from the upload's own seed as before; ``b`` is a public polynomial that every member
derives from the federation, the key id and the round (:func:`mask_seed`), the same for all of
them in a round and unknown to nobody. ``u`` is uniform ternary from the OS CSPRNG, drawn afresh
for every upload and never stored. The member Shamir-shares ``u`` coefficient-wise over the prime
field ``F_p``, ``p = 2**31 - 1``, to a committee of members (each share sealed to its holder).

Summing ``K`` uploads gives ``C0 = M + E - (sum a)*s - b*U`` with ``U = sum u_i``. A committee
member reveals, once per round, the sum of the shares it holds over the round's contributor set:
those are shares of ``U``, and any ``t`` of them give ``U`` by Lagrange interpolation at 0 (its
coefficients are at most ``K`` in size, far below ``p/2``, so the integer is exact). A member
adds ``b*U`` back and decrypts with ``s`` as before. Nobody learns a single ``u_i`` unless ``t``
committee members reveal shares of a set that differs from another revealed set by one member.
The argument (what each party sees, the threshold, the parameters) is in ``docs/secure-aggregation.md``.

Everything here is deterministic given its inputs except :func:`ternary_secret` and :func:`share`,
which draw from ``os.urandom``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from confide.aggregation import _seal, compact
from confide.aggregation.errors import EnvelopeError

SHARE_PRIME = 2**31 - 1
"""The Shamir field: products of two elements fit in uint64, and ``p/2`` exceeds any ``|U|``."""
SHARE_BYTES = 4
_MASK_DOMAIN = b"confide/secagg/round-mask/v1"
_B_DOMAIN = b"confide/secagg/uniform-b/v1"
"""SHAKE-256 domain of the ``b`` polynomials: no upload seed makes an ``a`` equal to a ``b``."""


class UnmaskError(EnvelopeError):
    """Revealed share sums that do not make one polynomial (a committee member or the relay lied)."""


@dataclass(frozen=True)
class UploadMask:
    """What one upload is masked with: the round's public seed of ``b`` and the one-time secret ``u``
    (``n`` integers in {-1, 0, 1})."""

    seed: bytes
    secret: np.ndarray


def mask_seed(federation: str, key_id: str, round_index: int) -> bytes:
    """The seed of round ``round_index``'s public polynomials ``b`` (one per ciphertext position):
    fixed by public facts, so neither the coordinator nor any member chooses them."""
    text = f"{federation}\n{key_id}\n{round_index}".encode()
    return hashlib.sha256(_MASK_DOMAIN + b"\n" + text).digest()


def ternary_secret(n: int) -> np.ndarray:
    """``n`` coefficients uniform in {-1, 0, 1} from the OS CSPRNG (rejection of bytes above 252)."""
    kept = np.empty(0, dtype=np.uint8)
    while kept.size < n:
        raw = np.frombuffer(os.urandom(n + n // 8 + 16), dtype=np.uint8)
        kept = np.concatenate([kept, raw[raw < 252]])
    return (kept[:n] % 3).astype(np.int64) - 1


def _field_elements(count: int) -> np.ndarray:
    """``count`` values uniform below ``SHARE_PRIME`` from the OS CSPRNG (31-bit rejection sampling)."""
    kept = np.empty(0, dtype=np.uint64)
    while kept.size < count:
        raw = np.frombuffer(os.urandom(4 * (count + 64)), dtype="<u4").astype(np.uint64) & np.uint64(SHARE_PRIME)
        kept = np.concatenate([kept, raw[raw < np.uint64(SHARE_PRIME)]])
    return kept[:count]


def share(secret: np.ndarray, holders: int, threshold: int) -> list[np.ndarray]:
    """Shamir shares of an integer vector for holders at x = 1..``holders``: any ``threshold`` of them
    give it back, fewer say nothing (each coefficient's polynomial has ``threshold - 1`` uniform
    coefficients). Returns one uint32 vector per holder."""
    if not 1 <= threshold <= holders:
        raise ValueError(f"threshold {threshold} must be between 1 and the {holders} holders")
    p = np.uint64(SHARE_PRIME)
    n = secret.size
    coefficients = [np.asarray(secret, dtype=np.int64) % SHARE_PRIME]
    coefficients += [_field_elements(n) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, holders + 1):
        value = np.zeros(n, dtype=np.uint64)
        for c in reversed(coefficients):  # Horner: value = value*x + c
            value = (value * np.uint64(x) + c.astype(np.uint64)) % p
        shares.append(value.astype(np.uint32))
    return shares


def add_shares(shares: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of share vectors in ``F_p`` (a share of the sum of their secrets)."""
    total = np.zeros(shares[0].size if shares else 0, dtype=np.uint64)
    for s in shares:
        total = (total + s.astype(np.uint64)) % np.uint64(SHARE_PRIME)
    return total.astype(np.uint32)


def _lagrange_at(xs: Sequence[int], at: int) -> list[int]:
    """Lagrange coefficients in ``F_p`` that evaluate the polynomial through points at ``xs`` at ``at``."""
    p = SHARE_PRIME
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (at - xj) % p
                den = den * (xi - xj) % p
        out.append(num * pow(den, p - 2, p) % p)
    return out


def _combine(points: Sequence[tuple[int, np.ndarray]], at: int) -> np.ndarray:
    p = np.uint64(SHARE_PRIME)
    weights = _lagrange_at([x for x, _ in points], at)
    value = np.zeros(points[0][1].size, dtype=np.uint64)
    for w, (_, ys) in zip(weights, points):
        value = (value + ys.astype(np.uint64) * np.uint64(w) % p) % p
    return value


@dataclass(frozen=True)
class Reconstruction:
    """A secret put back together: its value (signed integers), the seats whose points disagree with it,
    and whether any point beyond the threshold checked it (False: exactly ``threshold`` points, so a
    wrong one would go unnoticed until decryption)."""

    secret: np.ndarray
    wrong_seats: tuple[int, ...]
    checked: bool


def reconstruct(points: Sequence[tuple[int, np.ndarray]], threshold: int) -> Reconstruction:
    """The secret from ``(x, share)`` points, correcting wrong points where the others outvote them.

    All points on one polynomial of degree ``threshold - 1``: that one. Otherwise the polynomial
    through some ``threshold`` of them that all but at most ``(len(points) - threshold) // 2`` points
    agree with, which is then the only one possible (Reed-Solomon's unique-decoding radius; the
    search tries the subsets in turn, fine for committees of a few dozen).
    Raises :class:`UnmaskError` when fewer than ``threshold`` points are given, an x repeats, or
    more points disagree than can be corrected."""
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise UnmaskError("two revealed share sums claim the same committee seat", "the relay is faulty")
    if len(points) < threshold:
        raise UnmaskError(f"{len(points)} share sum(s) revealed, {threshold} needed",
                          "wait for more committee members")
    radius = (len(points) - threshold) // 2

    def disagreeing(basis) -> list[int]:
        return [x for x, ys in points if not np.array_equal(_combine(basis, x), ys.astype(np.uint64))]

    basis = points[:threshold]
    wrong = disagreeing(basis)
    if wrong and radius > 0:
        for basis in itertools.combinations(points, threshold):
            wrong = disagreeing(basis)
            if len(wrong) <= radius:
                break
    if len(wrong) > radius:
        raise UnmaskError(f"the revealed share sums do not lie on one polynomial (seats {sorted(wrong)} or others "
                          "disagree, more than can be corrected)",
                          "a committee member revealed a wrong sum, or an upload shared an inconsistent mask")
    value = _combine(basis, 0).astype(np.int64)
    return Reconstruction(np.where(value > SHARE_PRIME // 2, value - SHARE_PRIME, value), tuple(sorted(wrong)),
                          len(points) > threshold)


def shares_to_bytes(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


def shares_from_bytes(data: bytes, n: int, what: str) -> np.ndarray:
    """A share vector of ``n`` field elements from its bytes; raises UnmaskError if malformed."""
    if len(data) != SHARE_BYTES * n:
        raise UnmaskError(f"{what} holds {len(data)} bytes, not {SHARE_BYTES * n}", "it is corrupt")
    values = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    if values.size and int(values.max()) >= SHARE_PRIME:
        raise UnmaskError(f"{what} holds a value outside the share field", "it is corrupt")
    return values


class RingProducts:
    """Products ``b_j * v`` modulo ``q0`` (negacyclic, exact) for the round's ``b`` polynomials and
    one small integer polynomial ``v``, computed by SEAL: ``(0, b) x (0, v)`` is ``(0, 0, b*v)``."""

    def __init__(self, context: seal.SEALContext, seed: bytes, v: np.ndarray,
                 scratch: _seal.SealScratch) -> None:
        self.context, self.seed, self.scratch = context, seed, scratch
        self.q = _seal.last_modulus(context)
        self.n = v.size
        self.evaluator = seal.Evaluator(context)
        self._zeros = np.zeros(self.n, dtype=np.uint64)
        self._v = _seal.ciphertext_from_polys(scratch, context, self._zeros,
                                              (np.asarray(v, dtype=np.int64) % self.q).astype(np.uint64), 0)
        self.evaluator.transform_to_ntt_inplace(self._v)

    def at(self, position: int) -> np.ndarray:
        b = compact.uniform_poly(self.seed, position, self.q, self.n, _B_DOMAIN)
        ct = _seal.ciphertext_from_polys(self.scratch, self.context, self._zeros, b, 0)
        self.evaluator.transform_to_ntt_inplace(ct)
        product = seal.Ciphertext()
        self.evaluator.multiply(ct, self._v, product)
        self.evaluator.transform_from_ntt_inplace(product)
        return _seal.read_poly(product, 2, self.n)


def pack_bundle(blobs: Sequence[bytes]) -> bytes:
    """An upload's sealed shares, one per committee seat in seat order, each behind its u32 length."""
    return b"".join(len(b).to_bytes(4, "big") + bytes(b) for b in blobs)


def unpack_bundle(data: bytes, max_items: int = 64) -> list[bytes]:
    """The sealed shares of a bundle; raises UnmaskError if it is not a well-formed bundle."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data) or len(out) >= max_items:
            raise UnmaskError("the shares bundle is truncated or too long", "upload it again")
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 0 or pos + 4 + size > len(data):
            raise UnmaskError("the shares bundle is truncated", "upload it again")
        out.append(bytes(data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    return out

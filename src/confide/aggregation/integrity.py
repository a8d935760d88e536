"""Sums a member can check: a one-time linear MAC over the ciphertexts, keyed by what only members hold.

The coordinator adds the members' ``c0`` polynomials modulo the prime ``q`` and passes their seeds
on; CKKS is malleable, so without a check it could add a plaintext of its choosing, leave a
contribution out, count one twice, or hand over someone's single upload as "the sum". Members
hold a key the coordinator does not (derived from the federation's secret key), so each tags its
upload with a Carter-Wegman style linear MAC over the field ``Z_q``::

    t_k(i) = <alpha_k, c0_i> + beta_k(i)   (mod q),   k = 1..T

``alpha_k`` (one value per coefficient of every ciphertext, uniform in ``[0, 2**(b-1))`` with
``q`` a ``b``-bit prime) is fresh per federation and round, ``beta_k(i)`` (uniform mod q) is a
one-time pad per round and member; both come from SHAKE-256 keyed by HKDF-SHA256 of the secret
key material, with the round's adapter layout and size in the round key. The member signs its tags
into its contribution statement. A member checking a sum
``S`` against the statements of the set ``C`` it names recomputes

    <alpha_k, c0(S)>  ==  sum_{i in C} t_k(i) - sum_{i in C} beta_k(i)   (mod q)

and that ``S``'s seeds are exactly the statements' seeds, in order. Sums are linear modulo ``q``,
so the honest sum passes exactly (no tolerance: ciphertexts are integers). A forged ``c0(S)`` =
``sum c0_i + D`` with ``D != 0`` passes a tag only if ``<alpha_k, D> = 0 (mod q)``: at a position
where ``D_j != 0``, one value of ``alpha_j`` in ``2**(b-1)`` does that, so each attempt passes all
``T = ceil(128 / (b-1))`` tags with probability at most ``2**-128`` (T = 3 for the default 60-bit
prime).
The coordinator sees the tags, but each is masked by its pad, so it learns nothing of ``alpha``.
The argument, with what it does not cover, is in docs/integrity.md.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.aggregation import _parallel, _seal
from confide.aggregation.errors import SumRefused
from confide.aggregation.keys import PublicContext, SecretKeyMaterial
from confide.aggregation.wire import EnvelopeHeader, EnvelopeSource, read_header, read_seeds

__all__ = ["Contributor", "contribution_tags", "integrity_key", "tag_problem", "tags_for", "verify_sum"]

SECURITY_BITS = 128
"""A forged sum passes every tag with probability at most 2**-SECURITY_BITS per try (see `tags_for`)."""
MAX_TAGS = 8
_TAG = re.compile(r"(0|[1-9][0-9]{0,19})")
_LIMB_BITS = 20
_LIMB = np.uint64((1 << _LIMB_BITS) - 1)
_INFO = b"confide sum integrity v1 "


@dataclass(frozen=True)
class Contributor:
    """One contribution a sum claims to hold, as its signed statement names it."""

    institution: str
    seed: str
    """The upload's seed, hex."""
    tags: Sequence[str]
    """Its integrity tags, decimal."""


def integrity_key(secret_bytes: bytes, key_id: str) -> bytes:
    """The members' 32-byte MAC key, derived (HKDF-SHA256) from the federation's secret key material.

    `secret_bytes` are the exact bytes every member holds (what the key holder sealed); the
    coordinator never has them, so it cannot compute any tag.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + key_id.encode()).derive(secret_bytes)


def tags_for(q: int) -> int:
    """Tags per contribution under the prime `q`: each bounds a forgery by 2**-(b-1) for a b-bit
    prime, so ceil(SECURITY_BITS / (b-1)) of them (3 for the default 60-bit prime, 8 at 17 bits)."""
    return min(MAX_TAGS, math.ceil(SECURITY_BITS / (q.bit_length() - 1)))


def tag_problem(tags: Sequence[str], keys: PublicContext | SecretKeyMaterial) -> str | None:
    """Why `tags` are not a well-formed set of tags under the key's prime (count, decimal form, below
    the prime), or None. The coordinator can check this much with the public context."""
    return _tag_problem(tags, _seal.last_modulus(keys.context))


def _tag_problem(tags: Sequence[str], q: int) -> str | None:
    if len(tags) != tags_for(q):
        return f"{len(tags)} integrity tag(s), this federation's key takes {tags_for(q)}"
    if not all(isinstance(t, str) and _TAG.fullmatch(t) and int(t) < q for t in tags):
        return "an integrity tag is not a decimal number below the modulus"
    return None


def _round_key(key: bytes, federation: str, round_index: int, layout_hash: str, n_values: int) -> bytes:
    """The round's MAC key: it also names the adapter's layout and size, so the tags bind the vector's shape."""
    label = f"{len(federation)}:{federation}|{round_index}|{layout_hash}|{n_values}".encode()
    return hmac.new(key, label, hashlib.sha256).digest()


def _pad(round_key: bytes, tag: int, institution: str, q: int) -> int:
    label = b"pad" + struct.pack(">I", tag) + institution.encode()
    # 128 uniform bits reduced modulo a prime below 2**60: statistically uniform (bias below 2**-68).
    return int.from_bytes(hashlib.shake_256(round_key + label).digest(16), "big") % q


def _alpha(round_key: bytes, tag: int, positions: range, n: int, bits: int) -> np.ndarray:
    """The MAC's coefficients for ciphertext `positions` (n per ciphertext), uniform in [0, 2**bits)."""
    mask = np.uint64((1 << bits) - 1)
    parts = [
        np.frombuffer(hashlib.shake_256(round_key + b"alpha" + struct.pack(">II", tag, j)).digest(8 * n), dtype="<u8")
        for j in positions
    ]
    return np.concatenate(parts).astype(np.uint64) & mask


def _limbs(values: np.ndarray) -> list[np.ndarray]:
    return [(values >> np.uint64(_LIMB_BITS * k)) & _LIMB for k in range(3)]


def _dot_mod(alpha: np.ndarray, coefficients: np.ndarray, q: int) -> int:
    """<alpha, coefficients> mod q, exactly: both split into 20-bit limbs so no uint64 product or
    block sum overflows (a block holds at most 64 ciphertexts of 32768 values, 2**21: each limb
    product is below 2**40, so each sum stays below 2**61)."""
    total = 0
    for i, a in enumerate(_limbs(alpha)):
        for j, c in enumerate(_limbs(coefficients)):
            total += int(np.dot(a, c)) << (_LIMB_BITS * (i + j))
    return total % q


def _coefficient_blocks(envelope: EnvelopeSource, header: EnvelopeHeader, material: SecretKeyMaterial
                        ) -> Iterator[tuple[range, np.ndarray]]:
    """The envelope's c0 coefficients modulo q (as the coordinator adds them), a block of ciphertexts at a time."""
    q = _seal.last_modulus(material.context)
    full_bits = material.params.coeff_mod_bit_sizes[0]
    part = _parallel.part_of(envelope, header, None, copy=False)
    for begin in range(0, header.n_ciphertexts, _parallel.SUM_BLOCK):
        run = range(begin, min(begin + _parallel.SUM_BLOCK, header.n_ciphertexts))
        yield run, _parallel.block_coefficients(part, run, q, full_bits)


def _macs(material: SecretKeyMaterial, round_key: bytes, envelope: EnvelopeSource, header: EnvelopeHeader
          ) -> list[int]:
    """<alpha_k, c0> mod q for every tag k, over every ciphertext of `envelope`."""
    q = _seal.last_modulus(material.context)
    bits = q.bit_length() - 1
    n = material.params.poly_modulus_degree
    macs = [0] * tags_for(q)
    for run, coefficients in _coefficient_blocks(envelope, header, material):
        for k in range(len(macs)):
            macs[k] = (macs[k] + _dot_mod(_alpha(round_key, k, run, n, bits), coefficients, q)) % q
    return macs


def contribution_tags(material: SecretKeyMaterial, key: bytes, federation: str, round_index: int,
                      institution: str, envelope: EnvelopeSource) -> tuple[str, ...]:
    """The integrity tags of one member's upload `envelope` in `round_index` (decimal strings).

    Raises what reading the envelope raises (EnvelopeError, WrongKey).
    """
    header = read_header(envelope, expected_key_id=material.key_id, expected_slots=material.params.slots)
    round_key = _round_key(key, federation, round_index, header.layout_hash, header.n_values)
    q = _seal.last_modulus(material.context)
    return tuple(str((mac + _pad(round_key, k, institution, q)) % q)
                 for k, mac in enumerate(_macs(material, round_key, envelope, header)))


def verify_sum(material: SecretKeyMaterial, key: bytes, federation: str, round_index: int,
               sum_envelope: EnvelopeSource, contributors: Sequence[Contributor], layout_hash: str,
               n_values: int) -> None:
    """Check that `sum_envelope` is exactly the sum of the uploads `contributors` name, nothing added,
    for an adapter of `layout_hash` with `n_values` values.

    Raises :class:`SumRefused` (another shape, seeds that are not the statements', malformed or
    mismatching tags) and what reading the envelope raises (EnvelopeError, WrongKey, LayoutMismatch).
    """
    params = material.params
    header = read_header(sum_envelope, expected_key_id=material.key_id, expected_layout_hash=layout_hash,
                         expected_slots=params.slots)
    full_bits = params.coeff_mod_bit_sizes[0]
    if header.kind != "sum" or header.n_values != n_values or (header.bits, header.last_bits) != (full_bits,
                                                                                                full_bits):
        raise SumRefused(f"the sum is not a sum of {n_values} values at {full_bits}-bit coefficients",
                         "the coordinator sent something else than the round's sum; nothing was applied")
    seeds = [s.hex() for s in read_seeds(sum_envelope, header)]
    if seeds != [c.seed for c in contributors]:
        raise SumRefused(f"the sum's {len(seeds)} seed(s) are not the {len(contributors)} named by its statements",
                         "the coordinator did not add exactly the contributions it names; nothing was applied")
    q = _seal.last_modulus(material.context)
    for c in contributors:
        problem = _tag_problem(c.tags, q)
        if problem is not None:
            raise SumRefused(f"{c.institution}'s statement: {problem}",
                             "its upload was not tagged by a member of this federation")
    round_key = _round_key(key, federation, round_index, layout_hash, n_values)
    for k, mac in enumerate(_macs(material, round_key, sum_envelope, header)):
        claimed = sum(int(c.tags[k]) - _pad(round_key, k, c.institution, q) for c in contributors) % q
        if mac != claimed:
            raise SumRefused("the sum does not match its contributions' integrity tags (something was added to "
                             "it, or a contribution changed)", "the coordinator altered the sum; nothing was applied")

"""Client encryption, coordinator summation and key-holder decryption of adapter updates.

A client encrypts ``weight * delta`` followed by the trailer ``[weight, 1]``; the coordinator
adds envelopes without any key; a key-holder decrypts the sum, divides by the weight slot to get
the federated average and reads the number of contributions from the count slot.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from confide.aggregation import _parallel, _seal, bitpack, compact
from confide.aggregation._parallel import WorkerPool
from confide.aggregation.errors import (
    DecryptionCheckFailed,
    EnvelopeError,
    InvalidUpdate,
    KeyMaterialError,
    LayoutMismatch,
)
from confide.aggregation.keys import SecretKeyMaterial, require_public
from confide.aggregation.params import COUNT_TOLERANCE, CkksParameters, check_capacity
from confide.aggregation.secagg import RingProducts, UploadMask
from confide.aggregation.wire import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    KIND_SUM,
    KIND_UPDATE,
    SEED_BYTES,
    EnvelopeHeader,
    EnvelopeSource,
    build_envelope,
    read_ciphertext,
    read_header,
    read_seeds,
)

__all__ = [
    "DecryptedSum",
    "check_envelope",
    "EnvelopeHeader",
    "WorkerPool",
    "decrypt_sum",
    "encrypt_update",
    "read_header",
    "sum_envelopes",
]

_LAYOUT_HASH = re.compile(r"^[0-9a-f]{64}$")
#: Padding slots decrypt to pure noise; 100x the high-probability noise bound flags garbage.
_PADDING_FACTOR = 100.0


@dataclass(frozen=True)
class DecryptedSum:
    """A decrypted sum: ``average`` = weighted sum / ``total_weight`` (float64, one value per
    adapter parameter), ``count`` = number of contributions, ``error_bound`` = high-probability
    absolute CKKS error per value of ``average``. Raw decryptions stay with key holders: they leak
    the key (Li-Micciancio), and no release to anyone else is built."""

    average: np.ndarray
    total_weight: float
    count: int
    error_bound: float


def _require_secret(material: object) -> SecretKeyMaterial:
    if not isinstance(material, SecretKeyMaterial):
        raise KeyMaterialError(
            f"expected SecretKeyMaterial, got {type(material).__name__}",
            "load it with load_secret() after opening the sealed key",
        )
    return material


def encrypt_update(
    secret_material: SecretKeyMaterial,
    delta: np.ndarray,
    weight: float,
    layout_hash: str,
    workers: int | WorkerPool = 1,
    mask: UploadMask | None = None,
) -> bytes:
    """Encrypt ``weight * delta`` and the trailer ``[weight, 1]`` into an update envelope.

    ``delta`` is the flat adapter update (see ``codec.flatten``), ``weight`` a positive number
    (e.g. the number of training records), ``layout_hash`` the adapter layout's hash.
    ``workers`` > 1 (or a :class:`WorkerPool`) encrypts in that many spawned processes.
    ``mask`` adds the upload's one-time secret (`confide.aggregation.secagg`): then only a sum
    unmasked with the committee's revealed shares decrypts, not the upload alone.

    Raises :class:`InvalidUpdate` (not 1-D, not finite, bad weight or hash) and
    :class:`CapacityExceeded` (values too large for the parameters' headroom).
    """
    material = _require_secret(secret_material)
    params = material.params
    delta = np.asarray(delta)
    if delta.ndim != 1 or delta.size == 0 or not np.issubdtype(delta.dtype, np.floating):
        raise InvalidUpdate(
            f"delta must be a non-empty 1-D float array, got {delta.dtype} of shape {delta.shape}",
            "flatten the adapter with codec.flatten()",
        )
    if not np.all(np.isfinite(delta)):
        raise InvalidUpdate("delta holds NaN or infinite values", "check training for divergence")
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise InvalidUpdate(f"weight must be a positive finite number, got {weight!r}")
    if not isinstance(layout_hash, str) or not _LAYOUT_HASH.match(layout_hash):
        raise InvalidUpdate("layout_hash must be 64 hex characters", "pass AdapterLayout.hash")
    values = np.concatenate([float(weight) * delta.astype(np.float64), [float(weight), 1.0]])
    check_capacity(params, delta.size, float(np.max(np.abs(values))), n_contributions=1)

    rows = _seal.pack_complex(values, params.slots)
    widths = upload_widths(params, len(rows))
    n_workers = _parallel.worker_count(workers)
    seed = os.urandom(SEED_BYTES)
    if n_workers > 1 and len(rows) > 1:
        secret_bytes = material.to_bytes()
        jobs = [
            (secret_bytes, rows[r.start : r.stop], widths[r.start : r.stop], seed, r.start, mask)
            for r in _parallel.split_ranges(len(rows), n_workers)
        ]
        parts = _parallel.run_spawned(_parallel.encrypt_task, jobs, workers)
        blobs = [b for part in parts for b in part]
    else:
        with _seal.SealScratch() as scratch:
            masks = None if mask is None else RingProducts(material.context, mask.seed, mask.secret, scratch).at
            _, blobs = compact.encrypt_rows(
                material.context, material.secret_key, rows, params.scale_bits, widths, scratch,
                seed=seed, mask=masks,
            )
    return build_envelope(
        KIND_UPDATE, material.key_id, layout_hash, delta.size, params.slots, [seed],
        params.upload_bits(), params.upload_bits(trailer=True), blobs,
    )


def upload_widths(params: CkksParameters, n_ciphertexts: int) -> list[tuple[int, int]]:
    """``(bits, dropped)`` of each ciphertext of an upload: the last one holds the trailer."""
    bulk = (params.upload_bits(), params.dropped_bits())
    last = (params.upload_bits(trailer=True), params.dropped_bits(trailer=True))
    return [bulk] * (n_ciphertexts - 1) + [last]


def sum_envelopes(
    public_context: object,
    envelopes: Iterable[EnvelopeSource],
    workers: int | WorkerPool = 1,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
) -> bytes:
    """Add update (or sum) envelopes into one sum envelope, without any secret key.

    ``public_context`` is a PublicContext or its bytes; anything holding a secret key is refused.
    ``envelopes`` are bytes or paths. Every header is validated (key, slots, layout, size,
    coefficient widths, digest) before any coefficient is added; the ``c0`` polynomials are then
    added modulo ``q0`` in numpy, a block of positions at a time across all envelopes, so
    working memory is two blocks whatever the number of institutions (paths are read
    piecewise), and the contributions' seeds are passed on. ``workers`` > 1 (or a
    :class:`WorkerPool`) splits the positions across processes.

    Raises :class:`SecretKeyPresent`, :class:`EnvelopeError` (malformed, none given, duplicate,
    different sizes or widths), :class:`WrongKey`, :class:`LayoutMismatch`.
    """
    public = require_public(public_context)
    params = public.params
    sources = list(envelopes)
    headers = _checked_headers(public, sources, max_bytes)
    first = headers[0]
    full_bits = params.coeff_mod_bit_sizes[0]
    seeds = [seed for s, h in zip(sources, headers) for seed in read_seeds(s, h)]
    _refuse_duplicates(seeds, headers)

    n_ct = first.n_ciphertexts
    q = _seal.last_modulus(public.context)
    n_workers = _parallel.worker_count(workers)
    if n_workers > 1 and n_ct > 1:
        jobs = [
            ([_parallel.part_of(s, h, r, copy=True) for s, h in zip(sources, headers)], r, q, full_bits)
            for r in _parallel.split_ranges(n_ct, n_workers)
        ]
        parts = _parallel.run_spawned(_parallel.sum_task, jobs, workers)
        blobs = [b for part in parts for b in part]
    else:
        envelope_parts = [_parallel.part_of(s, h, None, copy=False) for s, h in zip(sources, headers)]
        blobs = _parallel.sum_positions(envelope_parts, range(n_ct), q, full_bits)
    return build_envelope(
        KIND_SUM, public.key_id, first.layout_hash, first.n_values, first.slots, seeds,
        full_bits, full_bits, blobs,
    )


def check_envelope(public_context: object, envelope: EnvelopeSource,
                   max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> EnvelopeHeader:
    """Everything :func:`sum_envelopes` checks of one envelope, without building a sum: the header
    (key, slots, size, digest), the coefficient widths these parameters make, and, for
    full-width ciphertexts, that every coefficient is below ``q0`` (rounded ones always are).

    Raises what :func:`sum_envelopes` raises.
    """
    public = require_public(public_context)
    header = _checked_headers(public, [envelope], max_bytes)[0]
    full_bits = public.params.coeff_mod_bit_sizes[0]
    if full_bits in (header.bits, header.last_bits):
        part = _parallel.part_of(envelope, header, None, copy=False)
        q = _seal.last_modulus(public.context)
        for begin in range(0, header.n_ciphertexts, _parallel.SUM_BLOCK):
            run = range(begin, min(begin + _parallel.SUM_BLOCK, header.n_ciphertexts))
            _parallel.block_coefficients(part, run, q, full_bits)
    return header


def _checked_headers(public, sources: list[EnvelopeSource], max_bytes: int) -> list[EnvelopeHeader]:
    """Validated headers of envelopes that can be summed together under ``public``'s parameters."""
    params = public.params
    if not sources:
        raise EnvelopeError("no envelopes to sum", "wait for at least one upload")
    headers = [
        read_header(s, expected_key_id=public.key_id, expected_slots=params.slots, max_bytes=max_bytes)
        for s in sources
    ]
    first = headers[0]
    full_bits = params.coeff_mod_bit_sizes[0]
    for i, h in enumerate(headers):
        if h.layout_hash != first.layout_hash:
            raise LayoutMismatch(
                f"envelope {i} carries adapter layout {h.layout_hash[:12]}..., "
                f"envelope 0 carries {first.layout_hash[:12]}...",
                "only updates of the same adapter layout can be summed",
            )
        if h.n_values != first.n_values:
            raise EnvelopeError(
                f"envelope {i} holds {h.n_values} values, envelope 0 holds {first.n_values}",
                "only updates of the same adapter can be summed",
            )
        expected = (
            (params.upload_bits(), params.upload_bits(trailer=True)) if h.kind == "update"
            else (full_bits, full_bits)
        )
        if (h.bits, h.last_bits) != expected:
            raise EnvelopeError(
                f"envelope {i} carries {h.bits}/{h.last_bits}-bit coefficients; these parameters "
                f"make {expected[0]}/{expected[1]}",
                "it was made with other CKKS parameters (upload_precision_bits, scale_bits)",
            )
    return headers


def _refuse_duplicates(seeds: list[bytes], headers: list[EnvelopeHeader]) -> None:
    """Refuse the same upload twice (a replay would double-count one member). Every upload
    draws a fresh seed, so a seed seen twice means a copy, whatever the headers say."""
    owner = [i for i, h in enumerate(headers) for _ in range(h.n_summed)]
    seen: dict[bytes, int] = {}
    for seed, i in zip(seeds, owner):
        if seed in seen:
            first = seen[seed]
            where = f"envelopes {first} and {i} carry" if first != i else f"envelope {i} carries"
            raise EnvelopeError(f"{where} the same upload", "sum each institution's upload once")
        seen[seed] = i


def decrypt_sum(
    secret_material: SecretKeyMaterial, envelope_bytes: bytes, expected_layout_hash: str,
    unmask: UploadMask | None = None,
) -> DecryptedSum:
    """Decrypt a sum envelope into the federated average (key holders only).

    ``unmask`` is the round's mask seed with the sum ``U`` of the contributors' one-time secrets
    (reconstructed from the committee's shares, `secagg.reconstruct`), for sums of masked uploads.

    Checks the key id and layout hash, then that the count slot is a whole number matching the
    declared number of contributions, that the weight slot is positive and that padding slots
    decrypt to noise only (a wrapped-around or corrupt sum fails these).

    Raises :class:`WrongKey`, :class:`LayoutMismatch`, :class:`EnvelopeError`,
    :class:`DecryptionCheckFailed`.
    """
    material = _require_secret(secret_material)
    params = material.params
    header = read_header(
        envelope_bytes,
        expected_key_id=material.key_id,
        expected_layout_hash=expected_layout_hash,
        expected_slots=params.slots,
    )
    if header.kind != "sum":
        raise EnvelopeError(
            "this envelope is a single update, not a sum", "decrypt what the coordinator returns"
        )
    q = _seal.last_modulus(material.context)
    full_bits = params.coeff_mod_bit_sizes[0]
    if (header.bits, header.last_bits) != (full_bits, full_bits):
        raise EnvelopeError(
            f"sum envelope carries {header.bits}-bit coefficients; these parameters make {full_bits}",
            "it was made with other CKKS parameters",
        )
    n_coeff = params.poly_modulus_degree
    c0_sums = [
        compact.restore_coefficients(
            bitpack.unpack(read_ciphertext(envelope_bytes, o, size), full_bits, n_coeff), 0, q,
            f"ciphertext {j}",
        )
        for j, (o, size) in enumerate(zip(header.ciphertext_offsets(), header.ciphertext_lengths))
    ]
    with _seal.SealScratch() as scratch:
        masks = None if unmask is None else RingProducts(material.context, unmask.seed, unmask.secret, scratch).at
        slots = compact.decrypt_rows(
            material.context, material.secret_key, c0_sums, read_seeds(envelope_bytes, header),
            params.scale_bits, scratch, unmask=masks,
        )
    values = _seal.unpack_real(slots)
    n = header.n_values
    total_weight, count_slot = float(values[n]), float(values[n + 1])
    count = round(count_slot)
    if abs(count_slot - count) > COUNT_TOLERANCE or count < 1:
        raise DecryptionCheckFailed(
            f"count slot decrypts to {count_slot:.6g}, not a whole number of contributions",
            "the sum overflowed the parameters' headroom or the envelope is corrupt",
        )
    if count != header.n_summed:
        raise DecryptionCheckFailed(
            f"count slot says {count} contributions but the envelope declares {header.n_summed}",
            "the coordinator's header is wrong; do not apply this round",
        )
    noise = params.error_bound(count)
    # Padding shares the trailer's ciphertext; the coarser bulk bound is still far below a wrap.
    padding = values[n + 2 :]
    if padding.size and float(np.max(np.abs(padding))) > _PADDING_FACTOR * noise:
        raise DecryptionCheckFailed(
            "padding slots decrypt to more than noise", "the envelope is corrupt"
        )
    if not total_weight > 0:
        raise DecryptionCheckFailed(
            f"weight slot decrypts to {total_weight:.6g}, not a positive total weight",
            "an upload carried a non-positive weight or the envelope is corrupt",
        )
    return DecryptedSum(
        average=values[:n] / total_weight,
        total_weight=total_weight,
        count=count,
        error_bound=noise / total_weight,
    )

"""Encrypt at clients, sum at the coordinator without a key, decrypt the federated average."""

from __future__ import annotations

import numpy as np
import pytest
from aggregation_helpers import lora_state_dict

from confide.aggregation import (
    CapacityExceeded,
    CkksParameters,
    DecryptionCheckFailed,
    EnvelopeError,
    InvalidUpdate,
    LayoutMismatch,
    PublicContext,
    WorkerPool,
    WrongKey,
    bitpack,
    check_envelope,
    create_key_material,
    decrypt_sum,
    encrypt_update,
    flatten,
    read_header,
    sum_envelopes,
    unflatten,
)
from confide.aggregation.wire import KIND_SUM, build_envelope, read_seeds

N_INSTITUTIONS = 10


def institution_updates(size: int, rng: np.random.Generator):
    """Ten updates ~ N(0, 0.01) (standard deviation 0.1) with unequal policy weights (public
    aggregation weights: small numbers, never record counts)."""
    deltas = [rng.normal(0.0, 0.1, size) for _ in range(N_INSTITUTIONS)]
    weights = [float(w) for w in rng.integers(1, 5, N_INSTITUTIONS)]
    return deltas, weights


def fedavg(deltas, weights) -> np.ndarray:
    """Plaintext float64 federated averaging: the reference."""
    w = np.asarray(weights, dtype=np.float64)
    return (w[:, None] * np.stack(deltas)).sum(axis=0) / w.sum()


@pytest.fixture(scope="module")
def uploads(material, layout):
    rng = np.random.default_rng(7)
    deltas, weights = institution_updates(layout.size, rng)
    envelopes = [encrypt_update(material, d, w, layout.hash) for d, w in zip(deltas, weights)]
    return deltas, weights, envelopes


def test_decrypted_average_matches_plaintext_fedavg_for_ten_institutions(
    material, coordinator, layout, uploads
):
    deltas, weights, envelopes = uploads
    result = decrypt_sum(material, sum_envelopes(coordinator, envelopes), layout.hash)
    assert np.max(np.abs(result.average - fedavg(deltas, weights))) <= 1e-4
    assert result.count == N_INSTITUTIONS
    assert result.total_weight == pytest.approx(sum(weights), abs=1e-4)
    assert np.max(np.abs(result.average - fedavg(deltas, weights))) <= result.error_bound


def test_dropped_institutions_leave_the_average_of_those_that_uploaded(
    material, coordinator, layout, uploads
):
    deltas, weights, envelopes = uploads
    kept = [0, 2, 3, 5, 8, 9]
    result = decrypt_sum(
        material, sum_envelopes(coordinator, [envelopes[i] for i in kept]), layout.hash
    )
    expected = fedavg([deltas[i] for i in kept], [weights[i] for i in kept])
    assert np.max(np.abs(result.average - expected)) <= result.error_bound
    assert result.count == len(kept)


def test_sums_of_sums_add_up_like_one_sum(material, coordinator, layout, uploads):
    deltas, weights, envelopes = uploads
    partial = [sum_envelopes(coordinator, envelopes[:4]), sum_envelopes(coordinator, envelopes[4:])]
    result = decrypt_sum(material, sum_envelopes(coordinator, partial), layout.hash)
    assert result.count == N_INSTITUTIONS
    assert np.max(np.abs(result.average - fedavg(deltas, weights))) <= result.error_bound


def test_decrypted_average_unflattens_into_the_adapter(material, coordinator):
    state, layout = lora_state_dict(seed=3), None
    vector, layout = flatten(state)
    envelope = encrypt_update(material, vector, 3.0, layout.hash)
    result = decrypt_sum(material, sum_envelopes(coordinator, [envelope]), layout.hash)
    restored = unflatten(result.average, layout)
    for name, tensor in state.items():
        assert np.allclose(restored[name].numpy(), tensor.numpy(), atol=result.error_bound)


def test_upload_costs_less_than_a_float32_per_parameter(material, layout):
    n = 16 * 4096 - 2  # whole ciphertexts, so no padding is counted
    envelope = encrypt_update(material, np.zeros(n), 1.0, layout.hash)
    assert len(envelope) / n < 4.0


@pytest.mark.integration
def test_parallel_encryption_and_summation_match_the_serial_result(
    material, coordinator, layout, uploads, tmp_path
):
    deltas, weights, envelopes = uploads
    paths = []
    for i, envelope in enumerate(envelopes[:3]):
        paths.append(tmp_path / f"upload-{i}.cfhe")
        paths[-1].write_bytes(envelope)
    serial = sum_envelopes(coordinator, envelopes[:3])
    with WorkerPool(2) as pool:
        assert sum_envelopes(coordinator, paths, workers=pool) == serial
        assert sum_envelopes(coordinator, envelopes[:3], workers=pool) == serial
        parallel_upload = encrypt_update(material, deltas[0], weights[0], layout.hash, workers=pool)
    result = decrypt_sum(material, sum_envelopes(coordinator, [parallel_upload]), layout.hash)
    assert np.max(np.abs(result.average - deltas[0])) <= result.error_bound


def test_summing_paths_reads_files_and_matches_bytes(coordinator, uploads, tmp_path):
    _, _, envelopes = uploads
    paths = []
    for i, envelope in enumerate(envelopes[:2]):
        paths.append(tmp_path / f"u{i}")
        paths[-1].write_bytes(envelope)
    assert sum_envelopes(coordinator, paths) == sum_envelopes(coordinator, envelopes[:2])


def test_envelopes_of_another_adapter_layout_are_refused(material, coordinator, layout, uploads):
    _, _, envelopes = uploads
    other = flatten(lora_state_dict(rank=2))[1]
    foreign = encrypt_update(material, np.zeros(other.size), 1.0, other.hash)
    with pytest.raises(LayoutMismatch):
        sum_envelopes(coordinator, [envelopes[0], foreign])
    total = sum_envelopes(coordinator, envelopes[:2])
    with pytest.raises(LayoutMismatch):
        decrypt_sum(material, total, other.hash)


def test_envelopes_under_another_key_are_refused(material, other_material, coordinator, layout, uploads):
    _, _, envelopes = uploads
    foreign = encrypt_update(other_material, np.zeros(layout.size), 1.0, layout.hash)
    with pytest.raises(WrongKey):
        sum_envelopes(coordinator, [envelopes[0], foreign])
    with pytest.raises(WrongKey):
        decrypt_sum(other_material, sum_envelopes(coordinator, envelopes[:2]), layout.hash)


@pytest.mark.parametrize("keep", [0, 3, 50, 111, -1])
def test_truncated_envelope_is_refused(coordinator, uploads, keep, tmp_path):
    envelope = uploads[2][0]
    cut = envelope[:keep] if keep >= 0 else envelope[:keep]
    with pytest.raises(EnvelopeError):
        read_header(cut)
    path = tmp_path / "cut"
    path.write_bytes(cut)
    with pytest.raises(EnvelopeError):
        sum_envelopes(coordinator, [path])


# Byte offsets in the fixed header: magic 0, version 4, kind 5, key id 8, layout 24,
# payload digest 56, n_values 88, slots 96, n_ciphertexts 100, n_summed 104, widths 108-109,
# reserved 110; the seed follows at 112, the ciphertexts at 144.
@pytest.mark.parametrize(
    "offset, error",
    [
        (0, EnvelopeError),  # magic
        (4, EnvelopeError),  # version
        (5, EnvelopeError),  # kind
        (8, WrongKey),  # key id
        (60, EnvelopeError),  # payload digest
        (95, EnvelopeError),  # n_values
        (99, EnvelopeError),  # slots
        (103, EnvelopeError),  # ciphertext count
        (108, EnvelopeError),  # coefficient width
        (110, EnvelopeError),  # reserved
        (120, EnvelopeError),  # seed
        (200, EnvelopeError),  # inside a ciphertext
        (-5, EnvelopeError),  # end of the last ciphertext
    ],
)
def test_garbled_envelope_is_refused_by_the_coordinator(coordinator, uploads, offset, error):
    garbled = bytearray(uploads[2][0])
    garbled[offset] ^= 0x41
    with pytest.raises(error):
        sum_envelopes(coordinator, [bytes(garbled)])


def test_garbled_layout_hash_is_refused(coordinator, uploads):
    garbled = bytearray(uploads[2][1])
    garbled[30] ^= 0x01
    with pytest.raises(EnvelopeError, match="checksum"):
        sum_envelopes(coordinator, [uploads[2][0], bytes(garbled)])


def test_oversized_or_padded_envelope_is_refused(coordinator, uploads):
    envelope = uploads[2][0]
    with pytest.raises(EnvelopeError, match="more than"):
        read_header(envelope, max_bytes=len(envelope) - 1)
    with pytest.raises(EnvelopeError, match="unexpected bytes"):
        sum_envelopes(coordinator, [envelope + b"\x00"])


def test_non_envelopes_are_refused(coordinator):
    for junk in (b"", b"\x80\x04\x95pickle", bytes(4096)):
        with pytest.raises(EnvelopeError):
            sum_envelopes(coordinator, [junk])
    with pytest.raises(EnvelopeError, match="no envelopes"):
        sum_envelopes(coordinator, [])


def test_the_same_upload_twice_is_refused(coordinator, uploads):
    envelope = uploads[2][0]
    with pytest.raises(EnvelopeError, match="same upload"):
        sum_envelopes(coordinator, [envelope, uploads[2][1], envelope])


def test_single_update_is_not_decrypted_as_a_sum(material, layout, uploads):
    with pytest.raises(EnvelopeError, match="not a sum"):
        decrypt_sum(material, uploads[2][0], layout.hash)


def test_coordinator_misstating_the_number_of_contributions_is_detected(
    material, coordinator, layout, uploads
):
    # A dishonest coordinator can rewrite the header and its checksum; the count slot is
    # encrypted, so the key-holder still notices.
    # The declared count is the number of seeds: claiming a fourth contribution needs a fourth
    # seed, whose polynomial then garbles the decryption.
    total = sum_envelopes(coordinator, uploads[2][:3])
    h = read_header(total)
    blobs = [total[o : o + n] for o, n in zip(h.ciphertext_offsets(), h.ciphertext_lengths)]
    seeds = read_seeds(total, h) + [bytes(range(32))]
    forged = build_envelope(KIND_SUM, h.key_id, h.layout_hash, h.n_values, h.slots, seeds,
                            h.bits, h.last_bits, blobs)
    with pytest.raises(DecryptionCheckFailed):
        decrypt_sum(material, forged, layout.hash)


def test_sum_beyond_the_headroom_is_detected_instead_of_returned():
    # Scale 2**57 under a 60-bit prime leaves room for sums up to ~4: each upload fits,
    # three of them wrap around the modulus.
    tight = create_key_material(CkksParameters(scale_bits=57))
    layout_hash = "00" * 32
    uploads = [encrypt_update(tight, np.full(4094, 1.0), 1.9, layout_hash) for _ in range(3)]
    total = sum_envelopes(tight.public_context(), uploads)
    with pytest.raises(DecryptionCheckFailed):
        decrypt_sum(tight, total, layout_hash)


@pytest.mark.parametrize(
    "delta, weight",
    [
        (np.array([0.1, np.nan]), 1.0),
        (np.ones((2, 2)), 1.0),
        (np.array([1, 2]), 1.0),
        (np.ones(3), 0.0),
        (np.ones(3), -2.0),
        (np.ones(3), float("inf")),
    ],
)
def test_invalid_updates_are_refused_before_encryption(material, delta, weight):
    with pytest.raises(InvalidUpdate):
        encrypt_update(material, delta, weight, "00" * 32)


def test_update_too_large_for_the_parameters_is_refused(material):
    with pytest.raises(CapacityExceeded):
        encrypt_update(material, np.ones(10), 1e6, "00" * 32)


def test_a_replayed_upload_relabelled_as_a_sum_is_still_refused(coordinator, uploads):
    # A sum of one upload is that upload repacked at full width, under the same seed.
    envelope = uploads[2][0]
    relabelled = sum_envelopes(coordinator, [envelope])
    assert read_header(relabelled).kind == "sum"
    with pytest.raises(EnvelopeError, match="same upload"):
        sum_envelopes(coordinator, [envelope, relabelled])


def test_envelopes_of_another_version_are_refused_with_a_message_that_says_why(coordinator, uploads):
    assert uploads[2][0][4] == 1  # today's envelope format is version 1
    for version in (0, 2):
        other = bytearray(uploads[2][0])
        other[4] = version
        with pytest.raises(EnvelopeError, match=f"envelope format version {version} is not supported "
                           r"\(this build reads 1\)") as err:
            sum_envelopes(coordinator, [bytes(other)])
        assert len(err.value.lines()) == 1


def test_uploads_of_other_precision_parameters_are_refused_by_the_coordinator(coordinator, layout):
    coarse = create_key_material(CkksParameters(upload_precision_bits=12))
    foreign = encrypt_update(coarse, np.zeros(layout.size), 1.0, layout.hash)
    other = PublicContext.from_bytes(coarse.public_context_bytes())
    sum_envelopes(other, [foreign])  # its own coordinator takes it
    with pytest.raises(EnvelopeError, match="bit coefficients"):
        sum_envelopes(coordinator, [_rekeyed(foreign, coordinator.key_id)])


def _rekeyed(envelope: bytes, key_id: str) -> bytes:
    """The same envelope under another key id (as if it were made with the coordinator's key)."""
    h = read_header(envelope)
    blobs = [envelope[o : o + n] for o, n in zip(h.ciphertext_offsets(), h.ciphertext_lengths)]
    return build_envelope(1, key_id, h.layout_hash, h.n_values, h.slots, read_seeds(envelope, h),
                          h.bits, h.last_bits, blobs)


def test_a_sum_coefficient_beyond_the_modulus_is_refused_without_a_key(coordinator, uploads):
    check_envelope(coordinator, uploads[2][0])  # what the coordinator runs on every upload
    total = sum_envelopes(coordinator, uploads[2][:2])
    h = read_header(total)
    blobs = [total[o : o + n] for o, n in zip(h.ciphertext_offsets(), h.ciphertext_lengths)]
    first = bitpack.unpack(blobs[0], h.bits, 2 * h.slots)
    first[0] = (1 << h.bits) - 1  # above q0, which is below 2**bits
    blobs[0] = bitpack.pack(first, h.bits)
    forged = build_envelope(KIND_SUM, h.key_id, h.layout_hash, h.n_values, h.slots, read_seeds(total, h),
                            h.bits, h.last_bits, blobs)
    with pytest.raises(EnvelopeError, match="beyond the modulus"):
        check_envelope(coordinator, forged)
    with pytest.raises(EnvelopeError, match="beyond the modulus"):
        sum_envelopes(coordinator, [forged])

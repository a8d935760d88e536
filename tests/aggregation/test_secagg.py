"""Secure aggregation inside the envelope: masked uploads, Shamir shares of the masks, unmasked sums."""

from __future__ import annotations

import numpy as np
import pytest

from confide.aggregation.envelope import decrypt_sum, encrypt_update, sum_envelopes
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.secagg import (
    SHARE_PRIME,
    UnmaskError,
    UploadMask,
    add_shares,
    mask_seed,
    reconstruct,
    share,
    ternary_secret,
)

HASH = "ab" * 32


def test_ternary_secrets_are_fresh_and_ternary() -> None:
    a, b = ternary_secret(4096), ternary_secret(4096)
    assert set(np.unique(a)) == {-1, 0, 1}
    assert not np.array_equal(a, b)
    # Uniform over three values: each within 5 standard deviations of n/3.
    counts = np.bincount(a + 1, minlength=3)
    assert np.all(np.abs(counts - 4096 / 3) < 5 * np.sqrt(4096 * 2 / 9))


@pytest.mark.parametrize("holders,threshold", [(3, 2), (3, 3), (7, 5), (10, 7)])
def test_any_threshold_shares_of_a_sum_give_the_sum(holders: int, threshold: int) -> None:
    rng = np.random.default_rng(holders * 10 + threshold)
    secrets = [ternary_secret(256) for _ in range(4)]
    shares = [share(s, holders, threshold) for s in secrets]
    sums = [add_shares([sh[j] for sh in shares]) for j in range(holders)]
    seats = rng.permutation(holders)[:threshold]
    points = [(int(j) + 1, sums[j]) for j in seats]
    assert np.array_equal(reconstruct(points, threshold).secret, np.sum(secrets, axis=0))
    # Every revealed point beyond the threshold is checked against the others.
    everyone = [(j + 1, sums[j]) for j in range(holders)]
    rebuilt = reconstruct(everyone, threshold)
    assert np.array_equal(rebuilt.secret, np.sum(secrets, axis=0))
    assert rebuilt.checked == (holders > threshold) and rebuilt.wrong_seats == ()


def wrong(values: np.ndarray) -> np.ndarray:
    forged = values.copy()
    forged[5] = (int(forged[5]) + 1) % SHARE_PRIME
    return forged


def test_a_wrong_share_sum_beyond_the_threshold_is_caught() -> None:
    secret = ternary_secret(64)
    shares = share(secret, 4, 3)
    with pytest.raises(UnmaskError, match="one polynomial"):
        reconstruct([(1, shares[0]), (2, shares[1]), (3, shares[2]), (4, wrong(shares[3]))], 3)
    with pytest.raises(UnmaskError, match="needed"):
        reconstruct([(1, shares[0]), (2, shares[1])], 3)


@pytest.mark.parametrize("bad_seat", [1, 4, 9])
def test_wrong_share_sums_the_others_outvote_are_corrected_and_named(bad_seat: int) -> None:
    """Committee of 10, threshold 7: with every reveal in, one wrong share sum (anywhere, even among the
    first seven) is outvoted; two are not (beyond the unique-decoding radius of one)."""
    secret = ternary_secret(128)
    shares = share(secret, 10, 7)
    points = [(j + 1, wrong(s) if j + 1 == bad_seat else s) for j, s in enumerate(shares)]
    rebuilt = reconstruct(points, 7)
    assert np.array_equal(rebuilt.secret, secret) and rebuilt.wrong_seats == (bad_seat,)
    twice = [(x, wrong(s) if x in (bad_seat, 10 if bad_seat != 10 else 2) else s) for x, s in points]
    with pytest.raises(UnmaskError, match="more than can be corrected"):
        reconstruct(twice, 7)


def test_fewer_than_threshold_shares_say_nothing_about_the_secret() -> None:
    """With threshold 3, two shares of an all-zero and of an all-one secret look the same: uniform."""
    zeros = np.zeros(20000, dtype=np.int64)
    ones = np.ones(20000, dtype=np.int64)
    for secret in (zeros, ones):
        s1, s2 = share(secret, 5, 3)[:2]
        for s in (s1, s2):
            # Uniform on F_p: mean p/2 within 5 sigma, no value repeats the secret's structure.
            assert abs(float(s.mean()) - SHARE_PRIME / 2) < 5 * SHARE_PRIME / np.sqrt(12 * s.size)


def test_a_masked_upload_alone_does_not_decrypt_but_the_unmasked_sum_does(material, coordinator, layout) -> None:
    """The attack of issue 32: a member holding the federation key reads another member's upload.
    With masks it gets noise; the sum, unmasked with the committee's shares, decrypts exactly."""
    n = material.params.poly_modulus_degree
    seed = mask_seed("fed", material.key_id, 3)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 0.01, layout.size) for _ in range(3)]
    masks = [UploadMask(seed, ternary_secret(n)) for _ in deltas]
    uploads = [encrypt_update(material, d, 1.0, HASH, mask=m) for d, m in zip(deltas, masks)]

    with pytest.raises(DecryptionCheckFailed):
        decrypt_sum(material, sum_envelopes(coordinator, [uploads[0]]), HASH)

    shares = [share(m.secret, 3, 2) for m in masks]
    revealed = [(j + 1, add_shares([sh[j] for sh in shares])) for j in (0, 2)]
    total = reconstruct(revealed, 2).secret
    result = decrypt_sum(material, sum_envelopes(coordinator, uploads), HASH, unmask=UploadMask(seed, total))
    assert result.count == 3
    assert np.max(np.abs(result.average - np.mean(deltas, axis=0))) <= result.error_bound

    # The shares of a set that leaves one upload out do not open the full sum.
    partial = reconstruct([(j + 1, add_shares([sh[j] for sh in shares[:2]])) for j in (0, 1)], 2).secret
    with pytest.raises(DecryptionCheckFailed):
        decrypt_sum(material, sum_envelopes(coordinator, uploads), HASH, unmask=UploadMask(seed, partial))


def test_a_masked_upload_read_with_the_federation_key_is_uncorrelated(material, coordinator, layout) -> None:
    """What a colluding member computes from one masked upload (decrypting it as a one-member sum,
    without the checks) carries no trace of the update: correlation within chance."""
    from confide.aggregation import _seal, bitpack, compact
    from confide.aggregation.wire import read_ciphertext, read_header, read_seeds

    n = material.params.poly_modulus_degree
    rng = np.random.default_rng(1)
    delta = rng.normal(0, 0.01, layout.size)
    upload = encrypt_update(material, delta, 1.0, HASH, mask=UploadMask(mask_seed("f", material.key_id, 1),
                                                                        ternary_secret(n)))
    total = sum_envelopes(coordinator, [upload])
    header = read_header(total)
    q = _seal.last_modulus(material.context)
    bits = material.params.coeff_mod_bit_sizes[0]
    c0 = [compact.restore_coefficients(bitpack.unpack(read_ciphertext(total, o, size), bits, n), 0, q, "ct")
          for o, size in zip(header.ciphertext_offsets(), header.ciphertext_lengths)]
    with _seal.SealScratch() as scratch:
        slots = compact.decrypt_rows(material.context, material.secret_key, c0, read_seeds(total, header),
                                     material.params.scale_bits, scratch)
    read = _seal.unpack_real(slots)[: layout.size]
    corr = float(np.corrcoef(read, delta)[0, 1])
    assert abs(corr) < 5 / np.sqrt(layout.size)

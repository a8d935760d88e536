"""Secure aggregation attacked: real members (tiny model, real DP rounds, real CKKS) and the real coordinator.

The attackers hold what they would hold: a colluding member has the federation key, its own state
and the mask shares sealed to it; the coordinator has its whole state directory (uploads, sealed
shares, statements, reveals) and may ask the committee whatever it likes. Each attack must leave
an honest member's single upload unreadable: it fails to decrypt, and what a decryption without
checks gives is uncorrelated with the update.
"""

from __future__ import annotations

import numpy as np
import pytest

from confide.aggregation import _seal, bitpack, compact
from confide.aggregation.envelope import decrypt_sum, sum_envelopes
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.sealing import SHARE_INFO, open_sealed
from confide.aggregation.secagg import UnmaskError, UploadMask, mask_seed, reconstruct, shares_from_bytes
from confide.aggregation.wire import read_ciphertext, read_header, read_seeds
from confide.formats import sha256
from confide.platform.member import Member
from confide.platform.secure_sum import RevealRefused, Reveals, unmask
from tests.platform.federation_kit import (
    evidence,
    reveal,
    upload,
)
from tests.platform.test_federation import start


def upload_all(coordinator, members, round_index: int) -> None:
    for name, member in members.items():
        upload(coordinator, name, round_index, member.take_part(round_index), now=float(round_index))
    assert coordinator.advance(now=float(round_index)) == "sum"
    assert coordinator.state.current.status == "unmasking"


def stored_upload(coordinator, round_index: int, name: str) -> bytes:
    return coordinator.get_blob(f"upload-r{round_index}-{name}.bin")


def shares_of(coordinator, round_index: int, holder: str) -> dict[str, bytes]:
    return coordinator.unmask_request(round_index, holder)[1]


def pooled_mask(coordinator, members, round_index: int, name: str, holders) -> UploadMask:
    """The mask of `name`'s upload from the shares of `holders` pooled (raises UnmaskError below the threshold)."""
    federation = members[name].federation
    points = []
    for holder in holders:
        opened = open_sealed(shares_of(coordinator, round_index, holder)[name],
                             members[holder].identity.sealing_private, holder, SHARE_INFO)
        points.append((federation.committee.index(holder) + 1,
                       shares_from_bytes(opened, federation.ckks.poly_modulus_degree, "share")))
    return UploadMask(mask_seed(federation.federation_id, members[name].key_id(), round_index),
                      reconstruct(points, federation.unmask_threshold).secret)


def raw_reading(member: Member, envelope: bytes, public_context) -> np.ndarray:
    """What a key holder reads from one upload by decrypting it without any check (and without its mask)."""
    single = sum_envelopes(public_context, [envelope])
    header = read_header(single)
    secret = member.secret
    q = _seal.last_modulus(secret.context)
    n, bits = secret.params.poly_modulus_degree, secret.params.coeff_mod_bit_sizes[0]
    c0 = [compact.restore_coefficients(bitpack.unpack(read_ciphertext(single, o, size), bits, n), 0, q, "ct")
          for o, size in zip(header.ciphertext_offsets(), header.ciphertext_lengths)]
    with _seal.SealScratch() as scratch:
        slots = compact.decrypt_rows(secret.context, secret.secret_key, c0, read_seeds(single, header),
                                     secret.params.scale_bits, scratch)
    return _seal.unpack_real(slots)[: member.layout.size]


def test_a_member_with_the_coordinators_state_reads_no_other_members_upload(tmp_path):
    """Issue 32's attack: member c takes the upload files from the coordinator's state directory and
    decrypts the others' uploads with the federation key. Before: exact updates. Now: nothing."""
    federation, members, coordinator = start(tmp_path)
    upload_all(coordinator, members, 1)
    reveal(coordinator, members, 1)
    assert coordinator.state.current.status == "summed"
    c, layout = members["c"], members["c"].layout.hash
    public = coordinator.public_context
    statements, reveals = coordinator.contributions(1), coordinator.reveals(1)
    total_mask = unmask(federation, c.roster, c.secret.key_id, 1, statements, reveals).mask
    for victim in ("a", "b"):
        envelope = stored_upload(coordinator, 1, victim)
        # The truth, for the comparison only: what the whole committee pooling its shares could read.
        truth = decrypt_sum(c.secret, sum_envelopes(public, [envelope]), layout,
                            unmask=pooled_mask(coordinator, members, 1, victim, federation.committee))
        assert truth.count == 1 and np.abs(truth.average).max() > 0
        with pytest.raises(DecryptionCheckFailed):  # the federation key alone
            decrypt_sum(c.secret, sum_envelopes(public, [envelope]), layout)
        with pytest.raises(DecryptionCheckFailed):  # with the mask of the whole sum, all the coordinator has
            decrypt_sum(c.secret, sum_envelopes(public, [envelope]), layout, unmask=total_mask)
        with pytest.raises(UnmaskError):  # with c's own share of the victim's mask: one point, t needed
            pooled_mask(coordinator, members, 1, victim, ["c"])
        reading = raw_reading(c, envelope, public)
        correlation = float(np.corrcoef(reading, truth.average * truth.total_weight)[0, 1])
        assert abs(correlation) < 5 / np.sqrt(reading.size)
    # The sum of the round, which every member may read, still decrypts for c.
    total = coordinator.sum_for(1)
    assert decrypt_sum(c.secret, total, layout, unmask=total_mask).count == 3


@pytest.mark.integration  # four real members, two rounds
def test_a_deviating_coordinator_with_a_colluding_member_gets_no_single_upload(tmp_path):
    """Four members, committee of four, one colluder (d) allowed: threshold 3. The coordinator fakes a's
    drop-out after the first set was revealed, picks a set of a with the colluder, replays last round's
    set, and relays a share of its own making; the honest committee members refuse each, and nothing
    the coalition gathers opens a's upload."""
    federation, members, coordinator = start(tmp_path, ids=("a", "b", "c", "d"))
    assert (federation.colluders, federation.unmask_threshold, federation.committee) == (1, 3, federation.committee)
    assert sorted(federation.committee) == ["a", "b", "c", "d"]
    key = members["a"].key_id()
    upload_all(coordinator, members, 1)
    everyone = coordinator.contributions(1)
    def colluder_reveals(statements, record: str):
        """d colludes: it reveals whatever it is asked, keeping no once-per-round record."""
        return Reveals(tmp_path / record, federation, members["d"].roster, members["d"].identity).reveal(
            1, key, statements, shares_of(coordinator, 1, "d"))

    # The honest set, revealed by a, b and the colluder: U over all four.
    first = {who: members[who].reveal(1, everyone, shares_of(coordinator, 1, who)) for who in ("a", "b")}
    first["d"] = colluder_reveals(everyone, "d-first")

    # A set of a with the colluder only: below min_cohort 2 plus one colluder.
    pair = [s for s in everyone if s.institution in ("a", "d")]
    with pytest.raises(RevealRefused, match="needs 3"):
        members["c"].reveal(1, pair, shares_of(coordinator, 1, "c"))

    # A fake drop-out of a: the same round, the set without a. a and b refuse a second set; c, who has
    # not revealed yet, and the colluder do: two reveals, three needed.
    without_a = [s for s in everyone if s.institution != "a"]
    second = {"c": members["c"].reveal(1, without_a, shares_of(coordinator, 1, "c")),
              "d": colluder_reveals(without_a, "d-second")}
    for who in ("a", "b"):
        with pytest.raises(RevealRefused, match="second contributor set"):
            members[who].reveal(1, without_a, shares_of(coordinator, 1, who))
    problem = unmask(federation, members["d"].roster, key, 1, without_a, list(second.values())).problem
    assert problem is not None and "3 needed" in problem

    # A share substituted by the coordinator (sealed to c by itself, labelled as a's): refused.
    forged_shares = dict(shares_of(coordinator, 1, "c"))
    forged_shares["a"] = shares_of(coordinator, 1, "c")["b"]
    with pytest.raises(RevealRefused, match="not the one its statement names"):
        Reveals(tmp_path / "c-fresh", federation, members["c"].roster, members["c"].identity).reveal(
            1, key, everyone, forged_shares)

    # Round 2: last round's statements replayed as this round's set are refused.
    with pytest.raises(RevealRefused, match="round 1"):
        members["b"].reveal(2, everyone, shares_of(coordinator, 1, "b"))

    # Everything the coalition (coordinator + d) holds: U of the full set, c's and d's reveals of the set
    # without a, d's own shares. None of it opens a's upload.
    full = unmask(federation, members["d"].roster, key, 1, everyone, list(first.values())).mask
    envelope = stored_upload(coordinator, 1, "a")
    single = sum_envelopes(coordinator.public_context, [envelope])
    with pytest.raises(DecryptionCheckFailed):
        decrypt_sum(members["d"].secret, single, members["d"].layout.hash, unmask=full)
    with pytest.raises(UnmaskError):
        pooled_mask(coordinator, members, 1, "a", ["d"])
    # And the honest sum still opens for everyone.
    assert decrypt_sum(members["b"].secret, coordinator.sum_for(1), members["b"].layout.hash,
                       unmask=full).count == 4


def test_a_committee_member_killed_after_revealing_reveals_the_same_set_again_and_no_other(tmp_path):
    federation, members, coordinator = start(tmp_path)
    upload_all(coordinator, members, 1)
    everyone = coordinator.contributions(1)
    first = members["b"].reveal(1, everyone, shares_of(coordinator, 1, "b"))
    restarted = Member(federation, members["b"].policy)  # the reveal was written before it was sent
    assert restarted.reveal(1, everyone, shares_of(coordinator, 1, "b")) == first
    with pytest.raises(RevealRefused, match="second contributor set"):
        restarted.reveal(1, [s for s in everyone if s.institution != "c"], shares_of(coordinator, 1, "b"))


def test_no_set_is_unmasked_whose_members_were_handed_different_sums_the_round_before(tmp_path):
    """A coordinator that split the federation in round 1 (with a colluder's help, say) finds no committee
    member to unmask round 2: c's signed statement names the other sum it was handed."""
    federation, members, coordinator = start(tmp_path)
    upload_all(coordinator, members, 1)
    reveal(coordinator, members, 1)
    total = coordinator.sum_for(1)
    for name, member in members.items():
        assert member.apply_sum(1, total, evidence(coordinator, 1, name)).kind == "applied"
    coordinator.open_next_round(now=2.0)
    upload_all(coordinator, members, 2)
    statements = coordinator.contributions(2)
    assert {s.previous_sum for s in statements} == {sha256(total)}  # every member names the sum it applied
    split = [s if s.institution != "c" else members["c"].identity.sign_document(
        s.model_copy(update={"previous_sum": "ab" * 32})) for s in statements]
    with pytest.raises(RevealRefused, match="applied different sums in round 1"):
        members["a"].reveal(2, split, shares_of(coordinator, 2, "a"))
    assert members["a"].reveal(2, statements, shares_of(coordinator, 2, "a")).round == 2

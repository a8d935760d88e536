"""The federation driven directly: members and the coordinator, in this process, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from confide.aggregation.envelope import decrypt_sum, read_header, sum_envelopes
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.params import CkksParameters
from confide.aggregation.sealing import SHARE_INFO, open_sealed
from confide.aggregation.secagg import UploadMask, mask_seed, reconstruct, shares_from_bytes
from confide.formats import StatementClaims, sha256
from confide.identity import Identity
from confide.platform import faults
from confide.platform.coordinator import Coordinator
from confide.platform.member import Member
from confide.platform.protocol import new_federation
from confide.platform.secure_sum import Unmasking, unmask
from confide.platform.sum_evidence import SumEvidence
from confide.privacy.ledger_entries import Kind
from tests.aggregation.aggregation_helpers import update_under_another_key
from tests.platform.federation_kit import (
    evidence,
    load_files,
    make_federation_files,
    publish_and_install,
    reveal,
    summed,
    upload,
)


def start(tmp_path, **kwargs):
    """Members with keys installed and a coordinator with round 1 open."""
    federation, institutions = load_files(*make_federation_files(tmp_path, **kwargs))
    members = {p.institution_id: Member(federation, p) for p in institutions}
    coordinator = Coordinator(
        tmp_path / "coordinator",
        new_federation("tiny", list(members), federation.key_holder_id, federation.min_institutions,
                       federation.rounds, federation.round_deadline_s, federation.committee,
                       federation.unmask_threshold),
        Identity.generate("coordinator"), federation,
    )
    publish_and_install(coordinator, members, federation)
    coordinator.open_next_round(now=0.0)
    return federation, members, coordinator


def adapters(members):
    from confide.aggregation.codec import flatten
    from confide.privacy.trainable import trainable_state

    return {name: flatten(trainable_state(m.learner.model))[0] for name, m in members.items()}


def whole_committee_reads(coordinator, members: dict, round_index: int, name: str) -> UploadMask:
    """The mask of `name`'s upload, rebuilt by every committee member pooling its share of it."""
    federation = members[name].federation
    points = []
    for seat, holder in enumerate(coordinator.state.committee):
        _, shares = coordinator.unmask_request(round_index, holder)
        opened = open_sealed(shares[name], members[holder].identity.sealing_private, holder, SHARE_INFO)
        points.append((seat + 1, shares_from_bytes(opened, federation.ckks.poly_modulus_degree, "share")))
    return UploadMask(mask_seed(federation.federation_id, members[name].key_id(), round_index),
                      reconstruct(points, federation.unmask_threshold).secret)


def test_homomorphic_average_equals_plaintext_fedavg_and_members_stay_identical(tmp_path):
    federation, members, coordinator = start(tmp_path)
    before = adapters(members)["a"]
    envelopes = {}
    for name, member in members.items():
        contribution = member.take_part(1)
        assert contribution.kind == "upload"
        envelopes[name] = contribution.envelope
        receipt = upload(coordinator, name, 1, contribution)
        member.record_receipt(1, receipt.to_dict(), contribution.envelope, coordinator.identity.public.signing_public)
    assert coordinator.advance(now=1.0) == "sum"
    reveal(coordinator, members, 1)
    assert coordinator.state.current.status == "summed"
    total = coordinator.sum_for(1)
    # The plaintext reference: each institution's own update, decrypted alone (its mask rebuilt from every
    # committee member's share of it: what a coalition of the whole committee could do), averaged in float64.
    secret = members["a"].secret
    layout = members["a"].layout.hash
    with pytest.raises(DecryptionCheckFailed):  # without its mask an upload is noise, even to a member
        decrypt_sum(secret, sum_envelopes(coordinator.public_context, [envelopes["b"]]), layout)
    singles = [decrypt_sum(secret, sum_envelopes(coordinator.public_context, [envelopes[n]]), layout,
                           unmask=whole_committee_reads(coordinator, members, 1, n))
               for n in sorted(envelopes)]
    weights = np.array([s.total_weight for s in singles])
    deltas = np.stack([s.average for s in singles])
    fedavg = (weights[:, None] * deltas).sum(axis=0) / weights.sum()
    assert np.abs(fedavg).max() > 1e-4  # the updates are not trivially zero
    decrypted = decrypt_sum(secret, total, layout, unmask=unmask(
        federation, members["a"].roster, secret.key_id, 1, coordinator.contributions(1), coordinator.reveals(1))[1])
    assert decrypted.count == 3
    assert np.abs(decrypted.average - fedavg).max() <= 1e-6
    for name, member in members.items():
        assert member.apply_sum(1, total, evidence(coordinator, 1, name)).kind == "applied"
    after = adapters(members)
    assert np.abs(after["a"] - (before + fedavg)).max() <= 1e-6
    assert all(np.array_equal(after["a"], v) for v in after.values())
    for member in members.values():
        assert member.ledger.verify(member.identity.public) == []
        kinds = [e["kind"] for e in member.ledger.entries()]
        assert kinds == ["data_version", "key", "spend", "outcome", "receipt", "applied"]


def test_take_part_never_trains_a_round_twice(tmp_path):
    federation, members, _ = start(tmp_path)
    first = members["b"].take_part(1)
    again = members["b"].take_part(1)
    assert again.envelope == first.envelope
    # A restarted member over the same state directory returns the same envelope, not a new draw.
    restarted = Member(federation, members["b"].policy)
    assert restarted.take_part(1).envelope == first.envelope
    assert [e["kind"] for e in restarted.ledger.entries()].count("spend") == 1


def test_kill_between_spend_and_upload_counts_the_spend_and_skips_the_round(tmp_path):
    federation, members, _ = start(tmp_path)
    member = members["c"]
    member.plan()
    from confide.privacy.reservation import reserve_round

    # What a crash right after the write-ahead spend leaves: a spend entry and no envelope.
    reserve_round(member.ledger, federation, member.policy, 1, member.account.plan(member.rounds_left()).spend)
    spent = member.ledger.epsilon_spent()
    restarted = Member(federation, member.policy)
    contribution = restarted.take_part(1)
    assert contribution.kind == "decline" and "spend counts" in contribution.reason
    assert restarted.ledger.epsilon_spent() == spent > 0
    assert restarted.ledger.rounds_taken("tiny") == 1


def test_institution_declines_a_round_that_would_exceed_its_budget(tmp_path):
    _, members, coordinator = start(tmp_path, budgets={"c": 3.0})
    c = members["c"]
    c.plan()
    # Another federation spends most of c's budget on the same dataset after c planned this one.
    c.ledger.append("spend", "other-federation", 1, noise_multiplier=1.5, sample_rate=0.2, steps=10,
                    clipping_norm=1.0, delta=1e-5, accountant="pld")
    assert 2.0 < c.ledger.epsilon_spent() < 3.0
    for name, member in members.items():
        contribution = member.take_part(1)
        if name == "c":
            assert contribution.kind == "decline"
            assert "budget" in contribution.reason
            coordinator.decline(name, 1, contribution.reason, now=1.0)
        else:
            upload(coordinator, name, 1, contribution)
    assert coordinator.advance(now=1.0) == "sum"
    reveal(coordinator, members, 1)
    assert list(coordinator.state.current.declined) == ["c"]
    assert "budget" in coordinator.state.current.declined["c"]
    total = coordinator.sum_for(1)
    for name, member in members.items():
        assert member.apply_sum(1, total, evidence(coordinator, 1, name)).count == 2
    assert c.ledger.epsilon_spent() <= 3.0
    decline = [e for e in c.ledger.entries() if e["kind"] == "decline"]
    assert decline and any("budget" in r for r in decline[0]["reasons"])
    values = adapters(members)
    assert np.array_equal(values["a"], values["c"])  # c still holds the global adapter


def test_dropped_institution_round_closes_with_quorum_at_the_deadline(tmp_path):
    _, members, coordinator = start(tmp_path)
    for name in ("a", "b"):
        upload(coordinator, name, 1, members[name].take_part(1))
    assert coordinator.advance(now=30.0) == "wait"  # c may still come
    assert coordinator.advance(now=61.0) == "sum"
    reveal(coordinator, members, 1)
    assert coordinator.state.current.contributors == ["a", "b"]
    # The dropped member catches up by applying the sum it missed.
    assert members["c"].apply_sum(1, coordinator.sum_for(1), evidence(coordinator, 1, "c")).kind == "applied"


def test_round_fails_cleanly_when_dropouts_leave_too_few(tmp_path):
    _, members, coordinator = start(tmp_path, min_institutions=3, min_cohorts={"a": 3, "b": 3, "c": 3})
    for name in ("a", "b"):
        upload(coordinator, name, 1, members[name].take_part(1))
    assert coordinator.advance(now=61.0) == "fail"
    assert coordinator.state.current.status == "failed"
    before = adapters(members)
    for member in members.values():
        member.note_failed_round(1, coordinator.state.current.failure)
    assert all(np.array_equal(before[n], v) for n, v in adapters(members).items())
    coordinator.open_next_round(now=62.0)
    assert members["a"].take_part(2).kind == "upload"  # the federation goes on from the same adapter


def test_sum_below_min_cohort_makes_the_member_leave_and_record_why(tmp_path):
    _, members, coordinator = start(tmp_path, min_cohorts={"a": 1, "b": 2, "c": 2})
    contribution = members["a"].take_part(1)
    # A coordinator that cheats (or is misconfigured) and publishes a sum of one upload whose member
    # allowed it, with its statement and an honest count: every check passes but b's own min_cohort.
    lonely_sum = sum_envelopes(coordinator.public_context, [contribution.envelope])
    outcome = members["b"].apply_sum(1, lonely_sum, SumEvidence((contribution.statement,), sha256(lonely_sum), 1))
    assert outcome.kind == "aborted" and outcome.count == 1
    abort = [e for e in members["b"].ledger.entries() if e["kind"] == "abort"]
    assert len(abort) == 1 and "below min_cohort 2" in abort[0]["reason"]
    assert members["b"].take_part(2).kind == "decline"  # it has left the federation


def test_a_sum_below_a_contributors_min_cohort_is_never_opened(tmp_path):
    _, members, coordinator = start(tmp_path, min_institutions=3, min_cohorts={"a": 3, "b": 1, "c": 1})
    contribution = members["a"].take_part(1)
    assert contribution.statement.min_cohort == 3  # signed into its statement
    pair = [contribution, members["c"].take_part(1)]
    total, evidence = summed(coordinator.public_context, pair, members)
    outcome = members["b"].apply_sum(1, total, evidence)  # b itself would accept two
    assert outcome.kind == "failed" and "below a's min_cohort 3" in outcome.detail
    assert members["b"].ledger.applied_sums("tiny") == {}


def test_a_member_leaves_once_refused_sums_outlast_what_the_search_for_their_culprit_needs(tmp_path, monkeypatch):
    federation, members, coordinator = start(tmp_path, rounds=6)
    # The sums below are made by hand; what unmasks them is not what this test is about.
    from confide.platform.member import ciphertexts as member_module

    monkeypatch.setattr(member_module, "unmask", lambda *args: Unmasking(
        None, UploadMask(b"\0" * 32, np.zeros(federation.ckks.poly_modulus_degree, dtype=np.int64)), True))
    patience = faults.patience(3)
    assert patience == faults.rounds_to_find(3) + 1 == 4
    contribution = members["a"].take_part(1)
    good = contribution.envelope
    # The same layout under the federation's key id, but made with another secret key: the sum
    # parses and only the checks show it is wrong.
    header = read_header(good)
    forged = update_under_another_key(CkksParameters(**federation.ckks.model_dump()), header.key_id,
                                      header.layout_hash, np.ones(header.n_values))
    bad_sum = sum_envelopes(coordinator.public_context, [good, forged])
    b = members["b"]
    before = adapters(members)["b"]
    claimed = SumEvidence((contribution.statement,), sha256(bad_sum), 2)
    for round_index in range(1, patience + 1):
        outcome = b.apply_sum(round_index, bad_sum, claimed)
        assert outcome.kind == "failed" and outcome.undecryptable
        assert b.record.consecutive_failures == round_index
        assert np.array_equal(adapters(members)["b"], before)  # nothing of a bad round is applied
        assert (b.record.aborted is None) == (round_index < patience)
    assert f"{patience} rounds in a row" in outcome.detail
    assert [e["round"] for e in b.ledger.entries() if e["kind"] == "abort"] == [patience]
    assert b.take_part(patience + 1).kind == "decline"


def test_member_refuses_a_roster_key_that_is_not_its_identity(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path))
    Identity.generate("a").save(tmp_path / "other-a")
    impostor = institutions[0].model_copy(update={"identity_dir": tmp_path / "other-a"})
    with pytest.raises(Exception, match="roster's signing key"):
        Member(federation, impostor)


@pytest.mark.parametrize("change, problem", [
    ({"steps": 7}, "7 steps"),
    ({"delta": 1e-3}, "delta"),
    ({"accountant": "rdp"}, "accountant"),
    ({"noise_multiplier": 0.0}, "noise multiplier 0 is below"),
])
def test_coordinator_refuses_an_upload_whose_declared_spend_breaks_the_federation(tmp_path, change, problem):
    import dataclasses

    from confide.platform.protocol import ProtocolViolation, Refusal

    federation, members, coordinator = start(tmp_path)
    federation = federation.model_copy(update={"privacy": federation.privacy.model_copy(
        update={"min_noise_multiplier": 0.1})})
    coordinator.federation = federation
    contribution = members["a"].take_part(1)
    before = coordinator.state
    broken = dataclasses.replace(contribution.declared, **change)
    with pytest.raises(ProtocolViolation, match=problem) as refused:
        coordinator.upload("a", 1, contribution.envelope, now=1.0, ledger_head=contribution.ledger_head,
                           declared=broken, signed=StatementClaims.of(contribution.statement))
    assert refused.value.refusal is Refusal.INVALID
    with pytest.raises(ProtocolViolation, match="does not declare"):
        coordinator.upload("a", 1, contribution.envelope, now=1.0, ledger_head=contribution.ledger_head,
                           signed=StatementClaims.of(contribution.statement))
    assert coordinator.state == before and coordinator.store.receipts() == []
    receipt = upload(coordinator, "a", 1, contribution)  # the honest declaration is accepted and signed
    assert receipt.spend == contribution.declared
    assert receipt.spend.entry_hash == members["a"].ledger.last_of(Kind.SPEND, federation="tiny", round_index=1)["hash"]


def test_coordinator_enforces_the_federations_per_round_epsilon_cap(tmp_path):
    from confide.platform.protocol import ProtocolViolation
    from confide.privacy.accounting import RoundSpend, round_epsilon

    federation, members, coordinator = start(tmp_path)
    contribution = members["a"].take_part(1)
    d = contribution.declared
    spent = round_epsilon(RoundSpend(d.noise_multiplier, d.sample_rate, d.steps), d.delta, d.accountant)
    coordinator.federation = federation.model_copy(update={"privacy": federation.privacy.model_copy(
        update={"max_round_epsilon": spent / 2})})
    with pytest.raises(ProtocolViolation, match="max_round_epsilon"):
        upload(coordinator, "a", 1, contribution)
    coordinator.federation = federation.model_copy(update={"privacy": federation.privacy.model_copy(
        update={"max_round_epsilon": spent * 1.01})})
    assert upload(coordinator, "a", 1, contribution).spend == d


def test_a_kill_while_installing_the_key_installs_it_again_with_one_ledger_entry(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path))
    members = {p.institution_id: Member(federation, p) for p in institutions}
    bundle = members["a"].make_keys()
    b = members["b"]

    def killed(*_args, **_kwargs) -> None:
        raise KeyboardInterrupt("killed while recording the key")

    b.ledger.append = killed
    with pytest.raises(KeyboardInterrupt):
        b.install_key(bundle.sealed["b"], bundle.certificate)
    restarted = Member(federation, institutions[1])
    assert not restarted.has_key()
    assert restarted.install_key(bundle.sealed["b"], bundle.certificate) == bundle.key_id
    keys = [e for e in restarted.ledger.entries() if e["kind"] == "key"]
    assert len(keys) == 1 and keys[0]["fingerprint"] == bundle.certificate.fingerprint

"""An active coordinator: the real coordinator, whose operator rewrites the replies one member gets.

Each test runs a real federation (three real `Member`s on a tiny model, real DP rounds, real CKKS,
the real `CoordinatorHub` and round driver) in which the transport of one victim hands it what an
operator who edits their own server could make: a key of its own, someone's single upload as "the
sum", a partial sum under a false count, last round's sum again, a sum under another key, a sum
with a plaintext added, another sum than the other members got (which, with one colluding committee
member, it can also get unmasked). The attacker holds what the
operator holds (the hub's state and blobs, the public context, the roster's public keys) and
nothing else. The victim must refuse in one line, apply nothing of it, spend nothing twice and
carry on; the honest members' path is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from confide.aggregation import _parallel, _seal, bitpack
from confide.aggregation.keys import create_key_material, seal_secret
from confide.aggregation.secagg import unpack_bundle
from confide.aggregation.wire import KIND_SUM, build_envelope, read_header, read_seeds
from confide.formats import ContributionStatement, sha256
from confide.platform.driver import RoundDriver
from confide.platform.hub import CoordinatorHub
from confide.platform.member import Member, MemberError
from confide.platform.secure_sum import Reveals
from confide.platform.simulation import InProcessTransport, SimulatedClock, _Idle
from tests.platform.federation_kit import drive, load_files, make_federation_files

ROUNDS = 3


def forge_sum(hub: CoordinatorHub, envelopes: list[bytes], added: float = 0.0) -> bytes:
    """What the operator can build without any key: c0 polynomials added modulo q (repeats allowed),
    their seeds passed on, and optionally `added` put on every value of the first ciphertext (the
    constant coefficient, scaled): a plaintext of its choosing."""
    public = hub.coordinator.public_context
    q, full_bits = _seal.last_modulus(public.context), public.params.coeff_mod_bit_sizes[0]
    headers = [read_header(e) for e in envelopes]
    h = headers[0]
    n = public.params.poly_modulus_degree
    total = np.zeros(h.n_ciphertexts * n, dtype=np.uint64)
    for envelope, header in zip(envelopes, headers):
        part = _parallel.part_of(envelope, header, None, copy=False)
        total = (total + _parallel.block_coefficients(part, range(h.n_ciphertexts), q, full_bits)) % np.uint64(q)
    total[0] = (int(total[0]) + round(added * 2**public.params.scale_bits)) % q
    seeds = [s for e, header in zip(envelopes, headers) for s in read_seeds(e, header)]
    blobs = [bitpack.pack(poly, full_bits) for poly in total.reshape(h.n_ciphertexts, n)]
    return build_envelope(KIND_SUM, public.key_id, h.layout_hash, h.n_values, h.slots, seeds, full_bits, full_bits,
                          blobs)


def uploads(hub: CoordinatorHub, round_index: int) -> dict[str, tuple[bytes, ContributionStatement]]:
    """Every upload of the round and its member's statement, as the coordinator's state directory holds them."""
    r = next(x for x in hub.state.rounds if x.index == round_index)
    return {i: (hub.coordinator.get_blob(f"upload-r{round_index}-{i}.bin"),
                ContributionStatement.model_validate_json(
                    hub.coordinator.get_blob(f"upload-r{round_index}-{i}.statement.json")))
            for i in sorted(r.uploads)}


class Rewriting(InProcessTransport):
    """The victim's view of the coordinator: a round's sum, its statements and the view's announcement
    replaced by `forge(hub, round_index)` -> (sum, statements) or None (the honest reply)."""

    def __init__(self, *args, forge=None, sealed=None, colluder=None, members=None) -> None:
        super().__init__(*args)
        self.forge, self.forged_sealed = forge, sealed
        self.colluder, self.members = colluder, members
        """`colluder(hub, round, statements, members)`: a colluding committee member's reveal for the forged set."""
        self.made: dict[int, tuple | None] = {}
        self.own_reveals: dict = {}

    def _forged(self, round_index: int):
        """The forgery of the round, made once (so the view, the sum and the statements agree)."""
        if self.forge is None:
            return None
        if round_index not in self.made:
            self.made[round_index] = self.forge(self.hub, round_index)
        return self.made[round_index]

    def federation(self, after_revision=None, wait_s=0.0):
        view = super().federation(after_revision, wait_s)
        rounds = []
        for r in view.rounds:
            forged = self._forged(r.index) if r.sum_sha256 is not None else None
            if forged is not None:  # the view announces the forged sum, so no digest check gives it away
                total, statements = forged
                r = r.model_copy(update={"sum_sha256": sha256(total), "contributors": len(statements)})
            rounds.append(r)
        return view.model_copy(update={"rounds": rounds})

    def round_sum(self, round_index: int) -> bytes:
        forged = self._forged(round_index)
        return forged[0] if forged is not None else super().round_sum(round_index)

    def round_contributions(self, round_index: int):
        forged = self._forged(round_index)
        honest = super().round_contributions(round_index)
        if forged is None:
            return honest
        reveals = list(honest.reveals)
        if self.colluder is not None:  # the victim's own reveal of the forged set, and the colluder's
            reveals = [self.own_reveals[round_index], self.colluder(self.hub, round_index, list(forged[1]),
                                                                    self.members)]
        return honest.model_copy(update={"statements": list(forged[1]), "reveals": reveals})

    def unmask_request(self, round_index: int):
        forged = self._forged(round_index)
        if forged is None or self.colluder is None:  # only a split needs the victim to reveal for its set
            return super().unmask_request(round_index)
        return list(forged[1]), shares_for(self.hub, round_index, list(forged[1]), self.institution)

    def reveal(self, round_index: int, reveal):
        self.own_reveals[round_index] = reveal
        return super().reveal(round_index, reveal)

    def sealed_key(self) -> bytes:
        return self.forged_sealed(self) if self.forged_sealed is not None else super().sealed_key()


def shares_for(hub: CoordinatorHub, round_index: int, statements, holder: str) -> dict[str, bytes]:
    """The mask shares sealed to committee member `holder` in the uploads of `statements` (from the blobs)."""
    seat = hub.coordinator.state.committee.index(holder)
    blobs = {s.institution: hub.coordinator.get_blob(f"upload-r{round_index}-{s.institution}.shares")
             for s in statements}
    return {who: unpack_bundle(blob)[seat] for who, blob in blobs.items()}


def run_federation(tmp_path, victim: str, rounds: int = ROUNDS, **attack):
    """Three real members (a holds the key) over the real hub; the victim's transport rewrites replies."""
    federation, institutions = load_files(*make_federation_files(tmp_path, rounds=rounds))
    members = {p.institution_id: Member(federation, p) for p in institutions}
    hub = CoordinatorHub(federation, tmp_path / "coordinator")
    clock, idle, said = SimulatedClock(), _Idle(), {m: [] for m in members}
    drivers = {}
    for name, member in members.items():
        transport = (Rewriting(hub, name, clock, idle, members=members, **attack) if name == victim
                     else InProcessTransport(hub, name, clock, idle))
        drivers[name] = RoundDriver(member, transport, federation, tmp_path / name / "agent.json",
                                    say=said[name].append, wait_s=0.2, clock=clock)
    try:
        reports = drive(drivers, hub, clock, idle)
    finally:
        hub.close()
    return members, reports, said, hub


def adapter(member: Member) -> np.ndarray:
    return member.server_state.adapter


def assert_refused_and_carried_on(members, reports, said, victim: str, refused_rounds: list[int], why: str):
    """The victim refused those rounds' sums in one line each, applied nothing of them, trained each round
    once, and finished. The round after each refused one fails for everyone: the victim's statement names
    another previous sum than the others', and the committee unmasks no set of members handed different
    sums. Every other round is applied by all."""
    lost = sorted({r + 1 for r in refused_rounds if r < ROUNDS} - set(refused_rounds))
    v = members[victim]
    report = reports[victim]
    assert report.finished and report.failed == sorted(refused_rounds + lost), report
    lines = [line for line in said[victim] if "refused the sum" in line]
    assert len(lines) == len(refused_rounds) and all("\n" not in line and why in line for line in lines), lines
    failed = {e["round"]: e["reason"] for e in v.ledger.entries() if e["kind"] == "round_failed"}
    assert sorted(failed) == sorted(refused_rounds + lost) and all(why in failed[r] for r in refused_rounds)
    applied = [r for r in range(1, ROUNDS + 1) if r not in refused_rounds + lost]
    assert sorted(v.ledger.applied_sums("tiny")) == applied
    assert [e["round"] for e in v.ledger.entries() if e["kind"] == "spend"] == list(range(1, ROUNDS + 1))
    for name in members:
        if name != victim:
            assert reports[name].failed == lost, (name, reports[name])
            assert reports[name].applied == [r for r in range(1, ROUNDS + 1) if r not in lost], (name, reports[name])


def test_a_key_the_coordinator_sealed_itself_is_refused_before_anything_is_spent(tmp_path):
    def own_key(transport) -> bytes:  # the operator's own CKKS key, sealed to b with its public roster key
        params = transport.hub.coordinator.public_context.params
        material = create_key_material(params)
        b = transport.hub.policy.member("b")
        from confide.identity import unb64
        return seal_secret(material.to_bytes(), unb64(b.sealing_key, "b"), "b", material.key_id)

    federation, institutions = load_files(*make_federation_files(tmp_path, rounds=1))
    members = {p.institution_id: Member(federation, p) for p in institutions}
    hub = CoordinatorHub(federation, tmp_path / "coordinator")
    clock, idle = SimulatedClock(), _Idle()
    holder = RoundDriver(members["a"], InProcessTransport(hub, "a", clock, idle), federation,
                         tmp_path / "a.json", say=lambda _l: None, clock=clock)
    holder.step(hub.view_for("a"))  # a publishes the certified key set-up
    victim = RoundDriver(members["b"], Rewriting(hub, "b", clock, idle, sealed=own_key), federation,
                         tmp_path / "b.json", say=lambda _l: None, clock=clock)
    with pytest.raises(MemberError) as refused:
        victim.step(hub.view_for("b"))
    assert "\n" not in str(refused.value) and "our sealed key is not the one the key holder certified" in str(
        refused.value)
    assert not members["b"].has_key() and members["b"].ledger.spend_history() == []
    # A certificate the operator makes for its own key does not verify under the key holder's roster key.
    certificate = hub.coordinator.key_certificate()
    forged = certificate.model_copy(update={"sealed_sha256": {**certificate.sealed_sha256,
                                                              "b": sha256(own_key(victim.client))}})
    with pytest.raises(MemberError, match="not signed by the key holder"):
        members["b"].install_key(own_key(victim.client), forged)
    hub.close()


def b_thrice(hub, round_index):
    """Round 1: b's upload three times over, with the three real statements."""
    if round_index != 1:
        return None
    ups = uploads(hub, 1)
    return forge_sum(hub, [ups["b"][0]] * 3), [s for _, s in ups.values()]


def partial(hub, round_index):
    """Round 1: the sum of b and c only, under the three statements (the count of three)."""
    if round_index != 1:
        return None
    ups = uploads(hub, 1)
    return forge_sum(hub, [ups["b"][0], ups["c"][0]]), [s for _, s in ups.values()]


def replay(hub, round_index):
    """Round 2: round 1's sum and statements again."""
    if round_index != 2:
        return None
    return hub.coordinator.sum_for(1), hub.coordinator.contributions(1)


def steer(hub, round_index):
    """Round 1: the honest sum plus 0.5 on every value of its first ciphertext."""
    if round_index != 1:
        return None
    ups = uploads(hub, 1)
    return forge_sum(hub, [e for e, _ in ups.values()], added=0.5), [s for _, s in ups.values()]


def other_federation(hub, round_index):
    """Round 1: a well-formed sum of three uploads under another federation's key."""
    if round_index != 1:
        return None
    from confide.aggregation.envelope import encrypt_update, sum_envelopes

    ups = uploads(hub, 1)
    stranger = create_key_material(hub.coordinator.public_context.params)
    header = read_header(ups["a"][0])
    total = sum_envelopes(stranger.public_context(), [
        encrypt_update(stranger, np.zeros(header.n_values), 1.0, header.layout_hash) for _ in range(3)])
    return total, [s for _, s in ups.values()]


@pytest.mark.parametrize("forge, victim, refused_round, why", [
    (b_thrice, "a", 1, "seed"),
    (partial, "c", 1, "seed"),
    (replay, "b", 2, "replay"),
    (steer, "b", 1, "integrity tags"),
    (other_federation, "c", 1, "key"),
], ids=["one-upload-as-the-sum", "partial-sum-false-count", "replay", "plaintext-added", "another-key"])
def test_a_forged_sum_is_refused_in_one_line_and_the_member_carries_on(tmp_path, forge, victim, refused_round, why):
    members, reports, said, _ = run_federation(tmp_path, victim, forge=forge)
    assert_refused_and_carried_on(members, reports, said, victim, [refused_round], why)


def subset(hub, round_index):
    """Round 1: the honest sum of {a, c}, with a's and c's statements: every check of it alone passes."""
    if round_index != 1:
        return None
    ups = uploads(hub, 1)
    return forge_sum(hub, [ups["a"][0], ups["c"][0]]), [ups["a"][1], ups["c"][1]]


def test_another_contributor_set_than_the_others_got_cannot_be_unmasked(tmp_path):
    """The committee reveals one set per round: a sum of another set finds no reveals that open it."""
    members, reports, said, _ = run_federation(tmp_path, "c", forge=subset)
    assert_refused_and_carried_on(members, reports, said, "c", [1], "cannot unmask it")
    assert members["c"].record.aborted is None


def colluding_a(hub, round_index, statements, members):
    """Committee member a, working with the coordinator, reveals a second set in round 1 (its honest
    driver already revealed the first): what the threshold alone cannot stop when one member colludes."""
    a = members["a"]
    return Reveals(a.store.dir / "colluding-reveals", a.federation, a.roster, a.identity).reveal(
        round_index, a.key_id(), statements, shares_for(hub, round_index, statements, "a"))


def test_a_member_handed_another_sum_than_the_others_finds_the_split_and_leaves(tmp_path):
    # With a colluding committee member, the split set is unmasked; the applied statements still show it.
    members, reports, said, hub = run_federation(tmp_path, "c", forge=subset, colluder=colluding_a)
    c = members["c"]
    assert reports["c"].applied[:1] == [1]  # it could not know in round 1...
    assert c.record.aborted and "split the federation" in c.record.aborted  # ...the others' statements told it
    aborts = [e for e in c.ledger.entries() if e["kind"] == "abort"]
    assert len(aborts) == 1 and "split" in aborts[0]["reason"]
    assert any("split the federation" in line and "\n" not in line for line in said["c"])
    # The coordinator's own code refuses c's statement of a sum it did not announce, so a and b, who
    # got the honest sum, are never shown it and go on.
    assert any("statement of the applied sum was refused" in line for line in said["c"])
    assert members["a"].record.aborted is None and members["b"].record.aborted is None
    digests = {name: m.ledger.applied_sums("tiny")[1] for name, m in members.items()}
    assert digests["a"] == digests["b"] != digests["c"]
    # An auditor handed the three ledgers fails the federation, naming the round.
    from confide.privacy.audit import audit_ledgers

    result = audit_ledgers([m.ledger.path for m in members.values()], federations=[tmp_path / "fed.yaml"])
    assert result.exit_code == 1
    assert any(c.name == "applied_sums" and c.passed is False and "round 1 of tiny" in c.detail
               for c in result.checks), [c for c in result.checks if c.passed is False]

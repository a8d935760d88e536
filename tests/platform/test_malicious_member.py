"""One member, or a few liars, against a federation of real members: none can sink, steer or frame it.

Every test runs real `Member`s (tiny model, real DP rounds, real CKKS, real ledgers) over the real
`CoordinatorHub` with the round driver, in process. The culprit is a real member changed in the one
place its attack needs: it encrypts under another secret key, scales its update, or claims a larger
weight, or claims it applied its own broken sums; the liars report good sums as broken. The honest
members' code is the product's. Reports and applied statements are weighed by majority
(`faults.is_broken`): two liars need more than the honest members who applied a sum, so the liars'
test has six members; with three, two liars are the majority, and nothing distinguishes them.
"""

from __future__ import annotations

import string
import threading

import pytest

from confide.aggregation.keys import SecretKeyMaterial, create_key_material
from confide.formats import AppliedStatement
from confide.platform import faults
from confide.platform.driver import RoundDriver
from confide.platform.hub import CoordinatorHub
from confide.platform.member import Member
from confide.platform.simulation import InProcessTransport, SimulatedClock, _Idle
from confide.policies.federation import SecureAggregation
from tests.platform.federation_kit import load_files, make_federation_files


class UploadsUnderAnotherKey(Member):
    """Uploads well-formed envelopes labelled with the federation's key id but made with a secret key of its
    own: nothing short of decrypting the sum tells them from good ones (its tags are computed honestly)."""

    @property
    def secret(self):
        real = Member.secret.fget(self)
        if getattr(self, "_other", None) is None:
            other = create_key_material(real.params)
            self._other = SecretKeyMaterial(real.key_id, real.params, other.context, other.secret_key)
        return self._other


class ScalesItsUpdate(Member):
    """Uploads 100 times its honest update: an attempt to steer the average."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        honest = self.learner.train
        self.learner.train = lambda spend, on_step: 100 * honest(spend, on_step)


class ClaimsMoreWeight(Member):
    """Puts 1000 in its weight slot (and multiplies its update by it), where the federation file says 1."""

    @property
    def weight(self) -> float:
        return 1000.0


class Lies(InProcessTransport):
    """A liar's line to the coordinator: every sum that holds `victim`'s upload is reported as broken, and
    no statement of an applied sum is ever sent."""

    victim = "e"

    def report_applied(self, round_index: int, sum_sha256: str, signature: str) -> None:
        r = next(x for x in self.hub.state.rounds if x.index == round_index)
        if self.victim in r.contributors:
            self.report_undecryptable(round_index, sum_sha256, "the sum does not decrypt (a lie)")
        else:
            super().report_applied(round_index, sum_sha256, signature)


class ClaimsApplied(InProcessTransport):
    """A culprit's line to the coordinator: it signs that it applied every sum it refused (its own broken
    ones), to keep the search from starting."""

    def report_undecryptable(self, round_index: int, sum_sha256: str, reason: str) -> None:
        statement = self.identity.sign_document(AppliedStatement(
            federation=self.hub.state.federation_id, round=round_index, institution=self.institution,
            sum_sha256=sum_sha256))
        self.report_applied(round_index, sum_sha256, statement.signature)


def run(tmp_path, ids, rounds: int, culprit: str | None = None, member_class=Member, liars=(), claims=False):
    """A federation of real members over the real hub; returns members, reports, errors and the hub's state."""
    federation, institutions = load_files(*make_federation_files(tmp_path, ids=ids, rounds=rounds))
    members = {p.institution_id: (member_class if p.institution_id == culprit else Member)(federation, p)
               for p in institutions}
    hub = CoordinatorHub(federation, tmp_path / "coordinator")
    clock, idle = SimulatedClock(), _Idle()
    drivers = {}
    for name, member in members.items():
        line = Lies if name in liars else ClaimsApplied if claims and name == culprit else InProcessTransport
        transport = line(hub, name, clock, idle)
        transport.identity = member.identity
        drivers[name] = RoundDriver(member, transport, federation, tmp_path / name / "agent.json",
                                    say=lambda _l: None, wait_s=0.2, clock=clock)
    reports, errors = {}, {}

    def drive(name: str) -> None:
        try:
            reports[name] = drivers[name].run()
        except Exception as exc:  # the culprit's agent stops once it is excluded (403)
            errors[name] = exc

    threads = [threading.Thread(target=drive, args=(name,), daemon=True) for name in drivers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    state = hub.state
    hub.close()
    assert not any(thread.is_alive() for thread in threads)
    return members, reports, errors, state


def assert_found_and_finished(members, reports, errors, state, culprit: str, broken: int, reason: str):
    """The culprit was excluded after `broken` refused rounds; every honest member stayed and applied the rest."""
    assert list(state.excluded) == [culprit] and state.status == "finished"
    assert set(errors) <= {culprit}
    honest = [name for name in members if name != culprit]
    for name in honest:
        report = reports[name]
        assert report.finished and report.failed == list(range(1, broken + 1)), (name, report)
        assert report.applied == list(range(broken + 1, len(state.rounds) + 1)), (name, report)
        assert members[name].record.aborted is None
        refused = [e["reason"] for e in members[name].ledger.entries() if e["kind"] == "round_failed"]
        assert len(refused) == broken and all(reason in r for r in refused), refused
    assert all(culprit not in r.contributors for r in state.rounds[broken:])


@pytest.mark.integration
@pytest.mark.parametrize("n", range(3, 9))
def test_a_member_whose_uploads_do_not_decrypt_is_found_before_honest_members_give_up(tmp_path, n):
    ids = tuple(string.ascii_lowercase[:n])
    culprit = ids[-1]  # last in sort order: the search keeps it in every sum longest
    cap = faults.leave_out_cap(n, 2, SecureAggregation().tolerated(n))  # min_institutions 2, default colluders
    broken = faults.rounds_to_find(n, cap)
    assert broken < faults.patience(n, cap)
    members, reports, errors, state = run(tmp_path, ids, broken + 2, culprit, UploadsUnderAnotherKey)
    assert_found_and_finished(members, reports, errors, state, culprit, broken, "refused the sum")


@pytest.mark.integration
def test_a_member_that_scales_its_update_is_refused_and_found(tmp_path):
    members, reports, errors, state = run(tmp_path, ("a", "b", "c"), 5, "c", ScalesItsUpdate)
    assert_found_and_finished(members, reports, errors, state, "c", faults.rounds_to_find(3), "out of bounds")


@pytest.mark.integration
def test_a_member_that_claims_more_weight_is_refused_and_found(tmp_path):
    members, reports, errors, state = run(tmp_path, ("a", "b", "c"), 5, "c", ClaimsMoreWeight)
    assert_found_and_finished(members, reports, errors, state, "c", faults.rounds_to_find(3), "weight")


@pytest.mark.integration
def test_a_culprit_that_claims_it_applied_its_broken_sums_is_found_all_the_same(tmp_path):
    members, reports, errors, state = run(tmp_path, ("a", "b", "c"), 5, "c", UploadsUnderAnotherKey, claims=True)
    assert all(r.applied == {"c": r.applied["c"]} for r in state.rounds[:3])  # its claims were taken...
    assert_found_and_finished(members, reports, errors, state, "c", faults.rounds_to_find(3), "refused the sum")


@pytest.mark.integration
def test_members_lying_that_an_honest_members_sums_break_cannot_get_it_excluded(tmp_path):
    ids = ("a", "b", "c", "d", "e", "f")
    members, reports, errors, state = run(tmp_path, ids, 4, liars=("a", "b"))
    assert not errors and state.excluded == {} and state.suspects is None
    assert all(sorted(r.undecryptable) == ["a", "b"] and r.contributors == list(ids) for r in state.rounds)
    for name in ids:
        assert reports[name].applied == [1, 2, 3, 4] and members[name].record.aborted is None

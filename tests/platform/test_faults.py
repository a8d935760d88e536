"""Finding the member whose uploads break sums, driven as pure functions over the protocol state."""

import pytest

from confide.platform import faults
from confide.platform import protocol as p

MEMBERS = ["a", "b", "c", "d", "e", "f"]


def running(members, min_institutions=2, rounds=20):
    state = p.new_federation("fed", members, members[0], min_institutions, rounds, round_deadline_s=60,
                             committee=list(members), unmask_threshold=len(members))
    state = p.publish_keys(state, members[0], p.KeySetup("k1", "ctx", "L", list(members)))
    return p.open_next_round(state, now=0.0)


def play_round(state, faulty: set[str], reporters=None):
    """Everyone not excluded uploads; the coordinator reviews, leaves out, sums; members report if broken."""
    index = state.current.index
    for who in state.members:
        if who not in state.excluded:
            state = p.accept_upload(state, who, index, "k1", "L", f"h-{who}-{index}", 100, now=1.0)
    state = faults.review(state)
    out = faults.leave_out(state, sorted(state.current.uploads))
    summed = [u for u in sorted(state.current.uploads) if u not in out]
    state = p.record_sum(state, index, f"sum-{index}", summed, 1.0, out)
    for who in state.committee:
        state = p.record_reveal(state, who, index, f"reveal-{who}-{index}")
    if set(summed) & faulty:
        for who in reporters if reporters is not None else state.members:
            state = p.record_undecryptable(state, who, index, f"sum-{index}", "count slot is not whole")
    return p.open_next_round(state, now=2.0), set(summed) & faulty != set()


@pytest.mark.parametrize("culprit", MEMBERS)
def test_the_member_breaking_sums_is_found_in_a_few_rounds_and_excluded(culprit):
    state, broken = running(MEMBERS), []
    for _ in range(12):
        state, was_broken = play_round(state, {culprit})
        broken.append(was_broken)
    assert state.excluded.keys() == {culprit} and "did not decrypt" in state.excluded[culprit]
    assert sum(broken) <= 4  # 6 members: about log2(6) broken rounds before it is found
    assert broken[-6:] == [False] * 6  # and none after
    assert state.suspects is None


def test_with_three_members_the_last_in_roster_order_is_found_after_three_broken_rounds():
    state, broken = running(["a", "b", "c"]), []
    for _ in range(6):
        state, was_broken = play_round(state, {"c"})
        broken.append(was_broken)
    assert broken == [True, True, True, False, False, False]
    assert list(state.excluded) == ["c"]
    assert state.rounds[3].left_out == ["c"]  # accepted before it was excluded, kept out of the sum
    with pytest.raises(p.ProtocolViolation, match="excluded") as refused:
        p.accept_upload(state, "c", state.current.index, "k1", "L", "h-c-late", 100, now=1.0)
    assert refused.value.refusal is p.Refusal.FORBIDDEN


def test_one_member_reporting_alone_cannot_get_anyone_excluded():
    state = running(["a", "b", "c"])
    for _ in range(6):
        state, _ = play_round(state, {"a", "b", "c"}, reporters=["b"])  # every sum "broken", b lies alone
    assert state.excluded == {} and state.suspects is None


def test_no_exclusion_that_would_leave_fewer_than_min_institutions():
    state = running(["a", "b"], min_institutions=2)
    for _ in range(4):
        state, broken = play_round(state, {"b"})
        assert broken
    assert state.excluded == {} and all(r.left_out == [] for r in state.rounds)


def test_reports_count_once_per_member_and_only_for_the_published_sum():
    state, _ = play_round(running(["a", "b", "c"]), set())
    again = p.record_undecryptable(state, "a", 1, "sum-1", "x")
    assert p.record_undecryptable(again, "a", 1, "sum-1", "x") is again
    with pytest.raises(p.ProtocolViolation, match="not the one reported"):
        p.record_undecryptable(state, "a", 1, "another-sum", "x")
    with pytest.raises(p.ProtocolViolation, match="no sum"):
        p.record_undecryptable(state, "a", 2, "sum-2", "x")
    with pytest.raises(p.ProtocolViolation, match="not a member"):
        p.record_undecryptable(state, "zed", 1, "sum-1", "x")


def test_an_excluded_member_counts_as_answered_so_rounds_do_not_wait_for_it():
    state = running(["a", "b", "c"])
    state.excluded["c"] = "test"
    for who in ("a", "b"):
        state = p.accept_upload(state, who, 1, "k1", "L", f"h-{who}", 100, now=1.0)
    assert p.sum_decision(state, now=2.0) == "sum"


def test_states_written_before_fault_finding_still_load():
    state, _ = play_round(running(["a", "b", "c"]), set())
    old = state.to_dict()
    for key in ("excluded", "suspects", "reviewed_round"):
        del old[key]
    for r in old["rounds"]:
        del r["left_out"], r["undecryptable"]
    loaded = p.FederationState.from_dict(old)
    assert loaded.excluded == {} and loaded.rounds[0].undecryptable == {} and loaded.reviewed_round == 0

"""The coordinator's round protocol, driven directly as pure functions."""

import pytest

from confide.platform import protocol as p

KEY = p.KeySetup(key_id="k1", public_context_sha256="ctx", layout_hash="L", sealed_for=["a", "b", "c"])


def running(min_institutions=2, rounds=2):
    state = p.new_federation("fed", ["a", "b", "c"], "a", min_institutions, rounds, round_deadline_s=60,
                             committee=["a", "b", "c"], unmask_threshold=2)
    state = p.publish_keys(state, "a", KEY)
    return p.open_next_round(state, now=0.0)


def upload(state, who, sha=None, now=1.0, key="k1", layout="L"):
    return p.accept_upload(state, who, state.current.index, key, layout, sha or f"h-{who}", 100, now)


def test_only_the_key_holder_publishes_keys_and_every_member_gets_a_sealed_key():
    state = p.new_federation("fed", ["a", "b", "c"], "a", 2, 2, 60, ["a", "b", "c"], 2)
    with pytest.raises(p.ProtocolViolation, match="only the key holder"):
        p.publish_keys(state, "b", KEY)
    with pytest.raises(p.ProtocolViolation, match="no sealed key for c"):
        p.publish_keys(state, "a", p.KeySetup("k1", "ctx", "L", ["a", "b"]))
    state = p.publish_keys(state, "a", KEY)
    assert state.status == "running"
    assert p.publish_keys(state, "a", KEY) is state  # idempotent retry


def test_rounds_cannot_open_before_keys():
    state = p.new_federation("fed", ["a", "b"], "a", 2, 2, 60, ["a", "b"], 2)
    with pytest.raises(p.ProtocolViolation, match="keys are not set up"):
        p.open_next_round(state, 0.0)


def test_full_round_sums_when_everyone_answered():
    state = running()
    assert state.current.status == "open"
    state = upload(state, "a")
    assert state.current.status == "collecting"
    state = upload(state, "b")
    assert p.sum_decision(state, now=2.0) == "wait"  # c has not answered, deadline not passed
    state = p.record_decline(state, "c", 1, "budget: would exceed", now=2.0)
    assert p.sum_decision(state, now=2.0) == "sum"
    state = p.record_sum(state, 1, "sum-hash", ["a", "b"], now=2.0)
    assert (state.current.status, state.current.contributors) == ("unmasking", ["a", "b"])
    with pytest.raises(p.ProtocolViolation, match="unmasking"):
        p.open_next_round(state, now=3.0)
    state = p.record_reveal(p.record_reveal(p.record_reveal(state, "c", 1, "rc"), "a", 1, "ra"), "b", 1, "rb")
    assert state.current.status == "summed"
    state = p.open_next_round(state, now=3.0)
    assert [r.status for r in state.rounds] == ["closed", "open"]


def test_dropped_institution_round_closes_at_deadline_with_quorum():
    state = upload(upload(running(), "a"), "b")
    assert p.sum_decision(state, now=30.0) == "wait"
    assert p.sum_decision(state, now=61.0) == "sum"


def test_round_fails_cleanly_below_min_institutions():
    state = upload(running(min_institutions=2), "a")
    assert p.sum_decision(state, now=61.0) == "fail"
    with pytest.raises(p.ProtocolViolation, match="min_institutions"):
        p.record_sum(state, 1, "x", ["a"], now=61.0)
    state = p.fail_round(state, 1, "deadline passed with 1 of 2 uploads")
    assert state.current.status == "failed"
    state = p.open_next_round(state, now=62.0)
    assert [r.status for r in state.rounds] == ["failed", "open"]


def test_everyone_answering_with_too_few_uploads_fails_without_waiting():
    state = upload(running(min_institutions=2), "a")
    state = p.record_decline(state, "b", 1, "no", 1.0)
    state = p.record_decline(state, "c", 1, "no", 1.0)
    assert p.sum_decision(state, now=1.0) == "fail"


def test_retried_upload_is_idempotent_but_a_second_update_is_refused():
    state = upload(running(), "a", sha="one")
    assert upload(state, "a", sha="one") is state
    with pytest.raises(p.ProtocolViolation, match="different update"):
        upload(state, "a", sha="two")


@pytest.mark.parametrize(
    ("kwargs", "message", "refusal"),
    [
        ({"who": "mallory"}, "not a member", p.Refusal.FORBIDDEN),
        ({"key": "k2"}, "under key k2", p.Refusal.INVALID),
        ({"layout": "other"}, "layout differs", p.Refusal.INVALID),
        ({"now": 61.0}, "deadline", p.Refusal.CONFLICT),
    ],
)
def test_uploads_that_break_the_protocol_are_refused_and_change_nothing(kwargs, message, refusal):
    state = running()
    before = state.to_dict()
    who = kwargs.pop("who", "a")
    with pytest.raises(p.ProtocolViolation, match=message) as info:
        upload(state, who, **kwargs)
    assert info.value.refusal is refusal
    assert state.to_dict() == before


def test_upload_to_a_summed_round_is_refused():
    state = p.record_sum(upload(upload(running(), "a"), "b"), 1, "s", ["a", "b"], now=2.0)
    with pytest.raises(p.ProtocolViolation, match="unmasking"):
        upload(state, "c")


def test_federation_finishes_after_the_last_round():
    state = running(rounds=1)
    state = unmasked(p.record_sum(upload(upload(state, "a"), "b"), 1, "s", ["a", "b"], now=2.0))
    state = p.open_next_round(state, 5.0)
    assert state.status == "finished" and state.rounds[-1].status == "closed"
    with pytest.raises(p.ProtocolViolation, match="finished"):
        p.open_next_round(state, 6.0)


def unmasked(state):
    for who in state.committee:
        state = p.record_reveal(state, who, state.current.index, f"reveal-{who}")
    return state


def test_reveals_come_once_from_committee_members_and_late_unmasking_fails_the_round():
    state = p.record_sum(upload(upload(running(), "a"), "b"), 1, "s", ["a", "b"], now=2.0)
    with pytest.raises(p.ProtocolViolation, match="not on the committee"):
        p.record_reveal(p.new_federation("fed", ["a", "b", "x"], "a", 2, 2, 60, ["a", "b"], 2), "x", 1, "r")
    state = p.record_reveal(state, "a", 1, "ra")
    assert p.record_reveal(state, "a", 1, "ra") is state  # a retry
    with pytest.raises(p.ProtocolViolation, match="already revealed"):
        p.record_reveal(state, "a", 1, "another")
    assert state.current.status == "unmasking"
    assert p.unmask_decision(state, now=61.0) == "wait"
    assert p.unmask_decision(state, now=62.5) == "fail"  # 1 of the 2 needed
    state = p.fail_round(state, 1, "1 of 3 revealed")
    assert state.current.status == "failed"


def test_the_round_waits_for_reveals_that_can_outvote_a_wrong_one_then_sums_with_the_threshold():
    state = p.record_sum(upload(upload(running(), "a"), "b"), 1, "s", ["a", "b"], now=2.0)
    assert p.unmask_quorum(len(state.committee), state.unmask_threshold) == 3  # 2 of 3: all three at once
    state = p.record_reveal(p.record_reveal(state, "a", 1, "ra"), "b", 1, "rb")
    assert state.current.status == "unmasking" and p.unmask_decision(state, now=30.0) == "wait"
    assert p.unmask_decision(state, now=62.5) == "sum"  # c dropped out: the threshold is there
    assert p.close_unmasking(state).current.status == "summed"
    assert p.record_reveal(state, "c", 1, "rc").current.status == "summed"


def test_state_round_trips_through_plain_data():
    state = p.record_decline(upload(running(), "a"), "c", 1, "cap", 1.0)
    assert p.FederationState.from_dict(state.to_dict()) == state

"""The member's round engine, alone: every rule of a round's record without a model, a ledger or a file.

`confide.platform.member.member.Member` performs what these functions decide; the tests of the member
itself (test_driver's kill points, test_federation) show that it does.
"""

from __future__ import annotations

import pytest

from confide.formats import MEMBER_ROUND_SETTLED, DeclaredSpend, Receipt
from confide.platform.member.engine import (
    INTERRUPTED,
    MEMBER_RECORD_VERSION,
    TRANSITIONS,
    MemberRecord,
    MemberRecordError,
    RoundFacts,
    advance,
    can_miss,
    fail,
    leave_federation,
    own_envelope,
    receipt_problem,
    resume,
    settle,
    too_small,
)

NOTHING = RoundFacts(envelope_written=False, spend_recorded=False)
SPENT = RoundFacts(envelope_written=False, spend_recorded=True)
WRITTEN = RoundFacts(envelope_written=True, spend_recorded=True)


def record_at(*states: str, index: int = 1) -> MemberRecord:
    record = MemberRecord("ds")
    for state in states:
        record = advance(record, index, state)
    return record


@pytest.mark.parametrize("before", list(TRANSITIONS))
def test_only_the_declared_transitions_are_allowed(before):
    path = {None: (), "declining": ("declining",), "reserved": ("reserved",), "trained": ("reserved", "trained"),
            "declined": ("declining", "declined"), "receipted": ("reserved", "trained", "receipted"),
            "missed": ("missed",), "applied": ("applied",), "failed": ("failed",), "aborted": ("aborted",)}
    record = record_at(*path[before])
    assert record.state_of(1) == before
    for after in TRANSITIONS:
        if after is None:
            continue
        if after in TRANSITIONS[before]:
            assert advance(record, 1, after).state_of(1) == after
        else:
            with pytest.raises(MemberRecordError, match=f"cannot go from {before or 'nothing'} to {after}"):
                advance(record, 1, after)


def test_the_record_reads_back_what_it_wrote_and_refuses_another_format():
    record = settle(advance(record_at("reserved"), 1, "trained", envelope_sha256="ab" * 32,
                            ledger_head="cd" * 32), 1, "applied", count=3)
    record = leave_federation(advance(record, 2, "declining", reason="budget"), "split")
    data = record.to_dict()
    assert data["version"] == MEMBER_RECORD_VERSION
    assert MemberRecord.from_dict(data, "member.json") == record
    for version in (None, MEMBER_RECORD_VERSION + 1, 0):
        with pytest.raises(MemberRecordError, match="member.json has format"):
            MemberRecord.from_dict({**data, "version": version}, "member.json")
    for field in ("dataset_id", "last_applied_round", "aborted", "consecutive_failures"):
        with pytest.raises(MemberRecordError, match="damaged"):  # a field missing is not a default
            MemberRecord.from_dict({k: v for k, v in data.items() if k != field}, "member.json")
    with pytest.raises(MemberRecordError, match="damaged"):
        MemberRecord.from_dict({**data, "rounds": {"1": {"round": 2, "state": "applied"}}}, "member.json")


def test_a_fresh_round_starts_and_a_settled_one_is_refused():
    assert resume(MemberRecord("ds"), 1, NOTHING).action == "start"
    for state in MEMBER_ROUND_SETTLED:
        step = resume(record_at(state), 1, NOTHING)
        assert step.action == "refuse" and f"already {state}" in step.reason


def test_a_written_envelope_is_uploaded_never_retrained_whatever_the_record_missed():
    for record in (MemberRecord("ds"), record_at("reserved")):  # killed before or after recording "reserved"
        step = resume(record, 1, WRITTEN)
        assert step.action == "upload" and step.adopt and step.record.state_of(1) == "reserved"
    for states in (("reserved", "trained"), ("reserved", "trained", "receipted")):
        record = record_at(*states)
        step = resume(record, 1, WRITTEN)
        assert step.action == "upload" and not step.adopt and step.record is record  # nothing to commit


def test_a_spend_without_an_envelope_is_declined_with_the_spend_counted():
    for record in (MemberRecord("ds"), record_at("reserved")):  # the spend entry is in the ledger either way
        step = resume(record, 1, SPENT)
        assert (step.action, step.reason, step.record_decline) == ("decline", INTERRUPTED, True)
        assert step.record.state_of(1) == "reserved"


def test_a_decline_is_answered_again_with_its_reason():
    record = advance(MemberRecord("ds"), 1, "declining", reason="over budget")
    for current in (record, advance(record, 1, "declined")):
        step = resume(current, 1, NOTHING)
        assert (step.action, step.reason, step.record_decline) == ("decline", "over budget", False)


def _receipt(**changes) -> Receipt:
    spend = DeclaredSpend(noise_multiplier=1.0, sample_rate=0.1, steps=5, clipping_norm=1.0, delta=1e-5,
                          accountant="pld", entry_hash="ee" * 32)
    fields = dict(federation="f", round=1, institution="a", envelope_sha256="ab" * 32, signature="",
                  ledger_head="cd" * 32, spend=spend)
    return Receipt(**{**fields, **changes})


def test_a_receipt_must_describe_our_upload_head_and_spend():
    ours = (("f", 1, "a"), "ab" * 32, "cd" * 32, [])
    assert receipt_problem(_receipt(), *ours) is None
    assert receipt_problem(_receipt(), ("f", 1, "a"), None, None, []) is None  # nothing to compare: no envelope
    for changes in ({"federation": "g"}, {"round": 2}, {"institution": "b"}, {"envelope_sha256": "00" * 32}):
        assert "does not describe our upload" in receipt_problem(_receipt(**changes), *ours)
    assert "ledger head eeeeeeeeeeee..." in receipt_problem(_receipt(ledger_head="ee" * 32), *ours)
    assert "noise 2" in receipt_problem(_receipt(), *ours[:3], ["noise 2"])
    assert "our ledger has no spend" in receipt_problem(_receipt(), *ours[:3], None)


def test_refused_sums_in_a_row_make_the_member_leave_at_its_patience_and_an_applied_sum_resets_them():
    record = MemberRecord("ds")
    for index in (1, 2):
        record = fail(record, index, "tags do not match", undecryptable=True, patience=3)
        assert record.aborted is None and record.consecutive_failures == index
    record = fail(record, 3, "tags do not match", undecryptable=True, patience=3)
    assert record.aborted.startswith("3 rounds in a row") and "tags do not match" in record.aborted
    assert record.round(3).reason == record.aborted and record.last_applied_round == 3
    fresh = settle(fail(MemberRecord("ds"), 1, "x", True, 3), 2, "applied", count=3)
    assert fresh.consecutive_failures == 0 and fresh.last_applied_round == 2
    # A round that failed at the coordinator (nothing decrypted) neither extends nor resets the run.
    assert fail(fail(MemberRecord("ds"), 1, "x", True, 3), 2, "deadline", False, 3).consecutive_failures == 1


def test_only_the_next_round_moves_the_adapter_forward():
    assert settle(MemberRecord("ds"), 2, "applied", count=2).last_applied_round == 0
    assert settle(MemberRecord("ds"), 1, "aborted").last_applied_round == 0
    assert settle(MemberRecord("ds"), 1, "failed").last_applied_round == 1


def test_only_an_unsettled_answer_can_be_missed_and_only_our_upload_is_ours():
    assert can_miss(MemberRecord("ds"), 1) and can_miss(record_at("reserved", "trained"), 1)
    assert not can_miss(record_at("reserved", "trained", "receipted"), 1)
    assert not any(can_miss(record_at(state), 1) for state in MEMBER_ROUND_SETTLED)
    trained = advance(record_at("reserved"), 1, "trained", envelope_sha256="ab" * 32)
    assert own_envelope(trained, 1) == "ab" * 32 and own_envelope(advance(trained, 1, "missed"), 1) is None


def test_a_sum_below_min_cohort_is_not_opened():
    assert too_small(4, 3, 3) is None
    assert "2 contribution(s), below min_cohort 3" in too_small(4, 2, 3)

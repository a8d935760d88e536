"""The participation decision, rule by rule: each test breaks exactly one rule."""

import pytest

from confide.policies import LedgerState, RoundFacts, decide_participation, load_federation, load_institution

ALL_KNOWN = RoundFacts(round_index=1, epsilon_after_round=0.5, round_epsilon=0.5, noise_multiplier=1.0)


@pytest.fixture
def policies(write, federation_text, institution_text):
    return load_federation(write(federation_text, "f.yaml")), load_institution(write(institution_text, "i.yaml"))


def failed(decision):
    return {r.rule for r in decision.results if r.passed is False}


def test_compatible_policies_allow_with_every_rule_passing(policies):
    decision = decide_participation(*policies, LedgerState(), ALL_KNOWN)
    assert decision.allowed
    assert all(r.passed is True for r in decision.results)
    assert decision.reasons == []


def test_unknown_round_facts_are_not_evaluated_rather_than_passed(policies):
    decision = decide_participation(*policies)
    assert decision.allowed
    assert {r.rule for r in decision.results if r.passed is None} == {"round", "budget", "round_cap", "noise"}


def test_institution_not_on_roster_is_denied(policies):
    fed, inst = policies
    decision = decide_participation(fed, inst.model_copy(update={"institution_id": "zz"}), LedgerState(), ALL_KNOWN)
    assert failed(decision) == {"roster"}


def test_federation_not_accepted_is_denied(policies):
    fed, inst = policies
    inst = inst.model_copy(update={"accepts": inst.accepts.model_copy(update={"federations": ["other"]})})
    assert failed(decide_participation(fed, inst, LedgerState(), ALL_KNOWN)) == {"federation"}


def test_base_model_not_accepted_is_denied(policies):
    fed, inst = policies
    inst = inst.model_copy(update={"accepts": inst.accepts.model_copy(update={"base_models": ["bundled:minilm-l6"]})})
    assert failed(decide_participation(fed, inst, LedgerState(), ALL_KNOWN)) == {"base_model"}


def test_federation_delta_above_budget_delta_is_denied(policies):
    fed, inst = policies
    fed = fed.model_copy(update={"privacy": fed.privacy.model_copy(update={"delta": 1e-3})})
    assert failed(decide_participation(fed, inst, LedgerState(), ALL_KNOWN)) == {"delta"}


def test_federation_that_may_sum_below_min_cohort_is_denied(policies):
    fed, inst = policies
    inst = inst.model_copy(update={"min_cohort": 3})
    decision = decide_participation(fed, inst, LedgerState(), ALL_KNOWN)
    assert failed(decision) == {"cohort"}
    assert "below min_cohort 3" in decision.reasons[0]


def test_release_to_coordinator_needs_allow_release(policies):
    fed, inst = policies
    fed = fed.model_copy(update={"release": fed.release.model_copy(update={"to_coordinator": True})})
    assert failed(decide_participation(fed, inst, LedgerState(), ALL_KNOWN)) == {"release"}
    inst = inst.model_copy(update={"allow_release": True})
    assert decide_participation(fed, inst, LedgerState(), ALL_KNOWN).allowed


def test_max_rounds_reached_is_denied(policies):
    fed, inst = policies
    inst = inst.model_copy(update={"max_rounds": 2})
    assert decide_participation(fed, inst, LedgerState(rounds_taken=1), ALL_KNOWN).allowed
    assert failed(decide_participation(fed, inst, LedgerState(rounds_taken=2), ALL_KNOWN)) == {"max_rounds"}


def test_round_outside_the_federation_is_denied(policies):
    facts = RoundFacts(round_index=4, epsilon_after_round=0.5, round_epsilon=0.5, noise_multiplier=1.0)
    assert failed(decide_participation(*policies, LedgerState(), facts)) == {"round"}


def test_round_that_would_exceed_the_total_budget_is_denied(policies):
    facts = RoundFacts(round_index=3, epsilon_after_round=3.2, round_epsilon=0.9, noise_multiplier=1.0)
    decision = decide_participation(*policies, LedgerState(epsilon_spent=2.3), facts)
    assert failed(decision) == {"budget"}
    assert "3.2 > budget 3" in decision.reasons[0]


def test_round_landing_exactly_on_the_budget_is_allowed(policies):
    facts = RoundFacts(round_index=3, epsilon_after_round=3.0, round_epsilon=0.9, noise_multiplier=1.0)
    assert decide_participation(*policies, LedgerState(epsilon_spent=2.1), facts).allowed


def test_round_over_the_institution_cap_is_denied(policies):
    facts = RoundFacts(round_index=1, epsilon_after_round=1.2, round_epsilon=1.2, noise_multiplier=1.0)
    assert failed(decide_participation(*policies, LedgerState(), facts)) == {"round_cap"}


def test_the_stricter_of_federation_and_institution_caps_applies(policies):
    fed, inst = policies
    fed = fed.model_copy(update={"privacy": fed.privacy.model_copy(update={"max_round_epsilon": 0.4})})
    decision = decide_participation(fed, inst, LedgerState(), ALL_KNOWN)
    assert failed(decision) == {"round_cap"}
    assert "cap 0.4" in decision.reasons[0]


def test_noise_below_federation_minimum_is_denied(policies):
    fed, inst = policies
    fed = fed.model_copy(update={"privacy": fed.privacy.model_copy(update={"min_noise_multiplier": 1.5})})
    assert failed(decide_participation(fed, inst, LedgerState(), ALL_KNOWN)) == {"noise"}


def test_several_violations_are_all_reported(policies):
    fed, inst = policies
    inst = inst.model_copy(update={"min_cohort": 3, "max_rounds": 1})
    facts = RoundFacts(round_index=1, epsilon_after_round=5.0, round_epsilon=5.0, noise_multiplier=1.0)
    decision = decide_participation(fed, inst, LedgerState(rounds_taken=1), facts)
    assert failed(decision) == {"cohort", "max_rounds", "budget", "round_cap"}
    assert len(decision.reasons) == 4

"""One-run canary audit: the statistics, and the audit on a tiny model with DP off and on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from confide.privacy import DPSettings
from confide.privacy.audit.canary_bound import bound_from_scores, epsilon_lower_bound, guess_membership, p_value
from confide.privacy.audit.canary_run import CanaryAudit, canary_settings, run_canary_audit

CANARIES = 200


def test_all_correct_guesses_match_the_closed_form_bound():
    # delta = 0: P[Bin(r, p) >= r] = p^r, so the bound solves p^r = 0.05 for p = e^eps / (1 + e^eps).
    for r in (10, 40, 100):
        p = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_chance_level_guesses_give_no_bound():
    assert epsilon_lower_bound(200, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(200, 100, 30, 1e-5) == 0.0


def test_p_value_grows_with_epsilon_and_with_delta():
    values = [p_value(200, 50, 45, eps, 1e-5) for eps in (0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values)
    assert p_value(200, 50, 45, 1.0, 1e-2) > p_value(200, 50, 45, 1.0, 1e-5)


def test_guesses_take_the_top_as_in_and_the_bottom_as_out():
    guesses = guess_membership([0.9, 0.1, 0.5, 0.8, 0.2], k_plus=2, k_minus=1)
    assert guesses.tolist() == [1, -1, 0, 1, 0]


def test_perfect_scores_bound_epsilon_and_random_scores_do_not():
    rng = np.random.default_rng(0)
    included = rng.random(CANARIES) < 0.5
    perfect = bound_from_scores(included.astype(float), included, delta=1e-5)
    assert perfect.epsilon_lower_bound > 2.5 and perfect.best.correct == perfect.best.guesses
    assert bound_from_scores(rng.normal(size=CANARIES), included, delta=1e-5).epsilon_lower_bound < 0.5


def test_bound_above_the_accounted_epsilon_fails_the_audit():
    audit = CanaryAudit(canaries=200, included=100, guesses=80, correct=80, epsilon_lower_bound=2.9,
                        confidence=0.95, accounted_epsilon=1.0, accountant="prv", delta=1e-5,
                        noise_multiplier=2.0, sample_rate=0.1, steps=10, rounds=1, clipping_norm=1.0)
    assert not audit.passed and audit.exit_code == 1
    assert json.loads(json.dumps(audit.to_dict()))["passed"] is False


# ----------------------------------------------------------------------------- on a tiny model


def settings(noise_multiplier: float, clipping_norm: float) -> DPSettings:
    return DPSettings(noise_multiplier=noise_multiplier, sample_rate=0.5, steps=10, clipping_norm=clipping_norm,
                      max_physical_batch_size=64, learning_rate=0.05, optimizer="sgd")


def test_canary_audit_without_noise_and_with_loose_clipping_finds_a_clearly_positive_bound(tiny_classifier):
    built, train = tiny_classifier
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    audit = run_canary_audit(built.model, train, built.task, settings(0.0, 100.0), canaries=CANARIES, seed=1)
    assert audit.epsilon_lower_bound > 2.0
    assert math.isinf(audit.accounted_epsilon) and audit.passed
    assert all(torch.equal(before[n], p) for n, p in built.model.named_parameters())  # adapter restored


def test_canary_audit_with_dp_stays_below_the_accounted_epsilon(tiny_classifier):
    built, train = tiny_classifier
    audit = run_canary_audit(built.model, train, built.task, settings(1.0, 1.0), canaries=CANARIES, seed=1)
    assert 0 < audit.accounted_epsilon < 20
    assert audit.epsilon_lower_bound < audit.accounted_epsilon and audit.passed
    assert audit.epsilon_lower_bound < 1.0


def test_canary_settings_follow_the_agents_plan(tiny_policies):
    federation, institution = tiny_policies
    dp, rounds = canary_settings(federation, institution, train_records=64)
    assert rounds == federation.rounds and dp.steps == federation.training.steps_per_round
    assert dp.sample_rate == pytest.approx(federation.training.expected_batch_size / 64)
    assert dp.clipping_norm == institution.clipping_norm and dp.noise_multiplier > 0


def test_console_shows_the_bound_next_to_the_accounted_epsilon():
    from rich.console import Console

    from confide.privacy.audit import canary_renderables

    audit = CanaryAudit(canaries=200, included=100, guesses=80, correct=80, epsilon_lower_bound=2.9,
                        confidence=0.95, accounted_epsilon=1.0, accountant="prv", delta=1e-5,
                        noise_multiplier=2.0, sample_rate=0.1, steps=10, rounds=1, clipping_norm=1.0)
    console = Console(record=True, width=160)
    for renderable in canary_renderables(audit):
        console.print(renderable)
    text = console.export_text()
    assert "2.9000" in text and "1.0000" in text and "leaks more than accounted" in text

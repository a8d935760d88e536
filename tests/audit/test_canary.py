"""One-run canary audit: the statistics (SNJ and f-DP), the gradient canaries, and the audit with
honest and broken noise on a tiny model through the institution's own training code."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from confide.privacy import DPSettings, calibrate_noise_multiplier
from confide.privacy.audit import canary_run
from confide.privacy.audit.canary_bound import bound_from_scores, epsilon_lower_bound, guess_membership, p_value
from confide.privacy.audit.canary_fdp import fdp_epsilon_lower_bound, gdp_delta, gdp_epsilon, mu_lower_bound
from confide.privacy.audit.canary_gradients import CanaryInjector, choose_canaries, data_pull
from confide.privacy.audit.canary_run import CanaryAudit, canary_settings, run_canary_audit
from confide.privacy.trainable import trainable_parameters

CANARIES = 1000


def test_all_correct_guesses_match_the_closed_form_bound():
    # delta = 0: P[Bin(r, p) >= r] = p^r, so the bound solves p^r = 0.05 for p = e^eps / (1 + e^eps).
    for r in (10, 40, 100):
        p = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_chance_level_guesses_give_no_bound():
    assert epsilon_lower_bound(200, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(200, 100, 30, 1e-5) == 0.0
    assert fdp_epsilon_lower_bound(1000, 1000, 500, 1e-5) == (0.0, 0.0)


def test_p_value_grows_with_epsilon_and_with_delta():
    values = [p_value(200, 50, 45, eps, 1e-5) for eps in (0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values)
    assert p_value(200, 50, 45, 1.0, 1e-2) > p_value(200, 50, 45, 1.0, 1e-5)


def test_guesses_take_the_top_as_in_and_the_bottom_as_out():
    guesses = guess_membership([0.9, 0.1, 0.5, 0.8, 0.2], k_plus=2, k_minus=1)
    assert guesses.tolist() == [1, -1, 0, 1, 0]


def test_gdp_epsilon_inverts_gdp_delta():
    for mu in (0.3, 1.0, 2.5):
        eps = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(mu, eps) == pytest.approx(1e-5, rel=1e-3)
    assert gdp_epsilon(1.0, 1e-5) > gdp_epsilon(0.5, 1e-5)


def test_fdp_bound_is_tighter_than_snj_and_grows_with_correct_guesses():
    for r in (100, 400, 1000):
        assert fdp_epsilon_lower_bound(1000, r, r, 1e-5)[1] > epsilon_lower_bound(1000, r, r, 1e-5)
    mus = [mu_lower_bound(1000, 400, v) for v in (250, 300, 350, 400)]
    assert mus == sorted(mus) and mus[-1] > mus[0]


def test_fdp_bound_rarely_exceeds_the_true_mu_of_a_gaussian_mechanism():
    # Each canary's score is N(mu, 1) if included and N(0, 1) if not: exactly mu-GDP per canary.
    rng = np.random.default_rng(7)
    mu, m, k, trials = 1.0, 400, 40, 30
    bounds = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        scores = rng.normal(size=m) + mu * included
        guesses = guess_membership(scores, k, k)
        correct = int(np.sum(guesses == np.where(included, 1, -1)))
        bounds.append(mu_lower_bound(m, 2 * k, correct))
    assert sum(b > mu for b in bounds) <= 5  # 95% confidence: about 1.5 of 30 expected
    assert max(bounds) > 0  # and it is not vacuous


def test_perfect_scores_reach_the_reachable_bound_and_random_scores_do_not():
    rng, m = np.random.default_rng(0), 400
    included = rng.permutation(m) < m // 2  # exactly half: guessing all of them can be all right
    perfect = bound_from_scores(included.astype(float), included, delta=1e-5)
    assert perfect.best.correct == perfect.best.guesses
    assert perfect.epsilon_lower_bound == pytest.approx(perfect.reachable_epsilon)
    assert perfect.fdp_epsilon_lower_bound == pytest.approx(perfect.fdp_reachable_epsilon)
    assert perfect.fdp_epsilon_lower_bound > perfect.epsilon_lower_bound > 3.0  # 400 right: e^eps/(1+e^eps)^400
    noise = bound_from_scores(rng.normal(size=m), included, delta=1e-5)
    assert noise.epsilon_lower_bound < 0.5 and noise.reachable_epsilon == perfect.reachable_epsilon


def _audit(**changes) -> CanaryAudit:
    fields = dict(canaries=1000, included=500, guesses=400, correct=400, epsilon_lower_bound=4.4,
                  reachable_epsilon=5.4, fdp_mu_lower_bound=1.5, fdp_epsilon_lower_bound=7.6,
                  fdp_reachable_epsilon=10.0, confidence=0.95, accounted_epsilon=3.0, accountant="prv",
                  delta=1e-5, noise_multiplier=2.5, sample_rate=0.5, steps=10, rounds=1, clipping_norm=1.0,
                  canary_draws=2500)
    return CanaryAudit(**(fields | changes))


def test_bound_above_the_accounted_epsilon_fails_the_audit():
    audit = _audit()
    assert not audit.passed and audit.exit_code == 1
    as_json = json.loads(json.dumps(audit.to_dict()))
    assert as_json["passed"] is False and as_json["reachable_epsilon"] == 5.4


def test_console_shows_both_bounds_with_their_maxima_in_80_columns():
    from rich.console import Console

    from confide.privacy.audit.canary_console import canary_audit_renderables

    def text_of(audit):
        console = Console(record=True, width=80)
        for renderable in canary_audit_renderables(audit):
            console.print(renderable)
        return console.export_text()

    def words(text):
        return " ".join(text.split())

    failed = text_of(_audit())
    assert all(len(line) <= 80 for line in failed.splitlines())
    assert "4.40" in failed and "5.40" in failed and "7.60" in failed and "10.00" in failed
    assert "leaks more than accounted" in words(failed)
    powerless = words(text_of(_audit(epsilon_lower_bound=0.5, reachable_epsilon=2.0, accounted_epsilon=3.0)))
    assert "within the accounted epsilon" in powerless and "could not have failed" in powerless


def test_canaries_take_the_coordinates_the_data_pulls_least():
    pull = torch.tensor([5.0, 0.1, 3.0, 0.0, 0.2, 9.0])
    chosen = choose_canaries(pull, 3, torch.Generator().manual_seed(0))
    assert sorted(chosen.coordinates.tolist()) == [1, 3, 4]
    with pytest.raises(ValueError, match="one trainable coordinate each"):
        choose_canaries(pull, 7, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- on a tiny model


def settings(noise_multiplier: float, steps: int = 10) -> DPSettings:
    return DPSettings(noise_multiplier=noise_multiplier, sample_rate=0.5, steps=steps, clipping_norm=1.0,
                      max_physical_batch_size=16, learning_rate=0.05, optimizer="sgd")


@pytest.mark.integration
def test_canary_gradients_go_through_clipping_and_normalisation_like_records(tiny_classifier):
    # Without noise a canary's summed observation is the number of times it was drawn: each draw
    # added exactly one clipped record gradient, divided by the expected batch like the records'.
    # Physical batches of 16 split each step, so the canaries must be added once per step.
    from confide.privacy import run_dp_round

    built, train = tiny_classifier
    params = list(trainable_parameters(built.model).values())
    pull = data_pull(built.model, train, built.task, clipping_norm=1.0)
    generator = torch.Generator().manual_seed(3)
    chosen = choose_canaries(pull, 200, generator)
    injector = CanaryInjector(chosen, params, 0.5, 1.0, expected_batch_size=0.5 * len(train), generator=generator)
    start = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    try:
        run_dp_round(built.model, train, built.task, settings(0.0), seed=1, on_step=injector.on_step,
                     per_sample_hook=injector.per_sample_hook)
    finally:
        with torch.no_grad():
            for n, p in built.model.named_parameters():
                p.copy_(start[n])
    scores, draws = injector.scores(), injector.draws.double()
    assert injector.steps == 10 and int(draws[~chosen.included].sum()) == 0
    assert draws[chosen.included].mean() == pytest.approx(5.0, abs=1.0)  # q x steps
    # The data's own pull on these coordinates is small but not zero, hence the tolerance.
    assert torch.allclose(scores, draws, atol=0.05)


@pytest.mark.integration
def test_canary_audit_without_noise_finds_a_bound_far_above_chance_and_restores_the_adapter(tiny_classifier):
    built, train = tiny_classifier
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    audit = run_canary_audit(built.model, train, built.task, settings(0.0), canaries=CANARIES, seed=1)
    assert audit.epsilon_lower_bound > 3.0 and audit.fdp_epsilon_lower_bound > audit.epsilon_lower_bound
    assert math.isinf(audit.accounted_epsilon) and audit.passed
    assert all(torch.equal(before[n], p) for n, p in built.model.named_parameters())


def _noise_divided_by(monkeypatch, divisor: float | None) -> None:
    """Break the training the audit runs (None: no noise at all), leaving its accounting as configured."""
    real = canary_run.run_dp_round

    def broken(model, train, task, dp: DPSettings, **kwargs):
        sigma = 0.0 if divisor is None else dp.noise_multiplier / divisor
        return real(model, train, task, dataclasses.replace(dp, noise_multiplier=sigma), **kwargs)

    monkeypatch.setattr(canary_run, "run_dp_round", broken)


@pytest.fixture(scope="module")
def epsilon_3() -> DPSettings:
    return settings(calibrate_noise_multiplier(3.0, 1e-5, 0.5, 10))


@pytest.mark.integration
@pytest.mark.parametrize("divisor", [10.0, None], ids=["noise-divided-by-10", "noise-removed"])
def test_canary_audit_fails_when_the_training_noise_is_broken_at_epsilon_3(
        tiny_classifier, epsilon_3, monkeypatch, divisor):
    built, train = tiny_classifier
    _noise_divided_by(monkeypatch, divisor)
    audit = run_canary_audit(built.model, train, built.task, epsilon_3, canaries=CANARIES, seed=0)
    assert audit.accounted_epsilon == pytest.approx(3.0, abs=0.05)
    assert audit.epsilon_lower_bound > audit.accounted_epsilon
    assert not audit.passed and audit.exit_code == 1


@pytest.mark.integration
def test_canary_audit_passes_with_honest_noise_at_epsilon_3_in_every_seed(tiny_classifier, epsilon_3):
    built, train = tiny_classifier
    audits = [run_canary_audit(built.model, train, built.task, epsilon_3, canaries=CANARIES, seed=s)
              for s in range(5)]
    assert all(a.passed for a in audits)
    assert all(a.epsilon_lower_bound < a.accounted_epsilon and a.reachable_epsilon > a.accounted_epsilon
               for a in audits)  # it could have failed, and did not


def test_canary_settings_follow_the_agents_plan(tiny_policies):
    federation, institution = tiny_policies
    dp, rounds = canary_settings(federation, institution, train_records=64)
    assert rounds == federation.rounds and dp.steps == federation.training.steps_per_round
    assert dp.sample_rate == pytest.approx(federation.training.expected_batch_size / 64)
    assert dp.clipping_norm == institution.clipping_norm and dp.noise_multiplier > 0


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def policy_files(tmp_path):
    """A one-round federation and an institution with budget 3, as files for `confide audit canaries`."""
    from confide.identity import Identity

    from .support import federation_yaml, institution_yaml, write_records

    write_records(tmp_path / "a.jsonl", 64)
    a, b = Identity.generate("hospital-a"), Identity.generate("hospital-b")
    training = ("training:\n  steps_per_round: 10\n  expected_batch_size: 32\n  max_physical_batch_size: 64\n"
                "  learning_rate: 0.05\n  optimizer: sgd\n")
    federation = tmp_path / "federation.yaml"
    federation.write_text(federation_yaml(a, b, 0.5, "prv", 1e-5, training).replace("rounds: 5", "rounds: 1")
                          + "adapter:\n  rank: 8\n  alpha: 16\n  target_modules: [query, value]\n")
    institution = tmp_path / "policy.yaml"
    institution.write_text(institution_yaml(3.0, None, 1.0).replace(
        "data:\n  path: data.jsonl\n  format: jsonl\n",
        f"data:\n  path: {tmp_path / 'a.jsonl'}\n  format: jsonl\n  eval_fraction: 0\n"))
    return federation, institution


def _run_command(policy_files, *extra):
    from confide import cli

    federation, institution = policy_files
    return CliRunner().invoke(cli.app, ["audit", "canaries", str(federation), str(institution), "--canaries",
                                        str(CANARIES), *extra], prog_name="confide")


@pytest.mark.integration
def test_command_exits_1_with_broken_noise_and_0_with_honest_noise(policy_files, monkeypatch):
    honest = _run_command(policy_files, "--json")
    assert honest.exit_code == 0, honest.output
    verdict = json.loads(honest.output)
    assert verdict["passed"] is True and verdict["accounted_epsilon"] == pytest.approx(3.0, abs=0.05)
    assert verdict["reachable_epsilon"] > verdict["accounted_epsilon"] > verdict["epsilon_lower_bound"]
    _noise_divided_by(monkeypatch, 10.0)
    broken = _run_command(policy_files)
    assert broken.exit_code == 1, broken.output
    assert "leaks more than accounted" in " ".join(broken.output.split())
    assert all(len(line) <= 80 for line in broken.output.splitlines())


def test_command_refuses_zero_canaries_in_one_line(policy_files):
    result = _run_command(policy_files, "--canaries", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output

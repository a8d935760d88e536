"""The canary audit: the SNJ statistics, the recorded mechanism's trade-off curve and the one-run
f-DP test against it, the gradient canaries, and the audit of honest and broken training on a tiny
model through `train_round`, the function the agent's real rounds call."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri
from typer.testing import CliRunner

from confide.privacy import RoundSpend, calibrate_noise_multiplier, training
from confide.privacy.audit.canary_bound import epsilon_lower_bound, guess_membership, p_value
from confide.privacy.audit.canary_curve import mechanism_curve, most_consistent
from confide.privacy.audit.canary_gradients import (
    CanaryInjector,
    choose_canaries,
    data_pull,
    likelihood_ratio_scores,
)
from confide.privacy.audit.canary_run import (
    CanaryAudit,
    GuessChoice,
    canaries_for_power,
    canary_settings,
    guess_choices,
    judge,
    noiseless_would_fail,
    run_canary_audit,
)
from confide.privacy.trainable import load_trainable_state, trainable_parameters, trainable_state
from confide.privacy.training import train_round

CANARIES = 1000


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


# ----------------------------------------------------------------------------- the mechanism's curve


class _GaussianCurve:
    """The closed-form mu-GDP curve, f(1 - h) = Phi(Phi^-1(h) - mu), as the paper states it."""

    def __init__(self, mu: float):
        self.mu = mu

    def blow_up_inverse(self, hit: float) -> float:
        return float(ndtr(ndtri(min(max(hit, 0.0), 1.0)) - self.mu))


def test_pld_curve_of_one_gaussian_release_is_the_gaussian_tradeoff_from_below():
    # Without subsampling, one release with noise multiplier sigma is exactly (1/sigma)-GDP.
    sigma = 2.0
    curve = mechanism_curve([(sigma, 1.0, 1)])
    for alpha in (1e-6, 1e-3, 0.05, 0.3, 0.7):
        exact = float(ndtr(ndtri(1 - alpha) - 1 / sigma))
        assert exact - 2e-3 <= curve.beta(alpha) <= exact + 1e-9


def test_the_curve_test_agrees_with_the_papers_gaussian_recursion_and_never_allows_less():
    pld, exact = mechanism_curve([(1.0, 1.0, 1)]), _GaussianCurve(1.0)
    for m, r in ((1000, 100), (1000, 1000), (400, 300)):
        from_pld, closed_form = most_consistent(pld, m, r, 0.05), most_consistent(exact, m, r, 0.05)
        assert closed_form <= from_pld <= closed_form + max(2, r // 100)


def test_more_noise_allows_fewer_right_guesses_and_no_noise_allows_all():
    allowed = [most_consistent(mechanism_curve([(sigma, 0.1, 40)]), 2000, 900, 0.01) for sigma in (0.6, 1.0, 2.0)]
    assert allowed[0] >= allowed[1] >= allowed[2] and allowed[0] > allowed[2]
    noiseless = mechanism_curve([(0.0, 0.1, 40)])
    assert noiseless.trivial and most_consistent(noiseless, 2000, 900, 0.01) == 900


def _simulated(q: float, steps: int, sigma_run: float, m: int, rng) -> tuple[torch.Tensor, np.ndarray]:
    """Each canary's per-step observations under Dirac canaries: drawn with probability q when
    included, plus Gaussian noise of `sigma_run` (the noise the run really drew)."""
    included = rng.random(m) < 0.5
    drawn = (rng.random((steps, m)) < q) & included
    return torch.from_numpy(drawn + rng.normal(size=(steps, m)) * sigma_run), included


@pytest.fixture(scope="module")
def epsilon_3_sigma() -> float:
    return calibrate_noise_multiplier(3.0, 1e-5, 0.5, 10)


def test_simulated_honest_runs_rarely_fail_and_broken_noise_always_fails(epsilon_3_sigma):
    rng, q, steps, m = np.random.default_rng(11), 0.5, 10, CANARIES
    history = [(epsilon_3_sigma, q, steps)]

    def audit(sigma_run):
        observations, included = _simulated(q, steps, sigma_run, m, rng)
        scores = likelihood_ratio_scores(observations, epsilon_3_sigma, q).numpy()
        return judge(scores, included, history, 1e-5, "pld")

    honest = [audit(epsilon_3_sigma) for _ in range(10)]
    assert sum(not a.passed for a in honest) <= 2  # 5% level: 0.5 of 10 expected
    assert all(a.noiseless_would_fail for a in honest)  # and each could have failed
    assert not any(audit(sigma).passed for sigma in (0.0, epsilon_3_sigma / 3, 0.0, epsilon_3_sigma / 3))


def test_likelihood_ratio_score_ranks_a_drawn_canary_above_an_undrawn_one():
    observations = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    scores = likelihood_ratio_scores(observations, 1.0, 0.1)
    assert scores[0] > 0 > scores[1]  # a 0 observation is evidence for "out"
    assert torch.equal(likelihood_ratio_scores(observations, 0.0, 0.1), observations.double().sum(dim=0))


def test_power_note_names_the_canaries_that_would_help_or_says_none_would(epsilon_3_sigma):
    level = 0.05 / len(guess_choices(CANARIES))
    ten = mechanism_curve([(calibrate_noise_multiplier(10.0, 1e-5, 0.5, 10), 0.5, 10)])
    draw = 1 - 0.5 ** 10
    needed = canaries_for_power(ten, CANARIES, draw, level)
    if needed is None:
        pytest.fail("no number of canaries gives power at epsilon 10 with q 0.5 and 10 steps")
    assert noiseless_would_fail(ten, needed, draw, level)
    assert needed == CANARIES or not noiseless_would_fail(ten, needed // 2, draw, level)
    rarely_drawn = mechanism_curve([(epsilon_3_sigma, 0.001, 10)])
    assert canaries_for_power(rarely_drawn, CANARIES, 1 - 0.999 ** 10, level) is None


def _audit(**changes) -> CanaryAudit:
    fields = dict(canaries=1000, runs=1, included=500,
                  choices=[GuessChoice(100, 0, 100, 93), GuessChoice(250, 250, 470, 455)],
                  level=0.025, confidence=0.95, epsilon_lower_bound=4.4, reachable_epsilon=5.4,
                  noiseless_would_fail=True, accounted_epsilon=3.0, accountant="pld", delta=1e-5,
                  noise_multiplier=2.5, sample_rate=0.5, steps=10, rounds=1, clipping_norm=1.0, canary_draws=2500)
    return CanaryAudit(**(fields | changes))


def test_more_right_guesses_than_the_curve_allows_fail_the_audit():
    audit = _audit()
    assert not audit.passed and audit.exit_code == 1
    assert audit.decisive == GuessChoice(250, 250, 470, 455)  # the widest margin
    as_json = json.loads(json.dumps(audit.to_dict()))
    assert as_json["passed"] is False and as_json["choices"][1]["allowed"] == 455
    within = _audit(choices=[GuessChoice(100, 0, 90, 93)])
    assert within.passed and within.exit_code == 0


def _text_of(audit) -> str:
    from rich.console import Console

    from confide.privacy.audit.canary_console import canary_audit_renderables

    console = Console(record=True, width=80)
    for renderable in canary_audit_renderables(audit):
        console.print(renderable)
    return console.export_text()


def test_console_shows_the_decisive_guesses_against_the_curve_in_80_columns():
    failed = _text_of(_audit())
    assert all(len(line) <= 80 for line in failed.splitlines())
    words = " ".join(failed.split())
    assert "470" in words and "455" in words and "less private than its ledger says" in words
    assert "note:" not in words


def test_console_says_when_more_canaries_help_and_when_they_do_not(epsilon_3_sigma):
    ten = calibrate_noise_multiplier(10.0, 1e-5, 0.5, 10)
    helpful = " ".join(_text_of(_audit(choices=[GuessChoice(100, 0, 90, 100)], noiseless_would_fail=False,
                                       noise_multiplier=ten, accounted_epsilon=10.0)).split())
    assert "would be expected to pass" in helpful and "--canaries" in helpful
    hopeless = " ".join(_text_of(_audit(choices=[GuessChoice(100, 0, 90, 100)], noiseless_would_fail=False,
                                        noise_multiplier=epsilon_3_sigma, sample_rate=0.001)).split())
    assert "more canaries do not help" in hopeless and "--canaries" not in hopeless


def test_canaries_take_the_coordinates_the_data_pulls_least():
    pull = torch.tensor([5.0, 0.1, 3.0, 0.0, 0.2, 9.0])
    chosen = choose_canaries(pull, 3, torch.Generator().manual_seed(0))
    assert sorted(chosen.coordinates.tolist()) == [1, 3, 4]
    with pytest.raises(ValueError, match="one trainable coordinate each"):
        choose_canaries(pull, 7, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- on a tiny model, through train_round


@pytest.fixture(scope="module")
def epsilon_3_spend(tiny_policies, epsilon_3_sigma) -> RoundSpend:
    federation, _ = tiny_policies
    assert federation.training.expected_batch_size / 64 == 0.5 and federation.training.steps_per_round == 10
    return RoundSpend(epsilon_3_sigma, 0.5, 10)


def _noise_broken(monkeypatch, how: str) -> None:
    """Break the noise on the path real rounds take, leaving the ledger-side spend as planned."""
    if how == "train_round drops the noise":
        real_round = training.run_dp_round

        def dropped(model, train, task, settings, **kwargs):
            return real_round(model, train, task, dataclasses.replace(settings, noise_multiplier=0.0), **kwargs)

        monkeypatch.setattr(training, "_dp_round", dropped)  # what train_round calls
        return
    real = training.DPOptimizer
    divisor = {"noise / 3": 3.0, "noise / 10": 10.0, "no noise": math.inf}[how]

    def broken(*args, noise_multiplier, **kwargs):
        return real(*args, noise_multiplier=noise_multiplier / divisor, **kwargs)

    monkeypatch.setattr(training, "DPOptimizer", broken)


@pytest.mark.integration
def test_canary_gradients_go_through_clipping_and_normalisation_like_records(tiny_policies, tiny_classifier):
    # Without noise a canary's summed observation is the number of times it was drawn: each draw
    # added exactly one clipped record gradient, divided by the expected batch like the records'.
    # Physical batches of 16 split each step, so the canaries must be added once per step.
    federation, institution = tiny_policies
    federation = federation.model_copy(update={
        "training": federation.training.model_copy(update={"max_physical_batch_size": 16})})
    built, train = tiny_classifier
    params = list(trainable_parameters(built.model).values())
    pull = data_pull(built.model, train, built.task, clipping_norm=1.0)
    generator = torch.Generator().manual_seed(3)
    chosen = choose_canaries(pull, 200, generator)
    injector = CanaryInjector(chosen, params, 0.5, 1.0, expected_batch_size=0.5 * len(train), generator=generator)
    start = trainable_state(built.model)
    try:
        train_round(built.model, train, federation, institution, RoundSpend(0.0, 0.5, 10), on_step=injector.on_step,
                    per_sample_hook=injector.per_sample_hook)
    finally:
        load_trainable_state(built.model, start)
    scores, draws = injector.scores(), injector.draws.double()
    assert injector.steps == 10 and int(draws[~chosen.included].sum()) == 0
    assert draws[chosen.included].mean() == pytest.approx(5.0, abs=1.0)  # q x steps
    # The data's own pull on these coordinates is small but not zero, hence the tolerance.
    assert torch.allclose(scores, draws, atol=0.05)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["noise / 3", "no noise", "train_round drops the noise"])
def test_canary_audit_fails_training_whose_noise_is_broken_on_the_real_rounds_path(
        tiny_policies, tiny_classifier, epsilon_3_spend, monkeypatch, how):
    federation, institution = tiny_policies
    built, train = tiny_classifier
    before = trainable_state(built.model)
    _noise_broken(monkeypatch, how)
    audit = run_canary_audit(built.model, train, federation, institution, epsilon_3_spend, canaries=CANARIES, seed=0)
    assert audit.accounted_epsilon == pytest.approx(3.0, abs=0.05)
    assert not audit.passed and audit.exit_code == 1
    assert audit.decisive.correct > audit.decisive.allowed
    after = trainable_state(built.model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the adapter is left as it was


@pytest.mark.integration
def test_canary_audit_passes_honest_training_in_every_seed_and_could_have_failed(
        tiny_policies, tiny_classifier, epsilon_3_spend):
    federation, institution = tiny_policies
    built, train = tiny_classifier
    audits = [run_canary_audit(built.model, train, federation, institution, epsilon_3_spend, canaries=CANARIES,
                               seed=s) for s in range(5)]
    assert all(a.passed for a in audits)
    assert all(a.noiseless_would_fail for a in audits)  # it had the power to fail, and did not


@pytest.mark.integration
def test_more_canaries_than_coordinates_run_several_times(tiny_policies, tiny_classifier, epsilon_3_spend):
    federation, institution = tiny_policies
    built, train = tiny_classifier
    coordinates = sum(p.numel() for p in trainable_parameters(built.model).values())
    audit = run_canary_audit(built.model, train, federation, institution, epsilon_3_spend,
                             canaries=coordinates + 1, seed=0)
    assert audit.runs == 2 and audit.canaries == coordinates + 1 and audit.passed


def test_canary_settings_follow_the_agents_plan(tiny_policies):
    federation, institution = tiny_policies
    spend, rounds = canary_settings(federation, institution, train_records=64)
    assert rounds == federation.rounds and spend.steps == federation.training.steps_per_round
    assert spend.sample_rate == pytest.approx(federation.training.expected_batch_size / 64)
    assert spend.noise_multiplier > 0


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def policy_files(tmp_path):
    """A one-round federation and an institution with budget 3, as files for `confide audit canaries`."""
    from confide.identity import Identity

    from .support import federation_yaml, institution_yaml, write_records

    write_records(tmp_path / "a.jsonl", 64)
    a, b = Identity.generate("hospital-a"), Identity.generate("hospital-b")
    training_yaml = ("training:\n  steps_per_round: 10\n  expected_batch_size: 32\n  max_physical_batch_size: 64\n"
                     "  learning_rate: 0.05\n  optimizer: sgd\n")
    federation = tmp_path / "federation.yaml"
    federation.write_text(federation_yaml(a, b, 0.5, "pld", 1e-5, training_yaml).replace("rounds: 5", "rounds: 1")
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
    assert verdict["noiseless_would_fail"] is True
    assert all(c["correct"] <= c["allowed"] for c in verdict["choices"])
    _noise_broken(monkeypatch, "noise / 3")
    broken = _run_command(policy_files)
    assert broken.exit_code == 1, broken.output
    assert "less private than its ledger says" in " ".join(broken.output.split())
    assert all(len(line) <= 80 for line in broken.output.splitlines())


def test_command_refuses_zero_canaries_in_one_line(policy_files):
    result = _run_command(policy_files, "--canaries", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output

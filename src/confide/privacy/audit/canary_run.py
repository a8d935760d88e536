"""`confide audit canaries`: does the training leak more than the mechanism its ledger records?

The auditor adds m white-box canaries (Dirac canary gradients, `canary_gradients`), each
included with probability 1/2, and trains the planned round(s) through `train_round`, the very
function the agent's real rounds call (`LocalModel.train`, platform/member/learner.py): the same
settings from the same policies, Poisson sampling and Gaussian noise from the OS's randomness, clipping, normalisation.
Each canary is scored from the privatized gradients the run releases (its likelihood ratio under
the recorded mechanism), the highest are guessed "in" (and for some choices the lowest "out"),
and the number of right guesses is tested against the trade-off curve of exactly what the ledger
records: Poisson-subsampled Gaussian composed over the steps (`canary_curve`, dp_accounting's
PLD), by the f-DP one-run test of Mahloujifar, Melis and Chaudhuri (2024). More right guesses
than that curve allows at the confidence level fail the audit: the training was less private
than its ledger says.

A run holds at most one canary per trainable coordinate; more canaries are spread over several
independent runs (each from the same starting adapter, fresh canaries, fresh randomness), pooled
into one test: each canary is in one run only, so the pooled outcome is f-DP for each canary
exactly as one run's is (`docs/canary-audit.md`).

Steinke, Nasr and Jagielski's (epsilon, delta) lower bound from the same guesses is reported
beside the verdict, for information: it holds for any mechanism, so it is weaker.

The model and data come in as arguments: building them from a federation file is the platform's
job (privacy does not import platform); `canary_settings` plans the spend as the agent would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy import training
from confide.privacy.accounting import RoundSpend
from confide.privacy.accounting import epsilon as accounted_epsilon_of
from confide.privacy.audit.canary_bound import epsilon_lower_bound, guess_membership
from confide.privacy.audit.canary_curve import TradeOffCurve, consistent, mechanism_curve, most_consistent
from confide.privacy.audit.canary_gradients import (
    CanaryInjector,
    choose_canaries,
    data_pull,
    likelihood_ratio_scores,
)
from confide.privacy.budget import plan_participation
from confide.privacy.trainable import load_trainable_state, trainable_parameters, trainable_state
from confide.privacy.training import DPSettings

DEFAULT_CANARIES = 10000
"""Spread over as many runs as one-canary-per-trainable-coordinate needs."""
PROBE_RECORDS = 64
"""Records whose clipped gradients pick the canaries' coordinates (where the data pulls least)."""
IN_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.45)
"""Choices guessing only "in", for this fraction of the canaries (the highest scores)."""
BOTH_FRACTIONS: tuple[float, ...] = (0.25, 0.5)
"""Choices guessing this fraction "in" (highest) and as many "out" (lowest); 0.5 guesses all."""
POWER_CANARIES_LIMIT = 200_000
"""The most canaries the console's power note considers (about 180 runs of tiny-bert's adapter)."""


@dataclass(frozen=True)
class GuessChoice:
    """One way of guessing, fixed before the scores are seen: its guesses, how many were right,
    and the most the recorded mechanism's curve allows at the audit's (corrected) level."""

    guess_in: int
    guess_out: int
    correct: int
    allowed: int

    @property
    def guesses(self) -> int:
        return self.guess_in + self.guess_out

    @property
    def rejects(self) -> bool:
        return self.correct > self.allowed


@dataclass(frozen=True)
class CanaryAudit:
    """The empirical audit's outcome against the mechanism the ledger records."""

    canaries: int
    runs: int
    included: int
    choices: list[GuessChoice]
    level: float
    """Each choice is tested at (1 - confidence) / len(choices) (Bonferroni)."""
    confidence: float
    epsilon_lower_bound: float
    """Steinke-Nasr-Jagielski bound at `confidence` (any mechanism): information, not the verdict."""
    reachable_epsilon: float
    """The same bound had every guess been right."""
    noiseless_would_fail: bool
    """Whether a run with no noise at all, of this size, is expected to fail: the audit's power."""
    accounted_epsilon: float
    """What the accountant says the run spent (infinite without noise)."""
    accountant: str
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    rounds: int
    clipping_norm: float
    canary_draws: int
    """Times an included canary was drawn into a batch, over all steps and runs."""
    curve: str = field(default="Poisson-subsampled Gaussian composed over the steps (dp_accounting PLD)")

    @property
    def passed(self) -> bool:
        """False when some choice got more guesses right than the recorded mechanism allows."""
        return not any(c.rejects for c in self.choices)

    @property
    def decisive(self) -> GuessChoice:
        """The choice that rejects by the widest margin, or else the one closest to rejecting."""
        return max(self.choices, key=lambda c: (c.correct - c.allowed, c.guesses))

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        accounted = self.accounted_epsilon
        return asdict(self) | {"canary_kind": "dirac-gradient", "passed": self.passed,
                               "accounted_epsilon": accounted if math.isfinite(accounted) else "inf"}


def canary_settings(
    federation: FederationPolicy, institution: InstitutionPolicy, train_records: int, rounds: int | None = None
) -> tuple[RoundSpend, int]:
    """The spend per round and the number of rounds the institution's agent would plan, from scratch.

    Same planning as the agent (`plan_participation` on an empty history). Raises PlanError if the
    budget cannot be met.
    """
    plan = plan_participation(federation, institution, train_records, rounds=rounds)
    return plan.spend, plan.rounds


def guess_choices(m: int) -> list[tuple[int, int]]:
    """The (guess_in, guess_out) choices tried on `m` canaries, fixed before any score is seen."""
    choices = {(max(1, round(f * m)), 0) for f in IN_FRACTIONS}
    choices |= {(max(1, min(m // 2, round(f * m))),) * 2 for f in BOTH_FRACTIONS if m >= 2}
    return sorted(choices)


def noiseless_would_fail(curve: TradeOffCurve, m: int, draw_probability: float, level: float) -> bool:
    """Whether the outcome a run without noise is expected to give fails the test.

    Without noise every included canary that was drawn at least once (probability
    `draw_probability`) stands out, so each "in"-only choice of at most 95% of the expected
    m/2 x `draw_probability` such canaries is all right.
    """
    reachable = 0.95 * m / 2 * draw_probability
    return any(not consistent(curve, m, k, k, level) for k, out in guess_choices(m) if out == 0 and k <= reachable)


def canaries_for_power(curve: TradeOffCurve, m: int, draw_probability: float, level: float) -> int | None:
    """The fewest canaries (m doubled, at most POWER_CANARIES_LIMIT) with which a run without
    noise is expected to fail; None if no such number: more canaries do not help."""
    while m <= POWER_CANARIES_LIMIT:
        if noiseless_would_fail(curve, m, draw_probability, level):
            return m
        m *= 2
    return None


def run_canary_audit(
    model: nn.Module,
    train: TensorDataset,
    federation: FederationPolicy,
    institution: InstitutionPolicy,
    spend: RoundSpend,
    rounds: int = 1,
    canaries: int = DEFAULT_CANARIES,
    seed: int = 0,
    confidence: float = 0.95,
    on_step: Callable[[int, int], None] | None = None,
) -> CanaryAudit:
    """Add `canaries` Dirac canary gradients (each included with probability 1/2), train `rounds`
    rounds of `spend` through `train_round` on `model` (restored afterwards), and test the guesses
    against the curve of the mechanism the ledger would record for them.

    `train` is a TensorDataset `(input_ids, attention_mask, labels)`. A run holds at most one
    canary per trainable coordinate; beyond that the canaries are split evenly over the fewest
    runs that hold them. Canary coordinates, inclusion and the canaries' own draws are seeded from
    `seed`; the training's sampling and noise come from the OS, as in real rounds. Raises
    TrainingError from the round and ValueError for `canaries` < 1. `on_step(done, total)` is
    called after every DP step, counted over all rounds and runs.
    """
    if not isinstance(train, TensorDataset):
        raise TypeError("train must be a TensorDataset (input_ids, attention_mask, labels), as platform.data makes")
    if canaries < 1:
        raise ValueError(f"need at least one canary, got {canaries}")
    settings = DPSettings.from_policies(federation, institution, spend)
    privacy = federation.privacy
    generator = torch.Generator().manual_seed(seed)
    params = list(trainable_parameters(model).values())
    probe = torch.randperm(len(train), generator=generator)[:PROBE_RECORDS]
    pull = data_pull(model, TensorDataset(*(t[probe] for t in train.tensors)), federation.model.task,
                     settings.clipping_norm)
    runs = math.ceil(canaries / len(pull))
    sizes = [canaries // runs + (1 if i < canaries % runs else 0) for i in range(runs)]
    total_steps = runs * rounds * spend.steps
    scores, truth, draws = [], [], 0
    done = 0

    def step_done(injector: CanaryInjector) -> Callable[[int, int], None]:
        def hook(step: int, steps: int) -> None:
            nonlocal done
            injector.on_step(step, steps)
            done += 1
            if on_step is not None:
                on_step(done, total_steps)
        return hook

    start = trainable_state(model)
    try:
        for size in sizes:
            chosen = choose_canaries(pull, size, generator)
            injector = CanaryInjector(chosen, params, settings.sample_rate, settings.clipping_norm,
                                      expected_batch_size=settings.sample_rate * len(train), generator=generator)
            for _ in range(rounds):
                # Looked up at call time, as `LocalModel.train` does: whatever a real round runs, this runs.
                training.train_round(model, train, federation, institution, spend, on_step=step_done(injector),
                                     per_sample_hook=injector.per_sample_hook)
            load_trainable_state(model, start)  # each run starts from the institution's adapter
            scores.append(likelihood_ratio_scores(injector.observations(), spend.noise_multiplier,
                                                  spend.sample_rate))
            truth.append(chosen.included)
            draws += int(injector.draws.sum())
    finally:
        load_trainable_state(model, start)  # the audit must leave the institution's adapter untouched
    history = [spend.as_tuple()] * rounds
    return judge(torch.cat(scores).numpy(), torch.cat(truth).numpy(), history, privacy.delta,
                 privacy.accountant, confidence, runs=runs, clipping_norm=settings.clipping_norm,
                 canary_draws=draws)


def judge(scores: np.ndarray, included: np.ndarray, history: list[tuple[float, float, int]], delta: float,
          accountant: str, confidence: float = 0.95, runs: int = 1, clipping_norm: float = 1.0,
          canary_draws: int = 0) -> CanaryAudit:
    """Test the guesses that `scores` (higher: more likely in) give against `history`'s curve.

    `included` is the truth, one bool per canary. Pure statistics: the training is in
    `run_canary_audit`. Raises ValueError for mismatched lengths or confidence outside (0, 1).
    """
    m = len(included)
    if m == 0 or len(scores) != m:
        raise ValueError(f"need one score per canary, got {len(scores)} scores for {m} canaries")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sign = np.where(np.asarray(included, dtype=bool), 1, -1)
    curve = mechanism_curve(history)
    options = guess_choices(m)
    level = (1 - confidence) / len(options)
    choices, snj, snj_reach = [], 0.0, 0.0
    for guess_in, guess_out in options:
        right = int(np.sum(guess_membership(scores, guess_in, guess_out) == sign))
        r = guess_in + guess_out
        choices.append(GuessChoice(guess_in, guess_out, right, most_consistent(curve, m, r, level)))
        snj = max(snj, epsilon_lower_bound(m, r, right, delta, 1 - level))
        snj_reach = max(snj_reach, epsilon_lower_bound(m, r, r, delta, 1 - level))
    steps = sum(n for _, _, n in history)
    sigma, rate, per_round = history[0] if history else (0.0, 1.0, 0)
    never_drawn = math.prod((1 - q) ** n for _, q, n in history)
    return CanaryAudit(
        canaries=m, runs=runs, included=int(np.sum(sign == 1)), choices=choices, level=level,
        confidence=confidence, epsilon_lower_bound=snj, reachable_epsilon=snj_reach,
        noiseless_would_fail=noiseless_would_fail(curve, m, 1 - never_drawn, level),
        accounted_epsilon=accounted_epsilon_of(history, delta, accountant) if steps else 0.0,
        accountant=accountant, delta=delta, noise_multiplier=sigma, sample_rate=rate, steps=per_round,
        rounds=len(history), clipping_norm=clipping_norm, canary_draws=canary_draws,
    )

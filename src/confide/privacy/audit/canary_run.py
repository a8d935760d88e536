"""`confide audit canaries`: an empirical lower bound on epsilon from one DP training run.

The auditor adds m white-box canaries (Dirac canary gradients, `canary_gradients`), each
included with probability 1/2, trains the round(s) exactly as configured with the institution's
own DP-SGD code (`confide.privacy.run_dp_round`: same Poisson sampling, clipping, noise and
normalisation), scores each canary from the privatized gradients the run releases, and turns the
guesses into two lower bounds on epsilon at 95% confidence (`canary_bound`): Steinke, Nasr and
Jagielski's (valid for any mechanism; the verdict rests on it) and Mahloujifar, Melis and
Chaudhuri's f-DP bound for the Gaussian trade-off curve (tighter). Next to each: the highest bound
this many canaries could reach with every guess right, so a reader sees the audit's power.

A lower bound above the accounted epsilon means the training leaks more than the accountant says
(e.g. the noise is not drawn as configured): the audit fails.

The model and data come in as arguments: building them from a federation file is the platform's
job (privacy does not import platform); `canary_settings` derives the DP settings as the agent would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy import DPSettings, run_dp_round
from confide.privacy.accounting import epsilon as accounted_epsilon_of
from confide.privacy.audit.canary_bound import CanaryBound, bound_from_scores
from confide.privacy.audit.canary_gradients import CanaryInjector, choose_canaries, data_pull
from confide.privacy.budget import plan_participation
from confide.privacy.trainable import load_trainable_state, trainable_parameters, trainable_state

DEFAULT_CANARIES = 5000
"""Capped at the number of trainable coordinates (one Dirac canary each)."""
PROBE_RECORDS = 64
"""Records whose clipped gradients pick the canaries' coordinates (where the data pulls least)."""


@dataclass(frozen=True)
class CanaryAudit:
    """The empirical audit's outcome next to the accounted epsilon."""

    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    """Steinke-Nasr-Jagielski bound at `confidence`: the verdict compares this one."""
    reachable_epsilon: float
    """The same bound had every guess been right: the most this audit can show."""
    fdp_mu_lower_bound: float
    fdp_epsilon_lower_bound: float
    """Mahloujifar-Melis-Chaudhuri bound (Gaussian trade-off), as epsilon of mu-GDP at `delta`."""
    fdp_reachable_epsilon: float
    confidence: float
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
    """Times an included canary was drawn into a batch, over all steps (about q x steps x included)."""

    @property
    def passed(self) -> bool:
        """False when the lower bound exceeds the accounted epsilon: the accounting is wrong somewhere."""
        return self.epsilon_lower_bound <= self.accounted_epsilon

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        accounted = self.accounted_epsilon
        return asdict(self) | {"canary_kind": "dirac-gradient", "passed": self.passed,
                               "accounted_epsilon": accounted if math.isfinite(accounted) else "inf"}


def canary_settings(
    federation: FederationPolicy, institution: InstitutionPolicy, train_records: int, rounds: int | None = None
) -> tuple[DPSettings, int]:
    """The DP settings and number of rounds the institution's agent would train with, from scratch.

    Same planning as the agent (`plan_participation` on an empty history). Raises PlanError if the
    budget cannot be met.
    """
    plan = plan_participation(federation, institution, train_records, rounds=rounds)
    return DPSettings.from_policies(federation, institution, plan.spend), plan.rounds


def run_canary_audit(
    model: nn.Module,
    train: TensorDataset,
    task: str,
    settings: DPSettings,
    rounds: int = 1,
    canaries: int = DEFAULT_CANARIES,
    delta: float = 1e-5,
    accountant: str = "prv",
    seed: int = 0,
    confidence: float = 0.95,
    on_step: Callable[[int, int], None] | None = None,
) -> CanaryAudit:
    """Add `canaries` Dirac canary gradients (each included with probability 1/2), train `rounds`
    DP rounds with `settings` on `model` (restored afterwards), and bound epsilon from below.

    `train` is a TensorDataset `(input_ids, attention_mask, labels)`. At most one canary per
    trainable coordinate: `canaries` is capped at the number of trainable parameters (the result's
    `canaries` says how many were used). The accounted epsilon is `rounds` x `settings` by
    `accountant` at `delta`. Raises TrainingError from the DP round. Canaries, their inclusion,
    sampling and noise are seeded from `seed` so an audit can be repeated; the scores never see the
    noise, so the bound is as valid as with fresh randomness. `on_step(done, total)` is called
    after every DP step, counted over all rounds.
    """
    if not isinstance(train, TensorDataset):
        raise TypeError("train must be a TensorDataset (input_ids, attention_mask, labels), as platform.data makes")
    generator = torch.Generator().manual_seed(seed)
    params = list(trainable_parameters(model).values())
    probe = torch.randperm(len(train), generator=generator)[:PROBE_RECORDS]
    pull = data_pull(model, TensorDataset(*(t[probe] for t in train.tensors)), task, settings.clipping_norm)
    chosen = choose_canaries(pull, min(canaries, len(pull)), generator)
    injector = CanaryInjector(chosen, params, settings.sample_rate, settings.clipping_norm,
                              expected_batch_size=settings.sample_rate * len(train), generator=generator)
    total = rounds * settings.steps

    def step_done(done: int, steps: int) -> None:
        injector.on_step(done, steps)
        if on_step is not None:
            on_step(injector.steps, total)

    start = trainable_state(model)
    try:
        for index in range(rounds):
            run_dp_round(model, train, task, settings, seed=seed + 2 * index + 1,
                         on_step=step_done, per_sample_hook=injector.per_sample_hook)
    finally:
        load_trainable_state(model, start)  # the audit must leave the institution's adapter untouched
    bound: CanaryBound = bound_from_scores(injector.scores().tolist(), chosen.included.tolist(), delta, confidence)
    history = [(settings.noise_multiplier, settings.sample_rate, settings.steps)] * rounds
    return CanaryAudit(
        canaries=bound.canaries, included=bound.included, guesses=bound.best.guesses, correct=bound.best.correct,
        epsilon_lower_bound=bound.epsilon_lower_bound, reachable_epsilon=bound.reachable_epsilon,
        fdp_mu_lower_bound=bound.fdp_mu_lower_bound, fdp_epsilon_lower_bound=bound.fdp_epsilon_lower_bound,
        fdp_reachable_epsilon=bound.fdp_reachable_epsilon, confidence=confidence,
        accounted_epsilon=accounted_epsilon_of(history, delta, accountant), accountant=accountant, delta=delta,
        noise_multiplier=settings.noise_multiplier, sample_rate=settings.sample_rate, steps=settings.steps,
        rounds=rounds, clipping_norm=settings.clipping_norm, canary_draws=int(injector.draws.sum()),
    )

"""`confide audit canaries`: an empirical lower bound on epsilon from one DP training run.

The auditor adds m random canary records to the institution's training set, each with probability
1/2, trains the round(s) exactly as configured with the institution's own DP-SGD code
(`confide.privacy.run_dp_round`), scores every canary's membership from the trained
adapter, and turns the guesses into a lower bound at 95% confidence (`canary_bound`). A lower
bound above the accounted epsilon means the training leaks more than the accountant says: a bug.

Canaries are random token sequences (random class for classification; the sequence itself for
causal LM): far from any real record, so whatever the model learns about one is about that one.
The membership score is white-box gradient regression. DP-SGD adds each sampled record's clipped
gradient to the update, so to first order the adapter's total update is a sum of descent
directions (taken at the starting weights) of the records it trained on, plus noise. Regressing
the update on the descent directions of every canary and every training record gives each canary
a coefficient: about (times sampled) x lr / batch for an included one, about 0 for one left out.
Plain cosine alignment is not enough: a small adapter's gradients span few directions, and the
classifier head's gradients are orders of magnitude larger than the LoRA ones, so each parameter
tensor is rescaled to unit gradient size before the (ridge) regression. The attack is strongest
with SGD; Adam rescales coordinates by their history, which the first-order model ignores, so the
bound is weaker (still valid: any scoring gives a valid lower bound, only a looser one).

The model and data come in as arguments: building them from a federation file is the platform's
job (privacy does not import platform); `canary_settings` derives the DP settings as the agent would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy import DPSettings, run_dp_round
from confide.privacy.accounting import epsilon as accounted_epsilon_of
from confide.privacy.audit.canary_bound import CanaryBound, bound_from_scores
from confide.privacy.budget import plan_participation
from confide.privacy.objective import per_example_loss
from confide.privacy.trainable import load_trainable_state, trainable_parameters, trainable_state


@dataclass(frozen=True)
class CanaryAudit:
    """The empirical audit's outcome next to the accounted epsilon."""

    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
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

    @property
    def passed(self) -> bool:
        """False when the lower bound exceeds the accounted epsilon: the accounting is wrong somewhere."""
        return self.epsilon_lower_bound <= self.accounted_epsilon

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        accounted = self.accounted_epsilon
        return asdict(self) | {"passed": self.passed,
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


def make_canaries(
    like: TensorDataset, model: nn.Module, task: str, count: int, generator: torch.Generator
) -> TensorDataset:
    """`count` random records shaped like `like`'s `(input_ids, attention_mask, labels)`.

    Tokens are drawn from the upper 90% of the vocabulary (low ids are special tokens in common
    tokenizers); every position is real (mask 1).
    """
    ids, _, labels = like.tensors
    length = ids.shape[1]
    vocab = model.get_input_embeddings().num_embeddings
    tokens = torch.randint(vocab // 10, vocab, (count, length), generator=generator)
    mask = torch.ones_like(tokens)
    if task == "sequence_classification":
        classes = int(getattr(model.config, "num_labels", 0) or int(labels.max()) + 1)
        canary_labels = torch.randint(0, classes, (count,), generator=generator)
    else:
        canary_labels = tokens.clone()
    return TensorDataset(tokens, mask, canary_labels.to(labels.dtype))


def _descent_directions(model: nn.Module, records: TensorDataset, task: str) -> torch.Tensor:
    """Each record's negative loss gradient over the trainable parameters, `[n, P]` (flattened, sorted names)."""
    params = list(trainable_parameters(model).values())
    device = params[0].device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(len(records)):
            batch = tuple(t[i: i + 1].to(device) for t in records.tensors)
            losses, _ = per_example_loss(model, batch, task)
            grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
            rows.append(-torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                                    for g, p in zip(grads, params)]))
    finally:
        model.train(was_training)
    return torch.stack(rows) if rows else torch.zeros((0, sum(p.numel() for p in params)))


def membership_scores(
    canary_directions: torch.Tensor,
    data_directions: torch.Tensor,
    update: torch.Tensor,
    block_sizes: list[int],
    ridge: float = 1e-3,
) -> torch.Tensor:
    """Each canary's coefficient when the update is regressed on all descent directions: high = trained on.

    Columns are grouped in blocks (one per parameter tensor, `block_sizes` in order); each block is
    scaled so the canaries' directions have unit mean norm in it, so that no tensor drowns the
    others. `ridge` is relative to the mean squared norm (the system is underdetermined when there
    are more records than parameters).
    """
    m = len(canary_directions)
    design = torch.cat([canary_directions, data_directions]).double()
    scale = torch.cat([
        torch.full((size,), 1.0 / max(float(canary_directions[:, start:start + size].norm(dim=1).mean()), 1e-30),
                   dtype=torch.float64)
        for start, size in zip(_offsets(block_sizes), block_sizes)
    ])
    design, target = design * scale, update.double() * scale
    gram = design @ design.T
    gram += ridge * float(gram.diagonal().mean()) * torch.eye(len(design), dtype=torch.float64)
    return torch.linalg.solve(gram, design @ target)[:m].float()


def _offsets(sizes: list[int]) -> list[int]:
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += size
    return offsets


def run_canary_audit(
    model: nn.Module,
    train: TensorDataset,
    task: str,
    settings: DPSettings,
    rounds: int = 1,
    canaries: int = 200,
    delta: float = 1e-5,
    accountant: str = "prv",
    seed: int = 0,
    confidence: float = 0.95,
    max_data_records: int = 1000,
) -> CanaryAudit:
    """Insert `canaries` random records (each with probability 1/2), train `rounds` DP rounds with
    `settings` on `model` (restored afterwards), and bound epsilon from below at `confidence`.

    `train` is a TensorDataset `(input_ids, attention_mask, labels)`. The accounted epsilon is
    `rounds` x `settings` by `accountant` at `delta`. Up to `max_data_records` training records
    (a random subset) enter the regression as known contributors. Raises TrainingError from the
    DP round. Sampling and noise are seeded from `seed` so an audit can be repeated; the scoring
    never sees the noise, so the bound is as valid as with fresh randomness.
    """
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(train, TensorDataset):
        raise TypeError("train must be a TensorDataset (input_ids, attention_mask, labels), as platform.data makes")
    base = train
    canary_set = make_canaries(base, model, task, canaries, generator)
    included = torch.rand(canaries, generator=generator) < 0.5
    members = TensorDataset(*(t[included] for t in canary_set.tensors))
    nuisance = torch.randperm(len(base), generator=generator)[:max_data_records]
    start = trainable_state(model)
    directions = _descent_directions(model, canary_set, task)
    data_directions = _descent_directions(model, TensorDataset(*(t[nuisance] for t in base.tensors)), task)
    try:
        for index in range(rounds):
            run_dp_round(model, ConcatDataset([base, members]), task, settings, seed=seed + 2 * index + 1)
        after = trainable_state(model)
    finally:
        load_trainable_state(model, start)  # the audit must leave the institution's adapter untouched
    update = torch.cat([(after[n] - start[n]).reshape(-1) for n in sorted(start)])
    sizes = [start[n].numel() for n in sorted(start)]
    scores = membership_scores(directions, data_directions, update, sizes)
    bound: CanaryBound = bound_from_scores(scores.tolist(), included.tolist(), delta, confidence)
    history = [(settings.noise_multiplier, settings.sample_rate, settings.steps)] * rounds
    return CanaryAudit(
        canaries=canaries, included=bound.included, guesses=bound.best.guesses, correct=bound.best.correct,
        epsilon_lower_bound=bound.epsilon_lower_bound, confidence=confidence,
        accounted_epsilon=accounted_epsilon_of(history, delta, accountant), accountant=accountant, delta=delta,
        noise_multiplier=settings.noise_multiplier, sample_rate=settings.sample_rate, steps=settings.steps,
        rounds=rounds, clipping_norm=settings.clipping_norm,
    )

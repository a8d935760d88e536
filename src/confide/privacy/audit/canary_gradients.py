"""Dirac canaries in gradient space, sent through the institution's own DP-SGD code.

A canary is a record whose per-sample gradient is `clipping_norm` times one coordinate axis of
the trainable parameters (a Dirac canary; Nasr et al., "Tight Auditing of Differentially Private
Machine Learning", 2023; Steinke, Nasr, Jagielski 2023, section 6). Each canary gets its own
coordinate, so canaries never interfere with each other, and the coordinates are the ones where
the institution's own records pull least (smallest mean clipped gradient at the starting
weights), so the data interferes as little as it can. Choosing coordinates from the data is
allowed: the choice does not depend on which canaries are included.

An included canary is a record of the training set like any other: at every DP step it is drawn
with the round's sample rate, and when drawn its gradient joins the batch's per-sample gradients
before Opacus clips, sums and noises them (`train_round(per_sample_hook=...)`, the function
the agent's rounds call). So the noise,
the clipping, the normalisation by the expected batch and the accounting are exactly those of
production training; only the extra rows are the audit's. A left-out canary is never drawn.

The auditor sees what DP-SGD releases: the privatized gradient of every step (the accountant
bounds the privacy of that whole sequence, so any function of it is a valid attack). A
canary's observation at a step is its coordinate of that step's privatized gradient, in units of
one canary gradient: 1 when it was drawn, 0 when not, plus noise of standard deviation
noise_multiplier and the data's pull on that coordinate. Reading the steps makes the audit
independent of the optimizer (Adam rescales the update). `canary_run` turns a canary's
observations into its score (`likelihood_ratio_scores`); `scores()` here is their plain sum (for
SGD, the final update's projection on the canary direction, up to -lr / expected batch).

Canaries live only in this separate audit run: it starts from the institution's adapter,
restores it afterwards, and nothing from it is uploaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from confide.privacy.objective import per_example_loss
from confide.privacy.trainable import trainable_parameters


@dataclass(frozen=True)
class DiracCanaries:
    """m canaries: each one's coordinate in the flattened trainable vector, and whether it is included."""

    coordinates: torch.Tensor
    """long [m]: flat index into the trainable parameters, concatenated in `trainable_parameters` order."""
    included: torch.Tensor
    """bool [m]: drawn with probability 1/2 each, independently of everything else."""


def data_pull(model: nn.Module, records: TensorDataset, task: str, clipping_norm: float) -> torch.Tensor:
    """Mean absolute clipped per-record gradient per trainable coordinate, at the current weights, `[P]`.

    Clipped as DP-SGD clips (whole-record norm at most `clipping_norm`).
    """
    params = list(trainable_parameters(model).values())
    device = params[0].device
    was_training = model.training
    model.eval()
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    try:
        for i in range(len(records)):
            batch = tuple(t[i: i + 1].to(device) for t in records.tensors)
            losses, _ = per_example_loss(model, batch, task)
            grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double().cpu()
                              for g, p in zip(grads, params)])
            total += flat.abs() * min(1.0, clipping_norm / max(float(flat.norm()), 1e-30))
    finally:
        model.train(was_training)
    return total / max(len(records), 1)


def choose_canaries(pull: torch.Tensor, count: int, generator: torch.Generator) -> DiracCanaries:
    """`count` coordinates with the smallest `pull` (ties broken at random), each included with p=1/2.

    Raises ValueError if `count` is not in [1, number of coordinates].
    """
    if not 1 <= count <= len(pull):
        raise ValueError(f"need 1 <= canaries <= {len(pull)} (one trainable coordinate each), got {count}")
    jitter = torch.randperm(len(pull), generator=generator)
    order = sorted(range(len(pull)), key=lambda i: (float(pull[i]), int(jitter[i])))
    coordinates = torch.tensor(order[:count], dtype=torch.long)
    included = torch.rand(count, generator=generator) < 0.5
    return DiracCanaries(coordinates=coordinates, included=included)


class CanaryInjector:
    """The two callbacks of one audit run: add the drawn canaries' gradients, read each step's release.

    `per_sample_hook` goes to `train_round(per_sample_hook=...)` and `on_step` to its `on_step`.
    After the run, `scores()` is each canary's summed observation (units of one canary gradient).
    """

    def __init__(self, canaries: DiracCanaries, params: list[nn.Parameter], sample_rate: float,
                 clipping_norm: float, expected_batch_size: float, generator: torch.Generator):
        self.canaries = canaries
        self._params = params
        self._sample_rate = sample_rate
        self._clipping_norm = clipping_norm
        self._scale = expected_batch_size / clipping_norm  # privatized mean gradient -> canary units
        self._generator = generator
        self._pending = True  # the next physical batch is the first of a DP step
        self._observed: list[torch.Tensor] = []
        self.draws = torch.zeros(len(canaries.coordinates), dtype=torch.long)
        sizes = [p.numel() for p in params]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def per_sample_hook(self, params: list[nn.Parameter]) -> None:
        if not self._pending:
            return  # later physical batches of the same step: the canaries are already in
        self._pending = False
        drawn = self.canaries.included & (torch.rand(len(self.draws), generator=self._generator) < self._sample_rate)
        self.draws += drawn.long()
        coordinates = self.canaries.coordinates[drawn]
        rows = len(coordinates)
        for param, offset in zip(params, self._offsets):
            extra = torch.zeros((rows, param.numel()), dtype=param.dtype, device=param.device)
            mine = (coordinates >= offset) & (coordinates < offset + param.numel())
            rows_at = torch.nonzero(mine).squeeze(1).to(param.device)
            extra[rows_at, (coordinates[mine] - offset).to(param.device)] = self._clipping_norm
            extra = extra.reshape(rows, *param.shape)
            samples = param.grad_sample
            if isinstance(samples, list):
                samples.append(extra)
            else:
                param.grad_sample = torch.cat([samples, extra])

    def on_step(self, _done: int, _total: int) -> None:
        # Called by Opacus' step hook: p.grad now holds the noised, normalised gradient of the step.
        flat = torch.cat([p.grad.reshape(-1).double().cpu() for p in self._params])
        self._observed.append(flat[self.canaries.coordinates] * self._scale)
        self._pending = True

    @property
    def steps(self) -> int:
        return len(self._observed)

    def observations(self) -> torch.Tensor:
        """Each step's observation of each canary, `[steps, m]` float64 (units of one canary gradient)."""
        if not self._observed:
            return torch.zeros((0, len(self.draws)), dtype=torch.float64)
        return torch.stack(self._observed)

    def scores(self) -> torch.Tensor:
        """Summed observation per canary, `[m]` float64 (0 before any step)."""
        return self.observations().sum(dim=0)


def likelihood_ratio_scores(observations: torch.Tensor, noise_multiplier: float, sample_rate: float) -> torch.Tensor:
    """Each canary's log-likelihood ratio of "included" to "left out", `[m]` float64.

    Under the mechanism the ledger records, an included canary's observation at a step is
    N(1, sigma^2) with probability q (drawn) and N(0, sigma^2) otherwise; a left-out one's is
    N(0, sigma^2). The ratio per step is 1 - q + q exp((2x - 1) / (2 sigma^2)), multiplied over the
    steps: by Neyman and Pearson the most powerful score against that mechanism (the plain sum
    wastes the steps where the canary was not drawn). Without noise (sigma 0) the sum is returned.
    """
    x = observations.double()
    if noise_multiplier <= 0:
        return x.sum(dim=0)
    stay = math.log1p(-sample_rate) if sample_rate < 1 else -math.inf
    per_step = torch.logaddexp(torch.full_like(x, stay),
                               math.log(sample_rate) + (2 * x - 1) / (2 * noise_multiplier ** 2))
    return per_step.sum(dim=0)

"""One local round of DP-SGD with Opacus on the trainable adapter parameters only.

`train_round` is what an institution's agent calls (policies and the reserved spend in, the delta
out); `run_dp_round` is the same with explicit settings and a detailed result; `evaluate` is
re-exported from `confide.privacy.objective`.

Opacus pieces are assembled by hand rather than through `PrivacyEngine.make_private`, for two
reasons. The sample rate must be exactly the one the ledger records (`make_private` derives it as
1 / len(loader), which differs from expected_batch / records), and a round must run exactly
`steps` logical batches. Accounting is not Opacus' business here: the ledger holds it.

The model is wrapped in a GradSampleModule (hooks mode) only for the round and unwrapped in a
`finally`, so the same model goes through any number of rounds and stays an ordinary module.

Where the randomness comes from (`_fresh_generators`). Opacus' `PrivacyEngine(secure_mode=True)`
needs `torchcsprng`, which has no release for current torch (`pip download torchcsprng`: no
matching distribution). What it is for has two parts, and both are done here without it:
- the floating-point attack (Jin et al. 2021, Holohan & Braghin 2021, arXiv 2107.10138): the low
  bits of one floating-point Gaussian sample reveal the generator's output, and a released value
  near it. `DPOptimizer(secure_mode=True)` (which needs no torchcsprng) draws each noise value as
  the sum of four Gaussians halved, Holohan and Braghin's fix (attack complexity 2^159 for doubles).
- unpredictable draws: torch's CPU generator is a Mersenne Twister, not a CSPRNG, and a seed known
  to anyone gives the whole noise away. Both generators (Poisson sampling, noise) are seeded from
  `os.urandom` (64 bits, the most `manual_seed` takes) and reseeded from it after every step, so one
  step's draws say nothing about the next, and no seed exists that could be known beforehand.
What it does not give: a generator whose internal outputs are computationally indistinguishable
from random within a step. Those outputs are never released (only the noised sum leaves, encrypted
and added to others), so recovering them means inverting the noise first. `train_round`, what real
rounds run, takes no seed, and neither does the canary audit, which trains through it;
`run_dp_round(seed=...)` is for tests and benchmarks.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from confide.policies.federation import ADAMW_BETAS, ADAMW_WEIGHT_DECAY, FederationPolicy
from confide.policies.institution import InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.errors import TrainingError
from confide.privacy.objective import batch_loss, check_task, evaluate, trim_padding
from confide.privacy.trainable import (
    State,
    load_trainable_state,
    lora_matrix,
    state_difference,
    trainable_parameters,
    trainable_state,
)

__all__ = ["DPSettings", "RoundResult", "evaluate", "run_dp_round", "train_round"]

StepCallback = Callable[[int, int], None]
"""Called after every DP step with (steps done, steps in the round)."""

PerSampleHook = Callable[[list[nn.Parameter]], None]
"""Called with the trainable parameters once their per-sample gradients (`param.grad_sample`) are
computed for a physical batch, before Opacus clips, sums and noises them. Only the canary audit
(`confide.privacy.audit.canary_gradients`) passes one, to `train_round`, in its own separate
training run; the agent never does."""

# Attributes Opacus puts on parameters; removed after the round so nothing leaks into later rounds.
_OPACUS_PARAM_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample", "_norm_sample")


@dataclass(frozen=True)
class DPSettings:
    """Everything one DP round needs besides the model and the data."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float
    max_physical_batch_size: int
    learning_rate: float
    optimizer: str = "adamw"
    adapter_learning_rate: float | None = None
    """The LoRA matrices' learning rate (parameters named `lora_*`); None: `learning_rate`."""

    @classmethod
    def from_policies(
        cls, federation: FederationPolicy, institution: InstitutionPolicy, spend: RoundSpend
    ) -> "DPSettings":
        """The round's settings: the recorded spend, the federation's optimizer, the institution's clipping."""
        training = federation.training
        return cls(
            noise_multiplier=spend.noise_multiplier, sample_rate=spend.sample_rate, steps=spend.steps,
            clipping_norm=institution.clipping_norm, max_physical_batch_size=training.max_physical_batch_size,
            learning_rate=training.learning_rate, optimizer=training.optimizer,
            adapter_learning_rate=training.adapter_learning_rate,
        )

    @property
    def spend(self) -> RoundSpend:
        return RoundSpend(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class RoundResult:
    """What a DP round produced. Only `delta` leaves the institution (encrypted)."""

    delta: State
    """Trainable state after the round minus before, by parameter name (float32, CPU)."""
    spend: RoundSpend
    steps: int
    """Optimizer steps actually taken (always equals spend.steps)."""
    examples: int
    """Records drawn over all steps (Poisson: varies around sample_rate x records x steps)."""
    mean_loss: float
    """Mean training loss over the drawn records (computed on local data: keep it local)."""
    seconds: float


def _collate(items: list) -> object:
    # Poisson sampling can draw an empty batch; it must still cost a (noise-only) step.
    return None if not items else default_collate(items)


def _check_settings(settings: DPSettings, records: int) -> None:
    problems = []
    if not settings.noise_multiplier >= 0:
        problems.append(f"noise_multiplier must be >= 0, got {settings.noise_multiplier!r}")
    if not 0 < settings.sample_rate <= 1:
        problems.append(f"sample_rate must be in (0, 1], got {settings.sample_rate!r}")
    if settings.steps < 1:
        problems.append(f"steps must be >= 1, got {settings.steps!r}")
    if not settings.clipping_norm > 0:
        problems.append(f"clipping_norm must be > 0, got {settings.clipping_norm!r}")
    if settings.max_physical_batch_size < 1:
        problems.append("max_physical_batch_size must be >= 1")
    if settings.adapter_learning_rate is not None and not settings.adapter_learning_rate > 0:
        problems.append(f"adapter_learning_rate must be > 0, got {settings.adapter_learning_rate!r}")
    if settings.optimizer not in ("adamw", "sgd"):
        problems.append(f"optimizer must be adamw or sgd, got {settings.optimizer!r}")
    if records < 1:
        problems.append("the training set is empty")
    if problems:
        raise TrainingError("; ".join(problems))


def _make_optimizer(settings: DPSettings, params: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
    """The local optimizer; the LoRA matrices in their own group when they have their own learning rate."""
    adapter = [p for name, p in params.items() if lora_matrix(name)]
    groups = [{"params": list(params.values())}]
    if settings.adapter_learning_rate is not None and adapter:
        others = [p for name, p in params.items() if not lora_matrix(name)]
        groups = [g for g in ({"params": others}, {"params": adapter, "lr": settings.adapter_learning_rate})
                  if g["params"]]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.learning_rate)
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little")


def _generators(device: torch.device, seed: int | None) -> tuple[torch.Generator, torch.Generator]:
    """Sampling generator (CPU, where Opacus draws the Poisson mask) and noise generator (on `device`).

    Without a seed both come from the OS's randomness (and `run_dp_round` reseeds them after every
    step, see the module docstring): a real round must not be predictable.
    """
    seeds = (_os_seed(), _os_seed()) if seed is None else (seed, seed + 1)
    sampling = torch.Generator().manual_seed(seeds[0])
    noise = torch.Generator(device=device).manual_seed(seeds[1])
    return sampling, noise


def _release(wrapped: GradSampleModule | None, params: list[nn.Parameter]) -> None:
    """Remove Opacus' hooks and per-parameter attributes so the model is an ordinary module again."""
    if wrapped is not None:
        wrapped.to_standard_module()
    for param in params:
        for attr in _OPACUS_PARAM_ATTRS:
            if hasattr(param, attr):
                delattr(param, attr)
        param.grad = None


def run_dp_round(
    model: nn.Module,
    train: Dataset,
    task: str,
    settings: DPSettings,
    seed: int | None = None,
    on_step: StepCallback | None = None,
    per_sample_hook: PerSampleHook | None = None,
) -> RoundResult:
    """Train `settings.steps` DP-SGD steps on `model`'s trainable parameters and return the delta.

    Each step draws a Poisson sample of `train` at `settings.sample_rate`, splits it into physical
    batches of at most `max_physical_batch_size` (BatchMemoryManager), clips every example's
    gradient to `clipping_norm` and adds Gaussian noise of std `noise_multiplier * clipping_norm`
    to the sum (Opacus, hooks mode). The model is trained in place on whatever device it is on.
    `seed` makes sampling and noise reproducible (tests and benchmarks only; None
    draws from the OS, reseeded every step; real rounds go through `train_round`, which has no seed).
    `on_step(done, total)` is called after each DP step. `per_sample_hook` is for the canary audit
    only (see PerSampleHook), which passes it through `train_round`.

    Raises TrainingError for invalid settings, a step count that does not match the plan, or
    trainable weights that did not move (Opacus issue 820).
    """
    check_task(task)
    records = len(train)  # type: ignore[arg-type]
    _check_settings(settings, records)
    named = trainable_parameters(model)
    params = list(named.values())
    if not params:
        raise TrainingError("the model has no trainable parameters", "build it with the federation's adapter settings")
    device = params[0].device
    sampling_gen, noise_gen = _generators(device, seed)
    before = trainable_state(model)
    was_training = model.training
    steps_taken, examples, loss_sum = 0, 0, 0.0
    started = time.perf_counter()
    wrapped = None
    try:
        wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        wrapped.forbid_grad_accumulation()
        optimizer = DPOptimizer(
            _make_optimizer(settings, named),
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.clipping_norm,
            # Poisson batches vary in size; DP-SGD divides the noisy sum by the expected size.
            expected_batch_size=settings.sample_rate * records,
            loss_reduction="mean",
            generator=noise_gen,
            secure_mode=True,  # each noise value is the sum of four Gaussians halved (floating-point attack)
        )

        def count_step(_optimizer: DPOptimizer) -> None:
            nonlocal steps_taken
            steps_taken += 1
            if seed is None:  # the next step's Poisson mask and noise from fresh OS randomness
                sampling_gen.manual_seed(_os_seed())
                noise_gen.manual_seed(_os_seed())
            if on_step is not None:
                on_step(steps_taken, settings.steps)

        optimizer.attach_step_hook(count_step)
        sampler = UniformWithReplacementSampler(
            num_samples=records, sample_rate=settings.sample_rate, generator=sampling_gen, steps=settings.steps
        )
        loader = DataLoader(train, batch_sampler=sampler, collate_fn=_collate)
        model.train()
        with warnings.catch_warnings(), BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=settings.max_physical_batch_size, optimizer=optimizer
        ) as physical_batches:
            # Opacus hooks the first trainable layer, whose input (a frozen activation) needs no
            # gradient; torch warns about that on every backward, harmlessly.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for batch in physical_batches:
                if batch is None:
                    for param in params:
                        param.grad_sample = torch.zeros((0, *param.shape), device=param.device, dtype=param.dtype)
                else:
                    batch = tuple(t.to(device) for t in trim_padding(tuple(batch), task))
                    loss = batch_loss(wrapped, batch, task)
                    loss.backward()
                    examples += len(batch[0])
                    loss_sum += float(loss.detach()) * len(batch[0])
                if per_sample_hook is not None:
                    per_sample_hook(params)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    except BaseException:
        # A failed round's partial update must not linger in the model (its spend stays counted).
        _release(wrapped, params)
        wrapped = None
        load_trainable_state(model, before)
        raise
    finally:
        _release(wrapped, params)
        model.train(was_training)
    if steps_taken != settings.steps:
        raise TrainingError(f"took {steps_taken} DP steps, the ledger recorded {settings.steps}")
    delta = state_difference(trainable_state(model), before)
    if not any(bool(t.abs().sum() > 0) for t in delta.values()):
        raise TrainingError(
            "trainable weights did not move during the round (cf. Opacus issue 820)",
            "check that the optimizer holds the model's own LoRA parameters and the learning rate is > 0",
        )
    return RoundResult(
        delta=delta, spend=settings.spend, steps=steps_taken, examples=examples,
        mean_loss=loss_sum / examples if examples else float("nan"), seconds=time.perf_counter() - started,
    )


# Bound once at import: what real rounds run, whatever later replaces the module's `run_dp_round`.
_dp_round = run_dp_round


def train_round(
    model: nn.Module,
    train: Dataset,
    federation: FederationPolicy,
    institution: InstitutionPolicy,
    spend: RoundSpend,
    on_step: StepCallback | None = None,
    *,
    per_sample_hook: PerSampleHook | None = None,
) -> State:
    """Run one DP round for a reserved `spend` and return the delta (trainable state after minus before).

    The optimizer, learning rate and physical batch come from `federation.training`, the clipping
    norm from `institution`, the noise, sample rate and steps from `spend` (the ledger's spend
    entry). The model keeps the trained weights; callers that must not keep them reload the
    previous state. Sampling and noise draw from the OS's randomness, reseeded every step: there is
    no seed to give (anyone who knew it could subtract the noise). `per_sample_hook` is the canary
    audit's only (see PerSampleHook): it audits this function, the one `LocalModel.train` calls
    (platform/member/learner.py), so a bug anywhere on the real round's path shows in its verdict.
    Raises TrainingError (see `run_dp_round`).
    """
    settings = DPSettings.from_policies(federation, institution, spend)
    # `_dp_round`, not the module's `run_dp_round`: replacing that name cannot seed a real round.
    return _dp_round(model, train, federation.model.task, settings, seed=None, on_step=on_step,
                     per_sample_hook=per_sample_hook).delta

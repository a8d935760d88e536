"""Recompute a ledger's epsilons from the numbers it recorded, independently of the code that wrote it.

The auditor calls dp_accounting itself, here, not through `confide.privacy.accounting` (the agent's
accountant): it rebuilds each history from the ledger's raw numbers, merges it and composes it with
its own code, so a bug in how the agent builds, merges or composes a history shows up as a
disagreement. Two recomputations per spend entry:
- PLD: dp_accounting's privacy loss distributions, the tightest bound, against which every
  recorded epsilon is measured whatever accountant recorded it;
- the recorded accountant (PLD or RDP) rerun from scratch.

Both sides share dp_accounting itself, and the rule that sizes the PLD grid (so that honest ledgers
match to floating-point noise): a fault in either would be shared too (the library's golden values
are pinned in tests/privacy/test_accounting_golden.py; the grid only ever rounds pessimistically).
Everything is a pure function of plain numbers: a history is a list of `(noise_multiplier, sample_rate, steps)` tuples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

Step = tuple[float, float, int]
RECOMPUTED = ("pld", "rdp")


@dataclass(frozen=True)
class Tolerance:
    """How far a recorded epsilon may fall below a recomputed one before it is flagged.

    Members and the auditor run the same accountants on the same numbers, so a recorded epsilon
    matches to floating-point noise; the slack (1e-4, relative above epsilon 1) only absorbs the
    PLD grid's rounding should a library release move it. A recorded value is flagged when
    `recorded < recomputed - max(absolute, relative * recomputed)`.
    """

    absolute: float = 1e-4
    relative: float = 1e-4

    def allowed_shortfall(self, recomputed: float) -> float:
        return max(self.absolute, self.relative * recomputed)

    def is_below(self, recorded: float, recomputed: float) -> bool:
        """True if `recorded` under-reports `recomputed` beyond the tolerance."""
        if math.isinf(recomputed):
            return not math.isinf(recorded)
        return recorded < recomputed - self.allowed_shortfall(recomputed)


DEFAULT_TOLERANCE = Tolerance()


def merge_history(history: Iterable[Step]) -> tuple[Step, ...]:
    """Merge steps with equal (sigma, q), sorted: composition commutes, and the cost grows per pair."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if steps:
            key = (float(sigma), float(rate))
            merged[key] = merged.get(key, 0) + int(steps)
    return tuple(sorted((sigma, rate, steps) for (sigma, rate), steps in merged.items()))


def _validate(history: Sequence[Step], delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    for sigma, rate, steps in history:
        if not (0.0 < rate <= 1.0) or sigma < 0 or steps < 0 or math.isnan(sigma) or math.isnan(rate):
            raise ValueError(f"not a valid step (noise_multiplier, sample_rate, steps): {(sigma, rate, steps)!r}")


def _composed(history: Iterable[Step], delta: float, compose) -> float:
    merged = merge_history(history)
    _validate(merged, delta)
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    return compose(merged, float(delta))


def pld_epsilon(history: Iterable[Step], delta: float, replace_one: bool = False) -> float:
    """Epsilon at `delta` of the history by dp_accounting's PLD accountant.

    Neighbouring datasets differ by one added or removed record (what ledgers record), or, with
    `replace_one`, by one record swapped for another. Each stretch is a Poisson-subsampled
    Gaussian, self-composed `steps` times. Returns 0.0 for an empty history and infinity when a
    stretch has no noise. Raises ValueError for invalid steps.
    """
    return _composed(history, delta, lambda merged, d: _pld(merged, d, replace_one))


def rdp_epsilon(history: Iterable[Step], delta: float) -> float:
    """Epsilon at `delta` of the history by dp_accounting's RDP accountant (default orders)."""
    return _composed(history, delta, _rdp)


def recorded_accountant_epsilon(history: Iterable[Step], delta: float, accountant: str) -> float | None:
    """Epsilon by the accountant a spend names (None: not one this auditor knows)."""
    if accountant == "pld":
        return pld_epsilon(history, delta)
    if accountant == "rdp":
        return rdp_epsilon(history, delta)
    return None


def _mechanism(merged: tuple[Step, ...]) -> dp_event.DpEvent:
    """The whole history as one event (the agent composes stretch by stretch): each stretch a
    Poisson-subsampled Gaussian, `steps` times over."""
    return dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), steps)
        for sigma, rate, steps in merged])


@lru_cache(maxsize=512)
def _rdp(merged: tuple[Step, ...], delta: float) -> float:
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(RdpAccountant().compose(_mechanism(merged)).get_epsilon(delta))


# A PLD composition takes a fraction of a second; an audit asks for the same prefixes again (every
# ledger of a federation shares its rounds' parameters), and the result is a pure function of them.
@lru_cache(maxsize=512)
def _pld(merged: tuple[Step, ...], delta: float, replace_one: bool) -> float:
    # The grid: 1e-4 (dp_accounting's default) up to epsilon 1, then 1e-4 x epsilon, epsilon roughly
    # known from RDP (fast, never below the true value). A fixed grid makes absurd spends (epsilon in
    # the hundreds) take minutes; the PLD accountant rounds pessimistically, so a coarser grid only
    # raises the result, by about 1e-4 relative. Replace-one epsilons are up to twice as large.
    try:
        rough = _rdp(merged, delta)
    except (ValueError, OverflowError, ZeroDivisionError):
        rough = 1.0
    grid = (1e-4 * max(1.0, rough) if math.isfinite(rough) else 1e-2) * (2.0 if replace_one else 1.0)
    relation = NeighboringRelation.REPLACE_ONE if replace_one else NeighboringRelation.ADD_OR_REMOVE_ONE
    with np.errstate(divide="ignore", over="ignore"):
        return float(PLDAccountant(relation, value_discretization_interval=grid).compose(_mechanism(merged))
                     .get_epsilon(delta))

@dataclass(frozen=True)
class SpendParameters:
    """What one spend entry recorded: its DP-SGD parameters and its claimed cumulative epsilon."""

    seq: int
    federation: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    recorded_epsilon: float
    clipping_norm: float | None = None
    """Not needed for accounting (noise scales with it); checked against the institution policy."""

    @property
    def step(self) -> Step:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class SpendRecomputation:
    """One spend entry's parameters and its epsilons: recorded, by PLD, by the recorded accountant."""

    seq: int
    federation: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float | None
    delta: float
    recorded_epsilon: float
    """Cumulative epsilon the entry claims."""
    pld_epsilon: float
    """Cumulative epsilon by dp_accounting's PLD accountant (the tightest bound)."""
    accountant: str
    accountant_epsilon: float | None
    """Cumulative epsilon by the recorded accountant recomputed from scratch; None when the
    accountant is unknown."""
    round_pld_epsilon: float
    """This round's spend on its own, by PLD (what per-round caps limit)."""


def recompute_spends(spends: Sequence[SpendParameters]) -> list[SpendRecomputation]:
    """Cumulative epsilons after each spend (in ledger order), each at that entry's own delta.

    The per-round PLD epsilon composes every spend of the same (federation, round) seen so far, so a
    round split across several entries is still measured against the cap as one round.
    """
    results: list[SpendRecomputation] = []
    history: list[Step] = []
    by_round: dict[tuple[str, int], list[Step]] = {}
    for spend in spends:
        history.append(spend.step)
        round_history = by_round.setdefault((spend.federation, spend.round), [])
        round_history.append(spend.step)
        pld = pld_epsilon(history, spend.delta)
        accountant_eps = recorded_accountant_epsilon(history, spend.delta, spend.accountant)
        results.append(
            SpendRecomputation(
                seq=spend.seq,
                federation=spend.federation,
                round=spend.round,
                noise_multiplier=spend.noise_multiplier,
                sample_rate=spend.sample_rate,
                steps=spend.steps,
                clipping_norm=spend.clipping_norm,
                delta=spend.delta,
                recorded_epsilon=spend.recorded_epsilon,
                pld_epsilon=pld,
                accountant=spend.accountant,
                accountant_epsilon=accountant_eps,
                round_pld_epsilon=pld_epsilon(round_history, spend.delta),
            )
        )
    return results

"""Recompute a ledger's epsilons without the code that wrote them.

Two recomputations per spend entry:
- independent: dp_accounting's PLD accountant (Google), a different library and a different method
  (privacy loss distributions) from the Opacus accountants the agent records with;
- recorded accountant: Opacus RDP or PRV called directly from `opacus.accountants`, not through
  `confide.privacy.accounting`, so a bug in how the agent builds or merges its history shows up.

Everything is a pure function of plain numbers: a history is a list of
`(noise_multiplier, sample_rate, steps)` tuples, as in Opacus.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation

Step = tuple[float, float, int]


@dataclass(frozen=True)
class Tolerance:
    """How far a recorded epsilon may fall below a recomputed one before it is flagged.

    PRV and PLD agree to about 0.01 (1-2%); both are upper bounds computed on different grids.
    A recorded value is flagged when `recorded < recomputed - max(absolute, relative * recomputed)`.
    """

    absolute: float = 0.01
    relative: float = 0.02

    def allowed_shortfall(self, recomputed: float) -> float:
        return max(self.absolute, self.relative * recomputed)

    def is_below(self, recorded: float, recomputed: float) -> bool:
        """True if `recorded` under-reports `recomputed` beyond the tolerance."""
        if math.isinf(recomputed):
            return not math.isinf(recorded)
        return recorded < recomputed - self.allowed_shortfall(recomputed)


DEFAULT_TOLERANCE = Tolerance()

RECOMPUTE_LIMIT = 100.0
"""Above this cumulative epsilon (by PLD; the largest budget a policy may declare) the recorded
accountant is not rerun: Opacus PRV can take minutes there, and the budget check fails anyway."""


def merge_history(history: Iterable[Step]) -> list[Step]:
    """Merge steps with equal (sigma, q): composition commutes, and accountants' cost grows per pair."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if steps:
            key = (float(sigma), float(rate))
            merged[key] = merged.get(key, 0) + int(steps)
    return [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]


def _validate(history: Sequence[Step], delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    for sigma, rate, steps in history:
        if not (0.0 < rate <= 1.0) or sigma < 0 or steps < 0 or math.isnan(sigma) or math.isnan(rate):
            raise ValueError(f"not a valid step (noise_multiplier, sample_rate, steps): {(sigma, rate, steps)!r}")


def pld_epsilon(history: Iterable[Step], delta: float, replace_one: bool = False) -> float:
    """Epsilon at `delta` of the history by dp_accounting's PLD accountant.

    Neighbouring datasets differ by one added or removed record (what ledgers record), or, with
    `replace_one`, by one record swapped for another: the count stays the same, and the clipped sum
    can move by twice the clipping norm. Replace-one is what holds against a party that knows the
    record count. Each stretch is a Poisson-subsampled Gaussian, self-composed `steps` times.
    Returns 0.0 for an empty history and infinity when a stretch has no noise. Raises ValueError
    for invalid steps.
    """
    merged = merge_history(history)
    _validate(merged, delta)
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    grid = _pld_grid(merged, delta) * (2.0 if replace_one else 1.0)  # its epsilon is up to twice as large
    return _pld_epsilon_cached(tuple(sorted(merged)), delta, grid, replace_one)


def _pld_grid(merged: list[Step], delta: float) -> float:
    """PLD discretization interval: 1e-4 (dp_accounting's default) up to epsilon 1, then 1e-4 x epsilon.

    The PLD's support grows with epsilon, and a fixed grid makes absurd spends (epsilon in the
    hundreds) take minutes. The PLD accountant rounds pessimistically, so a coarser grid only
    raises the result, here by about 1e-4 relative: far inside the audit's tolerance. The rough
    epsilon that sets the grid comes from RDP, which is fast and never below the true value.
    """
    from opacus.accountants import RDPAccountant

    rough = RDPAccountant()
    rough.history = list(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            estimate = float(rough.get_epsilon(delta))
        except (ValueError, OverflowError, ZeroDivisionError):
            estimate = 1.0
    return 1e-4 * max(1.0, estimate) if math.isfinite(estimate) else 1e-2


# A PLD composition takes about a second; an audit asks for the same prefixes again (every ledger of
# a federation shares its rounds' parameters), and the result is a pure function of its arguments.
@lru_cache(maxsize=512)
def _pld_epsilon_cached(merged: tuple[Step, ...], delta: float, grid: float, replace_one: bool = False) -> float:
    relation = NeighboringRelation.REPLACE_ONE if replace_one else NeighboringRelation.ADD_OR_REMOVE_ONE
    accountant = PLDAccountant(relation, value_discretization_interval=grid)
    for sigma, rate, steps in merged:
        event = dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma))
        accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def opacus_epsilon(history: Iterable[Step], delta: float, accountant: str) -> float:
    """Epsilon at `delta` of the history by Opacus's `accountant` ("rdp" or "prv"), called directly.

    For PRV the error is at most 0.01 or 1% of epsilon, whichever is smaller, so small epsilons are
    not swamped by the accountant's own slack. Raises ValueError for an unknown accountant or steps.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant

    merged = merge_history(history)
    _validate(merged, delta)
    if accountant not in ("rdp", "prv"):
        raise ValueError(f"unknown accountant {accountant!r}: expected 'rdp' or 'prv'")
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    if accountant == "rdp":
        rdp = RDPAccountant()
        rdp.history = list(merged)
        with warnings.catch_warnings():
            # "optimal order is the largest alpha" only says the bound is not the tightest.
            warnings.simplefilter("ignore", UserWarning)
            return float(rdp.get_epsilon(delta))
    prv = PRVAccountant()
    prv.history = list(merged)
    eps = float(prv.get_epsilon(delta, eps_error=0.01))
    if eps < 1.0:
        prv = PRVAccountant()
        prv.history = list(merged)
        eps = float(prv.get_epsilon(delta, eps_error=max(1e-4, 0.01 * eps)))
    return eps


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
    """Cumulative epsilon by dp_accounting's PLD accountant (independent)."""
    accountant: str
    accountant_epsilon: float | None
    """Cumulative epsilon by the recorded accountant recomputed from scratch; None when the
    accountant is unknown, failed, or PLD is above RECOMPUTE_LIMIT."""
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
        accountant_eps: float | None = None
        if pld <= RECOMPUTE_LIMIT:
            try:
                accountant_eps = opacus_epsilon(history, spend.delta, spend.accountant)
            except Exception:  # noqa: BLE001 - any failure (even MemoryError) is reported, not a crash
                accountant_eps = None
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

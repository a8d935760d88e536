"""Privacy accounting: epsilon of a history of Poisson-subsampled Gaussian steps.

The whole accounting state is plain data: a history is a list of `(noise_multiplier, sample_rate,
steps)` tuples, one per stretch of identical DP-SGD steps. The ledger stores exactly these numbers,
so anyone can recompute the epsilon it claims.

Both accountants come from Google's dp_accounting, which needs neither torch nor Opacus, so the
coordinator (checking a declared spend) runs without the training stack: PLD (default: privacy loss
distributions, pessimistic rounding, numerically tight) and RDP (Renyi DP, looser by 8-17%, kept
because some auditors only trust it). The auditor recomputes with its own calls to dp_accounting
(`privacy.audit.recompute`), not with this module.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

from confide.privacy.errors import AccountingError

AccountantName = Literal["pld", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("pld", "rdp")

History = list[tuple[float, float, int]]
"""Accountant history: `(noise_multiplier, sample_rate, steps)` per stretch of identical steps."""

@dataclass(frozen=True)
class RoundSpend:
    """The DP-SGD parameters of one round: what the ledger records and the accountant composes."""

    noise_multiplier: float
    """Gaussian noise std divided by the clipping norm (sigma)."""
    sample_rate: float
    """Poisson sampling probability of each record per step (q), in (0, 1]."""
    steps: int
    """Optimizer steps (logical batches) in the round."""

    def as_tuple(self) -> tuple[float, float, int]:
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def spend_history(spends: Iterable[dict]) -> History:
    """The accountant history `[(noise_multiplier, sample_rate, steps), ...]` of ledger spend entries."""
    return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in spends]


def check_accountant(name: str) -> AccountantName:
    """Return `name` if it is a supported accountant; raise AccountingError otherwise."""
    if name not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {name!r}", "use 'pld' (default) or 'rdp'")
    return name  # type: ignore[return-value]


def _checked(history: Iterable[tuple[float, float, int]]) -> History:
    """Validate every entry and merge entries with equal (sigma, q).

    Composition is commutative, so merging equal pairs anywhere in the history is exact; it keeps
    the accountants' cost proportional to distinct pairs, not rounds.
    """
    merged: dict[tuple[float, float], int] = {}
    for index, entry in enumerate(history):
        try:
            sigma, rate, steps = float(entry[0]), float(entry[1]), entry[2]
        except (TypeError, ValueError, IndexError):
            raise AccountingError(
                f"history[{index}] is not (noise_multiplier, sample_rate, steps): {entry!r}"
            ) from None
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise AccountingError(f"history[{index}]: steps must be a non-negative integer, got {steps!r}")
        if not (0.0 < rate <= 1.0) or math.isnan(rate):
            raise AccountingError(f"history[{index}]: sample_rate must be in (0, 1], got {rate!r}")
        if sigma < 0 or math.isnan(sigma):
            raise AccountingError(f"history[{index}]: noise_multiplier must be >= 0, got {sigma!r}")
        if steps:
            merged[(sigma, rate)] = merged.get((sigma, rate), 0) + steps
    return [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]


def epsilon(history: Iterable[tuple[float, float, int]], delta: float, accountant: str = "pld",
            replace_one: bool = False) -> float:
    """Epsilon (at `delta`) of composing every step in `history`.

    Neighbouring datasets differ by one added or removed record (what ledgers record), or, with
    `replace_one` (PLD only), by one record swapped for another: the count stays the same and the
    clipped sum can move by twice the clipping norm, which is what holds against a party that knows
    the record count. Returns 0.0 for an empty history and infinity if any step has zero noise.
    Both accountants return upper bounds, so they never under-report. Raises AccountingError for
    an unknown accountant, a delta outside (0, 1) or malformed history entries.
    """
    name = check_accountant(accountant)
    if replace_one and name != "pld":
        raise AccountingError("replace-one epsilon is computed by the PLD accountant only")
    if not (0.0 < delta < 1.0):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")
    merged = _checked(history)
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    # The same multiset of steps always gives the very same number: the key is sorted.
    key = tuple(sorted(merged))
    if name == "rdp":
        return _rdp_epsilon(key, float(delta))
    return _pld_epsilon(key, float(delta), _pld_grid(key, float(delta)) * (2.0 if replace_one else 1.0),
                        replace_one)


def _events(merged: tuple[tuple[float, float, int], ...]) -> Iterable[dp_event.DpEvent]:
    for sigma, rate, steps in merged:
        yield dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), steps)


class _QuietRdp(logging.Filter):
    """dp_accounting (through absl) logs each fractional order whose series does not converge and leaves it out.

    The bound over the remaining orders is still valid; the lines would only alarm an operator.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietRdp())


# Pure in their arguments, and an agent asks for the same history repeatedly (epsilon after round r
# is epsilon before round r + 1; calibration bisects over sigma), so results are memoised.
@functools.lru_cache(maxsize=512)
def _rdp_epsilon(merged: tuple[tuple[float, float, int], ...], delta: float) -> float:
    accountant = RdpAccountant()
    for event in _events(merged):
        accountant.compose(event)
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(accountant.get_epsilon(delta))


def _pld_grid(merged: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """PLD discretization interval: 1e-4 (dp_accounting's default) up to epsilon 1, then 1e-4 x epsilon.

    The PLD's support grows with epsilon, and a fixed grid makes absurd spends (epsilon in the
    hundreds) take minutes. The PLD accountant rounds pessimistically, so a coarser grid only
    raises the result, here by about 1e-4 relative. The rough epsilon that sets the grid comes
    from RDP, which is fast and never below the true value.
    """
    try:
        rough = _rdp_epsilon(merged, delta)
    except (ValueError, OverflowError, ZeroDivisionError):
        rough = 1.0
    return 1e-4 * max(1.0, rough) if math.isfinite(rough) else 1e-2


@functools.lru_cache(maxsize=512)
def _pld_epsilon(merged: tuple[tuple[float, float, int], ...], delta: float, grid: float,
                 replace_one: bool) -> float:
    relation = NeighboringRelation.REPLACE_ONE if replace_one else NeighboringRelation.ADD_OR_REMOVE_ONE
    accountant = PLDAccountant(relation, value_discretization_interval=grid)
    for event in _events(merged):
        accountant.compose(event)
    with np.errstate(divide="ignore", over="ignore"):
        return float(accountant.get_epsilon(delta))


def round_epsilon(spend: RoundSpend, delta: float, accountant: str = "pld") -> float:
    """Epsilon of one round on its own (what per-round caps limit)."""
    return epsilon([spend.as_tuple()], delta, accountant)


def history_with(history: Iterable[tuple[float, float, int]], *spends: RoundSpend) -> History:
    """A new history: `history` followed by `spends`. The input is not modified."""
    return [tuple(h) for h in history] + [s.as_tuple() for s in spends]  # type: ignore[misc]

"""Privacy accounting: epsilon of a history of Poisson-subsampled Gaussian steps.

The whole accounting state is plain data, as in Opacus: a history is a list of
`(noise_multiplier, sample_rate, steps)` tuples, one per stretch of identical DP-SGD steps. The
ledger stores exactly these numbers, so anyone can recompute the epsilon it claims.

Two accountants from Opacus are offered: PRV (default; numerically tight, within about 0.01 of
dp_accounting's PLD) and RDP (looser by 8-17%, kept because some auditors only trust it).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

from confide.privacy.errors import AccountingError

AccountantName = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

History = list[tuple[float, float, int]]
"""Accountant history: `(noise_multiplier, sample_rate, steps)` per stretch of identical steps."""

# PRV returns an upper bound that is about `eps_error` above the estimate. 0.01 is tight for the
# epsilons institutions use (>= 1); below that a fixed 0.01 would be a large relative error, so
# small results are recomputed with an error proportional to them.
_PRV_EPS_ERROR = 0.01
_PRV_RELATIVE_ERROR = 0.01
_PRV_MIN_EPS_ERROR = 1e-4


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
        raise AccountingError(f"unknown accountant {name!r}", "use 'prv' (default) or 'rdp'")
    return name  # type: ignore[return-value]


def _checked(history: Iterable[tuple[float, float, int]]) -> History:
    """Validate every entry and merge entries with equal (sigma, q).

    Composition is commutative, so merging equal pairs anywhere in the history is exact; it keeps
    the PRV accountant's cost proportional to distinct pairs, not rounds.
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


def _prv_epsilon(history: History, delta: float) -> float:
    def upper_bound(eps_error: float) -> float:
        accountant = PRVAccountant()
        accountant.history = list(history)
        return float(accountant.get_epsilon(delta, eps_error=eps_error))

    eps = upper_bound(_PRV_EPS_ERROR)
    if eps < 1.0:
        eps = upper_bound(max(_PRV_MIN_EPS_ERROR, _PRV_RELATIVE_ERROR * eps))
    return eps


def _rdp_epsilon(history: History, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def epsilon(history: Iterable[tuple[float, float, int]], delta: float, accountant: str = "prv") -> float:
    """Epsilon (at `delta`) of composing every step in `history`.

    Returns 0.0 for an empty history and infinity if any step has zero noise. The PRV value is the
    accountant's upper bound, so it never under-reports. Raises AccountingError for an unknown
    accountant, a delta outside (0, 1) or malformed history entries.
    """
    name = check_accountant(accountant)
    if not (0.0 < delta < 1.0):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")
    merged = _checked(history)
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    return _composed_epsilon(tuple(sorted(merged)), float(delta), name)


@functools.lru_cache(maxsize=256)
def _composed_epsilon(merged: tuple[tuple[float, float, int], ...], delta: float, name: str) -> float:
    # Pure in its arguments, and an agent asks for the same history repeatedly (epsilon after
    # round r is epsilon before round r + 1), so results are memoised. The key is sorted: the
    # same multiset of steps always gives the very same number.
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # RDP (also used inside PRV to size its domain) warns "optimal order is the largest alpha"
        # for large noise: the bound is still valid, only not the tightest. A sample rate of 1 (an
        # expected batch as large as the dataset) makes PRV take log(1 - q) = -inf, which its
        # formulas then compare and exponentiate correctly; numpy's warning about it is noise.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return _prv_epsilon(list(merged), delta) if name == "prv" else _rdp_epsilon(list(merged), delta)


def round_epsilon(spend: RoundSpend, delta: float, accountant: str = "prv") -> float:
    """Epsilon of one round on its own (what per-round caps limit)."""
    return epsilon([spend.as_tuple()], delta, accountant)


def history_with(history: Iterable[tuple[float, float, int]], *spends: RoundSpend) -> History:
    """A new history: `history` followed by `spends`. The input is not modified."""
    return [tuple(h) for h in history] + [s.as_tuple() for s in spends]  # type: ignore[misc]
